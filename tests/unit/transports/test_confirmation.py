"""The confirmation handle a publish returns: settled once, from any thread, Future-shaped."""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import CancelledError

import pytest

from tavrida import exceptions
from tavrida.transports.base import OutgoingEnvelope
from tavrida.transports.confirmation import Confirmation, confirm_all


def envelope(routing_key: str = "svc.method") -> OutgoingEnvelope:
    return OutgoingEnvelope("ex", routing_key, b"{}", {})


def unroutable(key: str = "svc.method") -> exceptions.Unroutable:
    return exceptions.Unroutable(exchange="ex", routing_key=key, reason="no queue")


def refused(key: str = "svc.method") -> exceptions.PublishFailed:
    return exceptions.PublishFailed(exchange="ex", routing_key=key, reason="nacked")


def test_a_confirmed_handle_is_done_and_waits_for_nothing() -> None:
    confirmation = Confirmation(envelope())
    assert not confirmation.done()

    assert confirmation.set_confirmed() is True

    assert confirmation.done() and not confirmation.cancelled()
    assert confirmation.wait(0) is None
    assert confirmation.exception(0) is None


def test_a_failed_handle_raises_its_own_error() -> None:
    error = unroutable()
    confirmation = Confirmation(envelope())
    confirmation.set_failed(error)

    with pytest.raises(exceptions.Unroutable) as raised:
        confirmation.wait()
    assert raised.value is error
    assert confirmation.exception() is error


def test_a_handle_settles_once_whatever_comes_later() -> None:
    confirmation = Confirmation(envelope())
    calls = []
    confirmation.add_done_callback(calls.append)

    assert confirmation.set_failed(refused()) is True
    assert confirmation.set_confirmed() is False
    assert confirmation.set_failed(unroutable()) is False
    assert confirmation.cancel() is False

    assert calls == [confirmation]
    assert type(confirmation.exception()) is exceptions.PublishFailed


