"""A server's graceful stop, on the in-memory transport (issue 19).

``stop()`` takes no new message and lets the handlers in hand finish, answer
and ack; what is still in hand after ``stop_timeout`` -- or at a second
``stop()`` -- goes back to the queue unacked, and the log names it. Handlers
block on events the tests release: no timing is asserted.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Dict, Iterator, List

import pytest

from tavrida import client, config_file, discovery, dispatcher, exceptions, server, service
from tavrida.testing import MemoryCluster

RELEASE = threading.Event()
STARTED: List[int] = []
STARTED_ONE = threading.Event()


@dispatcher.rpc_service("slow")
class Slow(service.ServiceController):
    """Each handler waits for the test to release it."""

    @dispatcher.rpc_method(service="slow", method="job")
    def job(self, request: Any, proxy: Any, n: int) -> Dict[str, int]:
        STARTED.append(n)
        STARTED_ONE.set()
        RELEASE.wait(30)
        return {"n": n}


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    RELEASE.clear()
    STARTED.clear()
    STARTED_ONE.clear()
    yield
    RELEASE.set()  # never leave a worker blocked


def _running(cluster: MemoryCluster, workers: int, **kwargs: Any) -> Any:
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("client", "client_exchange")
    Slow.set_discovery(disc)
    srv = server.Server(cluster.config, "slow_queue", "slow_exchange", [Slow],
                        workers=workers, **kwargs)
    srv.start()
    runner = threading.Thread(target=srv.run, daemon=True)
    runner.start()
    return srv, runner


def _cast(cluster: MemoryCluster, count: int) -> None:
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("slow", "slow_exchange")
    cli = cluster.client(disc, source="client")
    for n in range(count):
        cli.slow.job(n=n).cast(correlation_id=f"corr-{n}")


@pytest.mark.parametrize("workers", [0, 2])
def test_stop_lets_the_handler_in_hand_finish_answer_and_ack(cluster: MemoryCluster,
                                                             workers: int) -> None:
    srv, runner = _running(cluster, workers)
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("slow", "slow_exchange")
    disc.register_remote_service("client", "client_exchange")  # as the service knows it
    outcome: Dict[str, Any] = {}

    def call() -> None:
        with client.RPCClient(cluster.config, disc, source="client") as cli:
            try:
                outcome["answer"] = cli.slow.job(n=7).call(timeout=30)
            except Exception as exc:  # noqa: BLE001 - judged below
                outcome["error"] = exc

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    assert STARTED_ONE.wait(10)
    srv.stop()
    assert runner.is_alive()  # waits for the handler, whatever the time it takes
    RELEASE.set()
    runner.join(10)
    caller.join(10)
    assert not runner.is_alive()
    assert outcome == {"answer": {"n": 7}}
    assert STARTED == [7]
    assert cluster.broker.messages("slow_queue") == []


@pytest.mark.parametrize("workers", [0, 2])
def test_what_is_in_hand_after_stop_timeout_goes_back_and_is_named(
        cluster: MemoryCluster, workers: int, caplog: pytest.LogCaptureFixture) -> None:
    srv, runner = _running(cluster, workers, stop_timeout=0.2)
    _cast(cluster, 3)
    assert STARTED_ONE.wait(10)
    with caplog.at_level(logging.WARNING, logger="tavrida.server"):
        srv.stop()
        if workers:
            runner.join(10)
            assert not runner.is_alive()  # the workers' handlers are not waited for
        else:
            RELEASE.set()  # off the main thread a handler cannot be interrupted
            runner.join(10)
    named = [r.getMessage() for r in caplog.records if "stop_timeout" in r.getMessage()]
    assert any("corr-0" in line and "still being handled" in line and "to slow.job" in line
               for line in named) == bool(workers), named
    if workers:
        assert sum("still being handled" in line for line in named) == 2
        assert sum("waiting for a worker" in line and "corr-2" in line for line in named) == 1
        assert len(cluster.broker.messages("slow_queue")) == 3  # all given back
    RELEASE.set()


def test_a_second_stop_gives_back_at_once(cluster: MemoryCluster,
                                          caplog: pytest.LogCaptureFixture) -> None:
    srv, runner = _running(cluster, 1, stop_timeout=600)
    _cast(cluster, 2)
    assert STARTED_ONE.wait(10)
    with caplog.at_level(logging.WARNING, logger="tavrida.server"):
        srv.stop()
        assert runner.is_alive()
        srv.stop()
        runner.join(10)
    assert not runner.is_alive()
    text = caplog.text
    assert "stopped at once" in text and "corr-0" in text and "corr-1" in text
    assert len(cluster.broker.messages("slow_queue")) == 2
    assert STARTED == [0]


def test_stop_timeout_from_a_config_file(tmp_path: Any) -> None:
    path = tmp_path / "svc.ini"
    path.write_text("[connection]\nurl = memory://\n[server]\nqueue = q\nexchange = e\n"
                    f"services = {__name__}:Slow\nstop_timeout = 2.5\n")
    assert server.Server.from_config(str(path)).stop_timeout == 2.5
    path.write_text(path.read_text().replace("2.5", "-1"))
    with pytest.raises(config_file.ConfigError, match="stop_timeout"):
        server.Server.from_config(str(path))
    with pytest.raises(exceptions.IncorrectAMQPConfig, match="stop_timeout"):
        server.Server("memory://", "q", "e", [Slow], stop_timeout=-1)
