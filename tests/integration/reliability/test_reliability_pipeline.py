"""Pipelined answers (a server's answer confirms read while it handles the next request).

A request is acked only once its answer is confirmed: a publishing
connection cut before that must neither lose a call's answer nor leave a
request un-acked after a graceful stop.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, List

import pytest

from soak.proxy import TcpProxy
from soak.scenarios import CLIENT, Names, cleanup, open_transport
from soak.secrets import SERVICE, Secretive
from tavrida import client, server
from tavrida.config import ConnectionConfig
from tavrida.observability.hooks import MessageRecord, ServerHook


class Finished(ServerHook):
    """Counts the outcomes of the messages its server finished."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.outcomes: Dict[str, int] = {}

    def message_finished(self, server: Any, record: MessageRecord) -> None:
        with self.lock:
            self.outcomes[str(record.outcome)] = self.outcomes.get(str(record.outcome), 0) + 1


def _serve(url: str, names: Names, hooks: "tuple[ServerHook, ...]" = (),
           ) -> "tuple[server.Server, threading.Thread]":
    srv = server.Server(ConnectionConfig.from_url(url, retry_delay=0.1), names.queue,
                        names.exchange, [Secretive], hooks=hooks)
    srv.start()
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    return srv, thread


@pytest.mark.parametrize("hooked", [False, True], ids=["bare", "with-a-hook"])
def test_calls_are_answered_and_requests_acked_across_cuts(amqp_url, unique, hooked) -> None:
    # A hook (metrics, traces) observes the same pipelined path: same guarantees.
    names = Names(prefix=unique.prefix, service=SERVICE)
    disc = names.discovery()
    Secretive.set_discovery(disc)
    proxy = TcpProxy.for_url(amqp_url).start()
    finished = Finished()
    srv, thread = _serve(proxy.url(amqp_url), names, (finished,) if hooked else ())
    cli = client.RPCClient(amqp_url, disc, source=CLIENT)
    answers: Dict[int, Any] = {}
    errors: List[BaseException] = []
    started = threading.Barrier(9)
    cut_now = threading.Event()

    def calls(first: int) -> None:
        started.wait(30)
        for value in range(first, first + 40):
            try:
                answers[value] = cli.secretive.echo(value=value).call(timeout=30)
                if len(answers) % 80 == 0:
                    cut_now.set()
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    threads = [threading.Thread(target=calls, args=(n * 1000,)) for n in range(8)]
    try:
        for worker in threads:
            worker.start()
        started.wait(30)
        cuts = 0
        for _ in range(3):
            # Cut while answers are out unconfirmed: their requests come again.
            if cut_now.wait(60):
                cut_now.clear()
                cuts += proxy.cut() > 0
        for worker in threads:
            worker.join(120)
        assert errors == []
        assert answers == {value: {"value": value} for value in answers}
        assert len(answers) == 40 * len(threads)
        assert cuts >= 1
    finally:
        srv.stop()
        thread.join(30)
        cli.close()
        proxy.close()
    assert not thread.is_alive()
    transport = open_transport(amqp_url)
    try:
        assert transport.queue_size(names.queue) == 0  # every request acked, none given back
        if hooked:  # each message finished once: answered, or given back and taken again
            assert finished.outcomes.get("ok", 0) >= 40 * 8
            assert set(finished.outcomes) <= {"ok", "requeued"}
    finally:
        transport.close()
        cleanup(amqp_url, names)
