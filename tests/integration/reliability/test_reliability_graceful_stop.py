"""A stop finishes the message in hand (issue 19), on RabbitMQ and on Redis.

SIGTERM to a service process while its handler runs, during a blocking call:
the handler runs to its end, its answer reaches the caller, the request is
acked (the queue is empty) and it ran exactly once. Before, the stop aborted
the answer's publish as if the broker were gone (``PublishConnectionFailed
... stopped while the broker was unreachable``), the request went back to the
queue and the caller got ``CallTimeout``. A handler longer than
``stop_timeout`` has its message given back to the queue (delivered again to
the next instance), and the log names it. A second signal stops at once.
With ``workers=0`` (the handler runs on the serving thread) and ``workers=2``.
"""

from __future__ import annotations

import signal
import tempfile
import threading
from typing import Any, Dict, Iterator, List

import pytest

from soak import scenarios
from soak.scenarios import Names, ServiceProcess
from soak.service import CLIENT, SERVICE
from tavrida import client

pytestmark = pytest.mark.slow

HANDLER_S = 5.0


@pytest.fixture(params=["amqp", "redis"])
def url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def names(url: str) -> Iterator[Names]:
    made = Names()
    yield made
    scenarios.cleanup(url, made)


@pytest.fixture
def workdir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="tavrida-stop-") as folder:
        yield folder


def _call_in_thread(url: str, names: Names, outcome: Dict[str, Any]) -> threading.Thread:
    def call() -> None:
        with client.RPCClient(url, names.discovery(), source=CLIENT) as cli:
            try:
                outcome["answer"] = getattr(cli, SERVICE).ask(seq=0).call(timeout=60)
            except Exception as exc:  # noqa: BLE001 - judged by the test
                outcome["error"] = exc

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("workers", [0, 2])
def test_sigterm_during_a_call_answers_it_once_and_acks_it(url: str, names: Names,
                                                           workdir: str, workers: int) -> None:
    with ServiceProcess(url, names, workdir, calls=1, sleep=HANDLER_S, workers=workers,
                        log_level="INFO") as svc:
        svc.start()
        outcome: Dict[str, Any] = {}
        caller = _call_in_thread(url, names, outcome)
        svc.wait(lambda s: s["call_invocations"] >= 1, 30, "the handler to start")
        final = svc.terminate(60)
        caller.join(60)
        log = svc.log_text()
    print(f"\n{url.split(':')[0]} workers={workers}: {outcome}, exit {final['exit_code']}, "
          f"{final['call_invocations']} run(s), queue {scenarios.queue_sizes(url, names)}")
    assert outcome.get("answer") == {"seq": 0}, (outcome, log[-3000:])
    assert final["exit_code"] == 0 and final["state"] == "stopped"
    assert final["call_invocations"] == 1
    assert scenarios.queue_sizes(url, names) == {"queue": 0, "dead": 0}
    assert "stopped while the broker was unreachable" not in log


@pytest.mark.parametrize("workers", [0, 2])
def test_a_handler_longer_than_stop_timeout_is_requeued_and_named(url: str, names: Names,
                                                                  workdir: str,
                                                                  workers: int) -> None:
    with ServiceProcess(url, names, workdir, casts=1, sleep=30, workers=workers,
                        stop_timeout=1, log_level="INFO") as svc:
        svc.start()
        with client.RPCClient(url, names.discovery(), source=CLIENT) as cli:
            getattr(cli, SERVICE).work(seq=0).cast(correlation_id="stop-named-1")
        svc.wait(lambda s: s["cast_invocations"] >= 1, 30, "the handler to start")
        final = svc.terminate(20)  # 1 s of grace, then a bounded close
        log = svc.log_text()
    named = [line for line in log.splitlines() if "stop-named-1" in line]
    print(f"\n{url.split(':')[0]} workers={workers}: exit {final['exit_code']}; " + " | ".join(
        named))
    assert final["exit_code"] == 0
    assert any("still being handled" in line and f"to {SERVICE}.work" in line
               for line in named), log[-3000:]
    assert scenarios.queue_sizes(url, names)["queue"] == 1  # given back, not lost


def test_a_second_signal_stops_at_once_and_requeues(amqp_url: str, workdir: str) -> None:
    names = Names()
    try:
        with ServiceProcess(amqp_url, names, workdir, casts=3, sleep=30, workers=2,
                            stop_timeout=600, log_level="INFO") as svc:
            svc.start()
            with client.RPCClient(amqp_url, names.discovery(), source=CLIENT) as cli:
                for seq in range(3):
                    getattr(cli, SERVICE).work(seq=seq).cast(correlation_id=f"twice-{seq}")
            svc.wait(lambda s: s["cast_invocations"] >= 2, 30, "two handlers to start")
            assert svc.proc is not None
            svc.proc.send_signal(signal.SIGTERM)
            svc.wait(lambda s: s.get("stop_at") is not None, 30, "the stop to begin")
            final = svc.terminate(20, signal.SIGTERM)  # the second: far before the grace ends
            log = svc.log_text()
        lines: List[str] = [line for line in log.splitlines() if "twice-" in line]
        assert final["exit_code"] == 0, log[-3000:]
        assert sum("still being handled" in line for line in lines) == 2, lines
        assert sum("waiting for a worker" in line for line in lines) == 1, lines
        assert scenarios.queue_sizes(amqp_url, names)["queue"] == 3
    finally:
        scenarios.cleanup(amqp_url, names)
