"""Reliability tests: the soak scenarios (``python -m soak``) at CI sizes.

Each test runs one scenario of :mod:`soak.scenarios` (services in
subprocesses, connections cut through a TCP proxy the test owns) and prints
its one-line figure: messages in and out, redeliveries, duplicates, dead
letters, peak RSS. The same line is the assertion message, and all of them
are repeated at the end of the run.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable, Dict, List

import pytest

_LINES: List[str] = []
_RESULTS: List[Dict[str, Any]] = []
#: Set to a path to keep the figures as JSON (docs/reliability.md is made from it).
JSON_ENV = "TAVRIDA_RELIABILITY_JSON"


@pytest.fixture
def report() -> Callable:
    """``report(result)``: print the figure line, keep it for the summary, assert it passed."""

    def check(result) -> None:
        line = result.line()
        print(f"\n{line}")
        _LINES.append(line)
        _RESULTS.append(result.to_dict())
        assert result.passed, line

    return check


def pytest_terminal_summary(terminalreporter) -> None:
    path = os.environ.get(JSON_ENV)
    if path and _RESULTS:
        lost = sum(int(r["figures"].get("lost") or 0) for r in _RESULTS)
        failed = sum(1 for r in _RESULTS if not r["passed"])
        with open(path, "w") as out:
            json.dump({"command": "python -m pytest " + " ".join(sys.argv[1:]),
                       "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "verdict": f"{len(_RESULTS) - failed} of {len(_RESULTS)} passed, "
                                  f"{lost} lost", "results": _RESULTS}, out, indent=1)
    if _LINES:
        terminalreporter.section("reliability figures")
        for line in _LINES:
            terminalreporter.write_line(line)
