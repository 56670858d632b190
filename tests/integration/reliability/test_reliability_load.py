"""Long handlers and a backlog.

* A handler that runs 3 heartbeat intervals (2 s interval, 6 s handler) on the
  thread that drains the connection (``workers=0``), with and without
  ``send_heartbeat()``: the connection stays up, the call is answered and the
  message is delivered once.
* 100,000 waiting messages: drained completely while the service's resident
  memory stays flat.
"""

from __future__ import annotations

import concurrent.futures

import pytest

from soak import scenarios

BACKLOG = 100_000

pytestmark = pytest.mark.slow


def test_long_handlers_keep_their_connection_and_message(amqp_url, report) -> None:
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # both at once: 8 s, not 16
        runs = [pool.submit(scenarios.long_handler, amqp_url, beat) for beat in (False, True)]
        results = [run.result(timeout=120) for run in runs]
    for result in results:
        print(f"\n{result.line()}")
    failed = [r for r in results if not r.passed]
    report(failed[0] if failed else results[0])
    if not failed:
        report(results[1])


def test_backlog_drains_with_flat_memory(amqp_url, report) -> None:
    report(scenarios.backlog(amqp_url, BACKLOG))
