"""Messages: headers, ids, answers to requests, error payloads."""

from __future__ import annotations

import re

import pytest

from tavrida import entry_point, exceptions, messages

HEX32 = re.compile(r"^[0-9a-f]{32}$")
UUID36 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class CodedFailure(Exception):
    code = 7


class BadCode(Exception):
    code = "not-an-int"


class BoolCode(Exception):
    code = True


def incoming_call(**extra):
    headers = {"correlation_id": "corr-1", "request_id": "r" * 32, "message_id": "m" * 32,
               "message_type": "request", "reply_to": "caller", "source": "caller.do",
               "destination": "svc.method"}
    headers.update(extra)
    return messages.IncomingMessageFactory().create(headers, {"ctx": 1}, {"param": 2})


def test_new_ids_look_like_1_0():
    assert HEX32.match(messages.new_id())
    assert messages.new_id() != messages.new_id()
    assert UUID36.match(messages.new_correlation_id())


def test_message_fills_missing_ids():
    message = messages.Request({"source": "a.b", "destination": "c.d"}, None, {"x": 1})
    assert HEX32.match(message.message_id)
    assert HEX32.match(message.request_id)
    assert UUID36.match(message.correlation_id)
    assert message.message_type == message.type == "request"
    assert message.reply_to == ""
    assert not message.reply_to
    assert message.context == {}
    assert message.payload == {"x": 1}


def test_properties_are_entry_points_and_read_only():
    message = incoming_call()
    assert isinstance(message.source, entry_point.Source)
    assert isinstance(message.destination, entry_point.Destination)
    assert isinstance(message.reply_to, entry_point.ServiceEntryPoint)
    assert message.source == "caller.do"
    assert message.destination == "svc.method"
    with pytest.raises(AttributeError):
        message.correlation_id = "other"
    # headers are a mutable copy, not kept in sync with the properties (as in 1.0)
    message.headers["correlation_id"] = "changed"
    assert message.correlation_id == "corr-1"


def test_factory_picks_call_or_cast_by_reply_to():
    factory = messages.IncomingMessageFactory()
    assert factory.get_class("request", "svc") is messages.IncomingRequestCall
    assert factory.get_class("request", "") is messages.IncomingRequestCast
    assert factory.get_class("request", None) is messages.IncomingRequestCast
    assert factory.get_class("response", "") is messages.IncomingResponse
    assert factory.get_class("error", "") is messages.IncomingError
    assert factory.get_class("notification", "") is messages.IncomingNotification
    assert isinstance(incoming_call(), messages.IncomingRequestCall)
    assert isinstance(incoming_call(reply_to=""), messages.IncomingRequestCast)


def test_factory_refuses_unknown_type():
    with pytest.raises(exceptions.UnsuitableFieldValue) as info:
        messages.IncomingMessageFactory().get_class("bogus", "")
    assert "'bogus'" in str(info.value)


def test_response_answers_its_request():
    request = incoming_call(custom="kept")
    response = request.make_response(answer=42)
    assert isinstance(response, messages.Response)
    assert response.message_type == "response"
    assert response.request_id == request.request_id
    assert response.correlation_id == request.correlation_id
    assert response.message_id != request.message_id
    assert HEX32.match(response.message_id)
    assert response.source == "svc.method"
    assert response.destination.to_routing_key() == "caller"
    assert response.reply_to.to_routing_key() == ""
    assert response.payload == {"answer": 42}
    assert response.context == {"ctx": 1}
    assert response.headers["custom"] == "kept"


def test_answer_goes_to_source_when_reply_to_is_empty():
    request = incoming_call(reply_to="")
    response = messages.Response.create_by_request(request, {})
    assert response.destination == "caller.do"


def test_error_payload_has_class_name_message_code():
    error = incoming_call().make_error(CodedFailure("it broke"))
    assert isinstance(error, messages.Error)
    assert error.message_type == "error"
    assert error.payload == {"class": f"{__name__}.CodedFailure", "name": "CodedFailure",
                             "message": "it broke", "code": 7}


