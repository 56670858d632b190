"""Blocking calls (``call(timeout=...)``) on the in-memory transport."""

import threading
import uuid

import pytest

from tavrida import client, discovery, dispatcher, entry_point, exceptions, server, service
from tavrida.transports.base import OutgoingEnvelope
from tavrida.transports.memory import MemoryBroker


class Boom(Exception):
    code = 7


@dispatcher.rpc_service("calc")
class CalcController(service.ServiceController):

    @dispatcher.rpc_method(service="calc", method="add")
    def add(self, request, proxy, a, b):
        return {"sum": a + b, "by": threading.current_thread().name}

    @dispatcher.rpc_method(service="calc", method="fail")
    def fail(self, request, proxy):
        raise Boom("it broke")

    @dispatcher.rpc_method(service="calc", method="slow")
    def slow(self, request, proxy, gate):
        GATES[gate].wait(5)
        return {"late": True}


GATES = {}


@pytest.fixture
def running():
    """A calc server running in a thread on a private memory broker; yields (url, disc)."""
    url = f"memory://replies-{uuid.uuid4().hex}"
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("calc", "calc_exchange")
    disc.register_remote_service("caller", "caller_exchange")
    CalcController.set_discovery(disc)
    srv = server.Server(url, "calc_queue", "calc_exchange", [CalcController], workers=4)
    srv.start()
    thread = threading.Thread(target=srv.run)
    thread.start()
    yield url, disc
    srv.stop()
    thread.join(10)
    MemoryBroker.reset(url.split("://")[1])


def test_call_returns_the_response_payload(running):
    url, disc = running
    with client.RPCClient(url, disc, source="caller") as cli:
        assert cli.calc.add(a=2, b=3).call(timeout=5)["sum"] == 5


def test_service_form_blocking_call(running):
    url, disc = running
    with client.RPCClient(url, disc, source="caller", service="calc") as cli:
        assert cli.add(a=1, b=1).call(timeout=5)["sum"] == 2


def test_remote_error_carries_class_name_message_code(running):
    url, disc = running
    with client.RPCClient(url, disc, source="caller") as cli:
        with pytest.raises(exceptions.RemoteError) as info:
            cli.calc.fail().call(timeout=5)
    err = info.value
    assert err.remote_class == f"{__name__}.Boom"
    assert err.remote_name == "Boom"
    assert err.remote_message == "it broke"
    assert err.code == 7


def test_missing_parameter_is_a_remote_error_naming_it(running):
    url, disc = running
    with client.RPCClient(url, disc, source="caller") as cli:
        with pytest.raises(exceptions.RemoteError) as info:
            cli.calc.add(a=1).call(timeout=5)
    assert info.value.remote_name == "WrongHandlerParameters"
    assert "b" in info.value.remote_message


def test_timeout_names_destination_and_correlation_id(running):
    url, disc = running
    with client.RPCClient(url, disc, source="caller") as cli:
        gate = uuid.uuid4().hex
        GATES[gate] = threading.Event()
        with pytest.raises(exceptions.CallTimeout) as info:
            cli.calc.slow(gate=gate).call(correlation_id="corr-1", timeout=0.2)
        GATES[gate].set()
    assert "calc.slow" in str(info.value)
    assert "corr-1" in str(info.value)


def test_a_call_nobody_can_take_raises_unroutable_at_once(running):
    url, disc = running
    disc.register_remote_service("nobody", "calc_exchange")  # routed nowhere
    with client.RPCClient(url, disc, source="caller") as cli:
        with pytest.raises(exceptions.Unroutable) as info:
            cli.nobody.ping().call(timeout=30)
    assert info.value.exchange == "calc_exchange"
    assert info.value.routing_key == "nobody.ping"
    assert "calc_exchange" in str(info.value) and "nobody.ping" in str(info.value)


def test_late_answer_after_timeout_is_dropped_not_misdelivered(running, caplog):
    url, disc = running
    gate = uuid.uuid4().hex
    GATES[gate] = threading.Event()
    with client.RPCClient(url, disc, source="caller") as cli:
        with pytest.raises(exceptions.CallTimeout):
            cli.calc.slow(gate=gate).call(timeout=0.1)
        GATES[gate].set()
        # the next call gets its own answer, not the late one
        assert cli.calc.add(a=10, b=20).call(timeout=5)["sum"] == 30
        assert cli.calc.add(a=1, b=2).call(timeout=5)["sum"] == 3


