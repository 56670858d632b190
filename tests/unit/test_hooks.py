"""The server hooks' one path: a message is finished when it is settled; failures are told."""

from __future__ import annotations

from typing import Any, List, Optional

from tavrida import discovery, dispatcher, exceptions, messages, service
from tavrida.observability.hooks import HookList, MessageRecord, ServerHook
from tavrida.transports.base import Delivery


class Held(Delivery):
    """A delivery whose settling is only recorded (what a transport would do with it)."""

    def __init__(self) -> None:
        self.body = b"{}"
        self.headers = {"message_type": "request", "destination": "svc.m"}
        self.properties = {}
        self.exchange = "ex"
        self.routing_key = "svc.m"
        self.queue = "q"
        self.redelivered = False
        self.settled: List[str] = []

    def ack(self) -> None:
        self.settled.append("ack")

    def reject(self, requeue: bool) -> None:
        self.settled.append(f"reject {requeue}")


class Seen(ServerHook):
    def __init__(self) -> None:
        self.events: List[Any] = []

    def message_finished(self, server: Any, record: MessageRecord) -> None:
        self.events.append(("finished", record.outcome))

    def message_failed(self, server: Any, message: Optional[messages.Message],
                       exc: BaseException, by_handler: bool) -> None:
        self.events.append(("failed", type(exc).__name__, by_handler))


def test_a_message_acked_after_handle_returned_is_finished_at_its_ack():
    seen = Seen()
    hooks = HookList([seen])
    kept: List[Delivery] = []
    hooks.observe(None, Held(), kept.append)  # type: ignore[arg-type]
    assert seen.events == []  # handed on unsettled (an answer awaiting its confirm)
    kept[0].ack()
    kept[0].ack()
    assert seen.events == [("finished", "ok")]  # once


def test_a_message_given_back_unsettled_is_finished_as_requeued():
    seen = Seen()
    hooks = HookList([seen])
    kept: List[Delivery] = []
    hooks.observe(None, Held(), kept.append)  # type: ignore[arg-type]
    hooks.given_back(kept[0])
    assert seen.events == [("finished", "requeued")]


def test_outcomes_told_while_recording_land_on_that_messages_record():
    seen = Seen()
    hooks = HookList([seen])
    kept: List[Delivery] = []
    hooks.observe(None, Held(), kept.append)  # type: ignore[arg-type]
    with hooks.recording(kept[0]):
        hooks.dead_lettered("answer not sent")
        kept[0].ack()
    assert seen.events == [("finished", "dead-lettered")]


def test_without_hooks_the_delivery_is_handled_as_it_is():
    delivery = Held()
    handled: List[Delivery] = []
    HookList().observe(None, delivery, handled.append)  # type: ignore[arg-type]
    assert handled == [delivery]


@dispatcher.rpc_service("hooked")
class Hooked(service.ServiceController):
    @dispatcher.rpc_method(service="hooked", method="boom")
    def boom(self, request: Any, proxy: Any) -> None:
        raise ValueError("no")


def test_a_handler_failure_is_told_to_every_hook(cluster):
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("hooked", "hooked_exchange")
    Hooked.set_discovery(disc)
    seen = Seen()
    cluster.add_server([Hooked], exchange_name="hooked_exchange", hooks=[seen])
    cluster.client(disc).hooked.boom().cast()
    cluster.deliver(expect_errors=ValueError)
    assert seen.events == [("failed", "ValueError", True), ("finished", "dead-lettered")]
    assert isinstance(cluster.failures[0].exception, ValueError)  # the helpers' hook too
    assert not isinstance(cluster.failures[0].exception, exceptions.TavridaError)