@pytest.mark.parametrize("exc, code", [
    (ValueError("x"), 1000),
    (BadCode("x"), 1000),
    (BoolCode("x"), 1000),
    (exceptions.UnableToDiscover(service="s"), exceptions.TavridaError.code),
])
def test_error_code_default(exc, code):
    assert messages.error_payload(exc)["code"] == code


def test_error_accepts_a_payload_dict_but_nothing_else():
    request = incoming_call()
    error = messages.Error.create_by_request(request, {"class": "x.Y", "message": "m"})
    assert error.payload == {"class": "x.Y", "message": "m"}
    with pytest.raises(exceptions.IncorrectOutgoingMessage):
        messages.Error.create_by_request(request, "just a string")


def test_wire_headers_are_the_seven_strings_plus_user_headers():
    request = messages.Request({"source": "a.b", "destination": "c.d", "reply_to": "a",
                                "x-user": "u", "x-num": 3}, {}, {})
    headers = request.wire_headers()
    assert set(headers) == set(messages.TAVRIDA_HEADERS) | {"x-user", "x-num"}
    assert all(isinstance(headers[name], str) for name in messages.TAVRIDA_HEADERS)
    assert headers["reply_to"] == "a"
    assert headers["x-num"] == 3
    assert messages.user_headers(headers) == {"x-user": "u", "x-num": 3}


def test_body_and_update_context():
    message = messages.Notification({"source": "a.b"}, {"c": 1}, {"p": "é"})
    message.update_context({"d": 2})
    assert message.body == {"context": {"c": 1, "d": 2}, "payload": {"p": "é"}}
    assert message.body_serialize() == '{"context":{"c":1,"d":2},"payload":{"p":"é"}}'


def test_get_fqcn_and_repr():
    assert messages.get_fqcn(CodedFailure) == f"{__name__}.CodedFailure"
    assert messages.get_fqcn(CodedFailure()) == f"{__name__}.CodedFailure"
    text = repr(incoming_call())
    assert "IncomingRequestCall" in text and "caller.do->svc.method" in text


def test_generated_correlation_ids_are_uuid4_strings():
    import uuid

    for _ in range(200):
        value = messages.new_correlation_id()
        parsed = uuid.UUID(value)
        assert str(parsed) == value
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


_SEEDED_IDS = r"""
import json, random
random.seed(1)
from tavrida import messages, proxies

class Keep:
    def __init__(self):
        self.sent = []
    def send(self, message):
        self.sent.append(message)

random.seed(1)  # user code seeds after its imports, too
keep = Keep()
proxy = proxies.RPCProxy(keep, "client")
for _ in range(20):
    proxy.svc.do().cast()
    proxy.svc.do().call()
    messages.Request({"source": "client", "destination": "svc.do"}, {}, {})
ids = [messages.new_id() for _ in range(20)] + [messages.new_correlation_id() for _ in range(20)]
for message in keep.sent:
    ids += [message.message_id, message.request_id, message.correlation_id]
print(json.dumps(ids))
"""


def test_ids_do_not_repeat_across_processes_that_seed_random_alike():
    """Ids came from the global ``random``: two processes calling random.seed(1) sent the
    same message, request and correlation ids (answers went to the wrong caller)."""
    import json
    import subprocess
    import sys

    runs = [json.loads(subprocess.run([sys.executable, "-c", _SEEDED_IDS], check=True,
                                      capture_output=True, text=True, timeout=60).stdout)
            for _ in range(2)]
    first, second = (set(ids) for ids in runs)
    assert len(first) == len(runs[0]) == 160  # none repeats within a process either
    assert first.isdisjoint(second)
    assert all(UUID36.match(value) for value in runs[0][20:40])


def test_a_forked_child_does_not_repeat_the_ids_its_parent_read_ahead():
    """Ids are read from the OS 64 at a time; a child of fork must not reuse the parent's."""
    import os

    messages.new_id()  # the parent now holds ids read ahead
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send its next id and leave at once
        os.close(read)
        os.write(write, messages.new_id().encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_id = pipe.read()
    os.waitpid(pid, 0)
    assert HEX32.match(child_id)
    assert child_id != messages.new_id()