def test_fifty_concurrent_calls_get_their_own_answers(running):
    url, disc = running
    results = {}
    with client.RPCClient(url, disc, source="caller") as cli:
        def worker(i):
            results[i] = cli.calc.add(a=i, b=1000).call(timeout=10)["sum"]

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
    assert results == {i: i + 1000 for i in range(50)}


def test_a_source_in_no_discovery_is_answered_on_the_default_reply_exchange(running):
    url, disc = running
    own = discovery.LocalDiscovery()
    own.register_remote_service("calc", "calc_exchange")  # "stranger" is nowhere
    with client.RPCClient(url, own, source="stranger") as cli:
        assert cli.sender.reply_exchange == "tavrida.replies"
        assert cli.calc.add(a=1, b=2).call(timeout=5)["sum"] == 3


def test_reply_queue_goes_away_with_the_client(running):
    url, disc = running
    broker = MemoryBroker.get(url.split("://")[1])
    cli = client.RPCClient(url, disc, source="caller")
    cli.calc.add(a=1, b=2).call(timeout=5)
    assert any(name.startswith("caller.replies.") for name in broker.queue_names())
    cli.close()
    assert not any(name.startswith("caller.replies.") for name in broker.queue_names())


def test_blocking_call_from_a_handler_proxy_is_refused():
    proxy_source = entry_point.parse("calc.add", source=True)

    from tavrida.proxies import RPCProxy
    from tavrida.testing import RecordingSender

    proxy = RPCProxy(RecordingSender(), proxy_source)  # a handler's: no blocking calls
    with pytest.raises(exceptions.TavridaError, match="RPCClient"):
        proxy.other.method(x=1).call(timeout=1)


@dispatcher.rpc_service("garble")
class Garbler(service.ServiceController):
    """Answers with a body the caller cannot read (as a peer with a bug would)."""

    @dispatcher.rpc_method(service="garble", method="it")
    def it(self, request, proxy):
        headers = {"correlation_id": request.correlation_id, "request_id": request.request_id,
                   "message_id": uuid.uuid4().hex, "message_type": "response", "reply_to": "",
                   "source": "garble.it", "destination": "caller"}
        self.postprocessor.transport.publish(OutgoingEnvelope(
            request.reply_exchange, "caller", b'{"payload": ["not", "an", "object"]}', headers))
        return None  # the server's own (readable) answer comes later: nobody waits for it


def test_an_answer_that_cannot_be_read_ends_the_call_at_once(running, caplog):
    url, disc = running
    disc.register_remote_service("garble", "garble_exchange")
    Garbler.set_discovery(disc)
    srv = server.Server(url, "garble_queue", "garble_exchange", [Garbler])
    srv.start()
    thread = threading.Thread(target=srv.run)
    thread.start()
    try:
        with client.RPCClient(url, disc, source="caller") as cli:
            with pytest.raises(exceptions.IncorrectMessage) as info:
                cli.garble.it().call(timeout=30)  # not CallTimeout after 30 s
    finally:
        srv.stop()
        thread.join(10)
    assert str(info.value) == ('Incorrect message: the answer of garble.it came but cannot be '
                               'read: body has no "payload" object')
    assert "dropping a bad message on reply queue" in caplog.text


def test_blocking_calls_come_from_the_object_a_proxy_is_given_not_from_its_sender(running):
    from tavrida.proxies import RPCProxy

    url, disc = running
    with client.RPCClient(url, disc, source="caller") as cli:
        # The client's own sender, without the client's blocking calls: refused.
        bare = RPCProxy(cli.sender, "caller")
        with pytest.raises(exceptions.TavridaError, match="RPCClient"):
            bare.calc.add(a=1, b=2).call(timeout=5)
        given = RPCProxy(cli.sender, "caller", calls=cli._replies)
        assert given.calc.add(a=1, b=2).call(timeout=5)["sum"] == 3
        assert given.service("calc", "add")(a=2, b=2).call(timeout=5)["sum"] == 4