def test_racing_threads_settle_it_exactly_once() -> None:
    confirmation = Confirmation(envelope())
    calls = []
    confirmation.add_done_callback(calls.append)
    start = threading.Barrier(8)
    won = []

    def settle(index: int) -> None:
        start.wait()
        settled = confirmation.set_confirmed() if index % 2 else confirmation.set_failed(refused())
        if settled:
            won.append(index)

    threads = [threading.Thread(target=settle, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert len(won) == 1
    assert calls == [confirmation]


def test_waiters_in_many_threads_all_see_the_verdict() -> None:
    confirmation = Confirmation(envelope())
    error = refused()
    seen: list[BaseException | None] = []
    lock = threading.Lock()

    def waiter() -> None:
        try:
            confirmation.wait(30)
            outcome = None
        except exceptions.PublishFailed as exc:
            outcome = exc
        with lock:
            seen.append(outcome)

    threads = [threading.Thread(target=waiter) for _ in range(6)]
    for thread in threads:
        thread.start()
    confirmation.set_failed(error)
    for thread in threads:
        thread.join(30)

    assert seen == [error] * 6


def test_a_pending_callback_runs_in_the_settling_thread() -> None:
    confirmation = Confirmation(envelope())
    ran_in = []
    confirmation.add_done_callback(lambda c: ran_in.append(threading.get_ident()))
    assert ran_in == []

    settler = threading.Thread(target=confirmation.set_confirmed)
    settler.start()
    settler.join(10)

    assert ran_in == [settler.ident]


def test_a_callback_added_after_settling_runs_at_once_in_this_thread() -> None:
    confirmation = Confirmation(envelope())
    confirmation.set_confirmed()
    ran_in = []

    confirmation.add_done_callback(lambda c: ran_in.append((c, threading.get_ident())))

    assert ran_in == [(confirmation, threading.get_ident())]


def test_a_failing_callback_is_logged_and_the_others_still_run(
        caplog: pytest.LogCaptureFixture) -> None:
    confirmation = Confirmation(envelope())
    calls = []

    def broken(c: Confirmation) -> None:
        raise ValueError("callback bug")

    confirmation.add_done_callback(broken)
    confirmation.add_done_callback(calls.append)
    with caplog.at_level(logging.ERROR, logger="tavrida.transports.confirmation"):
        assert confirmation.set_confirmed() is True  # the settling thread is not hit

    assert calls == [confirmation]
    assert any("callback bug" in (record.exc_text or "") for record in caplog.records)


def test_a_pending_handle_times_out_and_stays_pending() -> None:
    confirmation = Confirmation(envelope())

    with pytest.raises(TimeoutError):
        confirmation.wait(0.01)
    with pytest.raises(TimeoutError):
        confirmation.exception(0)

    assert not confirmation.done()
    confirmation.set_confirmed()
    confirmation.wait(0)


def test_a_cancelled_handle_is_done_and_ignores_a_late_verdict() -> None:
    confirmation = Confirmation(envelope())
    calls = []
    confirmation.add_done_callback(calls.append)

    assert confirmation.cancel() is True
    assert confirmation.cancel() is True  # as Future.cancel: still cancelled

    assert confirmation.done() and confirmation.cancelled()
    assert calls == [confirmation]
    assert confirmation.set_confirmed() is False
    with pytest.raises(CancelledError):
        confirmation.wait(0)


def test_a_settled_handle_cannot_be_cancelled() -> None:
    confirmation = Confirmation.confirmed(envelope())
    assert confirmation.cancel() is False
    assert not confirmation.cancelled()


def test_an_asyncio_future_can_wrap_a_handle_settled_in_another_thread() -> None:
    confirmation = Confirmation(envelope())
    error = unroutable()

    async def main() -> BaseException | None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def copy_verdict(c: Confirmation) -> None:
            failure = c.exception(0)
            if failure is None:
                future.set_result(None)
            else:
                future.set_exception(failure)

        confirmation.add_done_callback(
            lambda c: loop.call_soon_threadsafe(copy_verdict, c))
        threading.Thread(target=confirmation.set_failed, args=(error,)).start()
        try:
            await asyncio.wait_for(future, 30)
        except exceptions.PublishFailed as exc:
            return exc
        return None

    assert asyncio.run(main()) is error


def test_a_transport_handle_can_read_its_verdict_in_the_waiting_thread() -> None:
    """A transport whose waiter reads the confirm itself overrides _await."""

    class ReadingConfirmation(Confirmation):
        __slots__ = ("reads",)

        def __init__(self, sent: OutgoingEnvelope) -> None:
            super().__init__(sent)
            self.reads: list[int] = []

        def _await(self, timeout: float | None) -> bool:
            self.reads.append(threading.get_ident())
            self.set_confirmed()  # the confirm this thread just read
            return self.done()

    confirmation = ReadingConfirmation(envelope())
    callbacks = []
    confirmation.add_done_callback(lambda c: callbacks.append(threading.get_ident()))

    confirmation.wait(1)

    assert confirmation.reads == callbacks == [threading.get_ident()]


def test_confirm_all_names_every_failed_index() -> None:
    handles = [Confirmation.confirmed(envelope("a")),
               Confirmation.failed(envelope("b"), unroutable("b")),
               Confirmation.confirmed(envelope("c")),
               Confirmation.failed(envelope("d"), refused("d"))]

    with pytest.raises(exceptions.PublishFailed) as raised:
        confirm_all(handles)

    error = raised.value
    assert type(error) is exceptions.PublishFailed  # not only unroutable ones
    assert sorted(error.kwargs["failed"]) == [1, 3]
    assert error.kwargs["unroutable"] == [1]
    assert [e.routing_key for e in error.kwargs["envelopes"]] == ["b", "d"]


def test_confirm_all_raises_unroutable_when_only_unroutable_ones_failed() -> None:
    handles = [Confirmation.failed(envelope("a"), unroutable("a")),
               Confirmation.confirmed(envelope("b"))]

    with pytest.raises(exceptions.Unroutable) as raised:
        confirm_all(handles)
    assert raised.value.kwargs["failed"] == {0: "no queue"}


def test_confirm_all_waits_for_pending_ones_and_skips_cancelled_ones() -> None:
    pending = Confirmation(envelope("a"))
    cancelled = Confirmation(envelope("b"))
    cancelled.cancel()
    threading.Thread(target=pending.set_confirmed).start()

    confirm_all([pending, cancelled], timeout=30)

    assert pending.done()


def test_confirm_all_gives_up_at_its_timeout() -> None:
    with pytest.raises(TimeoutError):
        confirm_all([Confirmation.confirmed(envelope()), Confirmation(envelope())], timeout=0.01)
