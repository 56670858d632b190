"""The three-node RabbitMQ test cluster as a fixture (see ``cluster_harness``).

``rabbit_cluster`` starts the cluster once per session, on a base port
leased for this run (``RabbitCluster.on_free_ports``: its own ports, node
names and folder, so two test runs on one machine do not meet;
``TAVRIDA_CLUSTER_BASE_PORT`` fixes the base port instead), and stops it and
deletes its folder at the end, whatever the tests did. A node a test killed is booted
again before the next test that asks for the cluster. No ``rabbitmq-server``
on the machine, or a cluster that does not start, skips the tests locally
and fails them when ``CI`` is set. The start and stop times are printed in
the summary: they count against CI's budget.
"""

from __future__ import annotations

import os
import shutil
from typing import Dict, Iterator, Optional

import pytest
from cluster_harness import ClusterError, RabbitCluster, _bin

_timings: Dict[str, Optional[float]] = {}


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def _session_cluster() -> Iterator[RabbitCluster]:
    if shutil.which(_bin("rabbitmq-server")) is None:
        _unavailable("rabbitmq-server is not installed: no test cluster")
    base_port = os.environ.get("TAVRIDA_CLUSTER_BASE_PORT")
    try:
        cluster = RabbitCluster(int(base_port)) if base_port else RabbitCluster.on_free_ports()
        cluster.start()
    except ClusterError as exc:
        _unavailable(f"the test cluster did not start: {exc}")
    _timings["start"] = cluster.start_seconds
    try:
        yield cluster
    finally:
        cluster.stop()
        _timings["stop"] = cluster.stop_seconds


@pytest.fixture
def rabbit_cluster(_session_cluster: RabbitCluster) -> RabbitCluster:
    """The running three-node cluster; a node killed by an earlier test is back."""
    for node in _session_cluster.nodes:
        if node.pid() is None:
            _session_cluster.restart(node.index)
    return _session_cluster


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _timings:
        parts = [f"{what} {seconds:.1f} s" for what, seconds in _timings.items()
                 if seconds is not None]
        terminalreporter.write_line(f"rabbitmq test cluster: {', '.join(parts)}")
