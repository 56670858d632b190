"""Central discovery on the three-node cluster: the node holding the stream's leader dies.

The records live in a stream queue, replicated on every node. 50 hand-made
records (never heartbeated, so nothing writes them again after the crash)
are written; the node that leads the stream is SIGKILLed. A running
watcher answers from its cache throughout, reconnects and sees a record
written after the crash; a watcher started while the node is down reads
all 51 back from the surviving replicas.
"""

from __future__ import annotations

import time
import uuid
from typing import Dict

import amqp
from cluster_harness import RabbitCluster

from tavrida.config import ConnectionConfig
from tavrida.registry.directory import Directory
from tavrida.registry.record import Entry, Record
from tavrida.registry.store import open_store

RECORDS = 50
WAIT = 60.0


def _leader(cluster: RabbitCluster, queue: str) -> int:
    """Index (1-3) of the node leading ``queue``."""
    out = cluster.node(1).ctl("list_queues", "-q", "name", "type", "leader").stdout
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == queue:
            assert parts[1] == "stream", line
            return int(parts[2].split("@")[0].rsplit("c", 1)[1])
    raise AssertionError(f"no queue {queue} in {out!r}")


def _watcher(conf: ConnectionConfig, name: str) -> Directory:
    directory = Directory(open_store(conf, name), refresh=1.0, ttl=5.0, sync_timeout=WAIT)
    directory.start()
    return directory


def test_killing_the_leader_of_the_discovery_stream_loses_no_record(
        rabbit_cluster: RabbitCluster) -> None:
    name = f"tavrida-cluster-discovery-{uuid.uuid4().hex[:8]}"
    conf = ConnectionConfig.from_url(rabbit_cluster.failover_url)
    writer = open_store(conf, name)
    expected: Dict[str, str] = {}
    now = time.time()
    for n in range(RECORDS):
        service = f"svc{n}"
        expected[service] = f"{service}_exchange"
        rec = Record(f"manual/{service}", {service: Entry(expected[service])}, now, now, 0,
                     kind="manual")
        writer.write(rec.owner, rec.encode(), 30)
    before = _watcher(conf, name)
    after = None
    try:
        assert {s: before.lookup(s)[0].exchange for s in expected} == expected  # type: ignore[index]
        leader = _leader(rabbit_cluster, name)
        rabbit_cluster.kill(leader)
        # The cache answers at once, node down or not.
        assert {s: before.lookup(s)[0].exchange for s in expected} == expected  # type: ignore[index]
        late = Record("manual/late", {"late": Entry("late_exchange")}, now, time.time(), 0,
                      kind="manual")
        writer.write(late.owner, late.encode(), WAIT)  # to a surviving node
        expected["late"] = "late_exchange"
        assert before.wait(lambda: "late" in before._resolved, WAIT), \
            "the running watcher never saw the record written after the crash"
        after = _watcher(conf, name)  # reads the replicas, leader gone
        assert {s: after.lookup(s)[0].exchange for s in expected} == expected  # type: ignore[index]
        print(f"\nleader node {leader} killed: {len(expected)} of {len(expected)} records "
              f"read back from the other nodes")
    finally:
        for directory in (before, after):
            if directory is not None:
                directory.close()
        writer.close()
        _delete(rabbit_cluster, name)  # the killed node is booted again by the fixture


def _delete(cluster: RabbitCluster, queue: str) -> None:
    """Delete the stream queue through a node that runs."""
    node = next(node for node in cluster.nodes if node.pid() is not None)
    conn = amqp.Connection(f"127.0.0.1:{node.port}", connect_timeout=10)
    conn.connect()
    try:
        conn.channel().queue_delete(queue)
    finally:
        conn.close()
