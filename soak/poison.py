"""The poison scenario: handlers that ask for retries, mixed with healthy traffic.

A client casts ``poison`` messages (the handler always raises a
``NackableException``), ``flaky`` ones (it raises on the first run only) and
``good`` ones, interleaved. What must hold: every poison message runs exactly
``max_attempts`` times and ends in ``<queue>.dead`` with its attempt count;
every flaky one runs twice and every good one once; nothing is left in the
queue; at most one WARNING line per run. Before retries had a limit, one
poison message ran 46,023 times in 10 s and never reached the dead-letter
queue.

The server runs in a thread of this process (counting runs in memory), on
the real broker; nothing is cut.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Dict, List

from soak.scenarios import Names, Result, ScenarioError, cleanup, open_transport, wait_until
from tavrida import client, dispatcher, exceptions, server, service

SERVICE = "soak_poison"


class Again(exceptions.BaseNackableException):
    message_template = "try again later"


class _Lines(logging.Handler):
    """Counts the WARNING-or-worse lines of the tavrida loggers."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def poison(url: str, poisoned: int = 200, flaky: int = 200, good: int = 2000,
           max_attempts: int = 5, backoff: float = 0.05, backoff_max: float = 0.4,
           workers: int = 4, timeout: float = 120.0, command: str = "") -> Result:
    """Run the scenario; ``kind`` of message ``seq`` is poison, flaky or good, interleaved."""
    result = Result("poison", url, command)
    names = Names(service=SERVICE)
    kinds: List[str] = (["poison"] * poisoned + ["flaky"] * flaky + ["good"] * good)
    kinds = [kinds[(i * 7919) % len(kinds)] for i in range(len(kinds))]  # a fixed shuffle
    runs = bytearray(len(kinds))
    lock = threading.Lock()

    @dispatcher.rpc_service(SERVICE)
    class Poison(service.ServiceController):
        @dispatcher.rpc_method(service=SERVICE, method="work")
        def work(self, request: Any, proxy: Any, seq: int) -> None:
            with lock:
                runs[seq] = min(runs[seq] + 1, 255)
                count = runs[seq]
            if kinds[seq] == "poison" or (kinds[seq] == "flaky" and count == 1):
                raise Again()

    disc = names.discovery()
    Poison.set_discovery(disc)
    lines = _Lines()
    tavrida_log = logging.getLogger("tavrida")
    tavrida_log.addHandler(lines)
    level = tavrida_log.level
    tavrida_log.setLevel(logging.WARNING)  # counted, whatever the command line shows
    srv = server.Server(url, names.queue, names.exchange, [Poison], workers=workers,
                        max_attempts=max_attempts, retry_backoff=backoff,
                        retry_backoff_max=backoff_max)
    names.delays.extend(delay.name for delay in srv.topology().delays)
    admin = open_transport(url)
    thread = threading.Thread(target=srv.run, daemon=True)
    cpu = time.process_time()
    try:
        srv.start()
        thread.start()
        with client.RPCClient(url, disc, source=names.service) as cli:
            for seq in range(len(kinds)):
                cli.soak_poison.work(seq=seq).cast()

        def settled() -> bool:
            return ((admin.queue_size(names.dead) or 0) >= poisoned
                    and sum(1 for k, n in zip(kinds, runs) if k != "poison" and n) ==
                    flaky + good and (admin.queue_size(names.queue) or 0) == 0
                    and srv.pending_retries == 0)

        wait_until(settled, timeout, "every message handled or dead-lettered")
        time.sleep(1.0)  # a spinning message would show more runs by now
    except ScenarioError as exc:
        result.problems.append(str(exc))
    finally:
        srv.stop()
        thread.join(30)
        tavrida_log.removeHandler(lines)
        tavrida_log.setLevel(level)
        cpu = time.process_time() - cpu
        dead = admin.queue_size(names.dead) or 0
        left = admin.queue_size(names.queue) or 0
        admin.close()
        cleanup(url, names)
    expected = {"poison": max_attempts, "flaky": 2, "good": 1}
    wrong: Dict[str, int] = {}
    for kind, count in zip(kinds, runs):
        if count != expected[kind]:
            wrong[kind] = wrong.get(kind, 0) + 1
    poison_runs = sum(n for k, n in zip(kinds, runs) if k == "poison")
    lost = sum(1 for k, n in zip(kinds, runs) if k != "poison" and not n) + max(
        poisoned - dead, 0)
    handled = sum(1 for k, n in zip(kinds, runs) if k != "poison" and n)
    result.figures.update(
        messages_in=len(kinds), messages_out=handled + dead, poisoned=poisoned,
        runs_per_poison=round(poison_runs / max(poisoned, 1), 2), dead_letters=dead,
        left_in_queue=left, lost=lost, wrong_run_counts=sum(wrong.values()),
        warning_lines=lines.count, cpu_seconds=round(cpu, 1))
    result.check(lost == 0, f"{lost} lost")
    result.check(dead == poisoned, f"{dead} dead letters for {poisoned} poison messages")
    result.check(not wrong, f"messages run a wrong number of times: {wrong}")
    result.check(left == 0, f"{left} left in the queue")
    total_runs = sum(runs)
    result.check(lines.count <= total_runs, f"{lines.count} warning lines for {total_runs} runs")
    return result.done()
