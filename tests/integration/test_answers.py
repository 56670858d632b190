"""Answers the broker will not take reach their caller as an Error, on RabbitMQ.

Only RabbitMQ refuses a message for its size (``max_message_size``: 128 MiB
by default on 3.x, 16 MiB on 4.x) or for headers larger than a frame; the
in-memory transports and Redis take both. A caller of such an answer gets
:class:`~tavrida.exceptions.UnsendableAnswer` at once, not ``CallTimeout``,
and the request is acked (no dead letter).
"""

from __future__ import annotations

import threading
from typing import Iterator, Tuple

import pytest

from tavrida import client, discovery, dispatcher, exceptions, messages, middleware, server, service

#: A body over RabbitMQ's default max_message_size (3.x and 4.x).
TOO_LARGE = 128 * 1024 * 1024 + 1


class HugeHeader(middleware.Middleware):
    """Adds a header no AMQP frame holds to every Response."""

    def process(self, message):
        if isinstance(message, messages.Response):
            message.headers["x-huge"] = "h" * 200_000
        return message


@dispatcher.rpc_service("refused")
class Refused(service.ServiceController):
    def __init__(self, postprocessor):
        super().__init__(postprocessor)
        self.add_outgoing_middleware(HugeHeader())

    @dispatcher.rpc_method(service="refused", method="big")
    def big(self, request, proxy):
        return messages.Error.create_by_request(request, {"blob": "x" * TOO_LARGE})

    @dispatcher.rpc_method(service="refused", method="headers")
    def headers(self, request, proxy):
        return {"fine": True}  # its Response gets the huge header


@pytest.fixture
def running(amqp_url, unique) -> Iterator[Tuple[client.RPCClient, server.Server, str]]:
    exchange, queue = unique("refused-ex"), unique("refused-q")
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("refused", exchange)
    Refused.set_discovery(disc)
    srv = server.Server(amqp_url, queue, exchange, [Refused])
    srv.start()
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    cli = client.RPCClient(amqp_url, disc, source=unique("caller").replace(".", "-"))
    try:
        yield cli, srv, queue
    finally:
        cli.close()
        srv.stop()
        thread.join(15)
    assert not thread.is_alive()


def test_an_answer_over_the_brokers_size_limit_is_an_error_to_its_caller(running) -> None:
    cli, srv, queue = running
    with pytest.raises(exceptions.RemoteError) as info:
        cli.refused.big().call(timeout=60)
    assert info.value.remote_name == "UnsendableAnswer"
    assert "PRECONDITION_FAILED - message size" in info.value.remote_message
    assert "is larger than" in info.value.remote_message
    assert srv.transport is not None and srv.transport.queue_size(queue + ".dead") == 0


def test_an_answer_whose_headers_fit_no_frame_is_an_error_to_its_caller(running) -> None:
    cli, srv, queue = running
    with pytest.raises(exceptions.RemoteError) as info:
        cli.refused.headers().call(timeout=30)
    assert info.value.remote_name == "UnsendableAnswer"
    assert "The answer of refused.headers could not be sent" in info.value.remote_message
    assert srv.transport is not None and srv.transport.queue_size(queue + ".dead") == 0
