"""The cluster scenario: casts and calls while the node a service and a client use is killed.

Runs on the three-node test cluster (``tests/integration/cluster/cluster_harness.py``):
the service (a process of its own, :mod:`soak.service`) and the client both
get the cluster's failover URL, node 1 first, so both connect to node 1. At
``kill_at`` of the stream node 1 is SIGKILLed, then booted again while the
stream goes on. Checks, as the ``faults`` scenario: every cast handled at
least once, every call answered with its own answer or failed with a clear
error, a call after the kill answered; and that both sides were on node 1
before the kill and connected again after it (to node 2 or 3 while node 1
was down: the figures count these moves).

``variant``:

* ``classic``: the queues are declared first through node 2, so their home
  node survives: only the connections die with node 1.
* ``quorum``: the service declares quorum queues through node 1, which
  makes node 1 their leader: the node killed held the queue, and nothing
  may be lost.
* ``classic-home``: classic queues the service declares through node 1,
  their home. While node 1 is down RabbitMQ refuses to declare or consume
  them (the service retries until node 1 is back) and returns what is
  published to them (tavrida's publishes are ``mandatory``, so their
  senders get ``Unroutable``: counted as ``casts_refused``, no loss). Its
  confirmed persistent messages come back with the node.

A cast that fails with a clear error is sent again up to ``resend`` times
(a quorum queue nacks what arrives during its leader election), except in
``classic-home``, where such casts are refused for as long as the node is
down.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from typing import Any, Dict, List, Optional

from soak.scenarios import (
    CLIENT,
    ClientLog,
    Names,
    ReplyLog,
    Result,
    ScenarioError,
    ServiceProcess,
    Stream,
    _workdir,
    check_dead_letters,
    cleanup,
    open_transport,
    queue_sizes,
)
from tavrida import client

HARNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests",
                       "integration", "cluster")
if HARNESS not in sys.path:
    sys.path.insert(0, HARNESS)

from cluster_harness import RabbitCluster  # noqa: E402

#: The node killed: the first of the failover URL, where both sides connect first.
VICTIM = 1


def connections_by_port(cluster: RabbitCluster, via: int, pids: List[int]) -> Dict[int, List[int]]:
    """AMQP port of each tavrida connection whose name carries one of ``pids`` -> those pids."""
    out = cluster.node(via).ctl("list_connections", "port", "client_properties",
                                "--formatter", "json").stdout
    found: Dict[int, List[int]] = {}
    for row in json.loads(out or "[]"):
        name = next((value for key, _, value in row.get("client_properties", [])
                     if key == "connection_name"), "")
        for pid in pids:
            if str(name).startswith(f"tavrida-{pid}-"):
                found.setdefault(int(row["port"]), []).append(pid)
    return found


def queue_homes(cluster: RabbitCluster, names: Names) -> Dict[str, str]:
    """``<type>@<node>`` of the run's queues: a quorum queue's leader, a classic one's home."""
    def rows(node: int, *extra: str) -> List[Dict[str, Any]]:
        out = cluster.node(node).ctl("list_queues", "name", "type", "leader", *extra,
                                     "--formatter", "json").stdout
        return [row for row in json.loads(out or "[]")
                if row.get("name") in (names.queue, names.dead)]

    homes = {row["name"]: f"{row.get('type')}@{row.get('leader') or ''}" for row in rows(2)}
    for node in cluster.nodes:
        for row in rows(node.index, "--local") if node.pid() is not None else []:
            if homes.get(row["name"], "").endswith("@"):
                homes[row["name"]] += node.nodename
    return homes


#: The variants of :func:`failover`.
VARIANTS = ("classic", "quorum", "classic-home")


def failover(cluster: RabbitCluster, variant: str = "classic", casts: int = 20_000,
             calls: int = 2_000, callers: int = 8, call_timeout: float = 10.0,
             kill_at: float = 0.3, drain_timeout: float = 120.0, resend: int = 3,
             workdir: Optional[str] = None, command: str = "") -> Result:
    """Kill node 1 under a stream of ``casts`` casts and ``calls`` calls; see the module."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, not {variant!r}")
    queue_type = "quorum" if variant == "quorum" else "classic"
    refusals = variant == "classic-home"
    url = cluster.failover_url
    result = Result(f"cluster-{variant}", url, command)
    names = Names(f"tvt-cluster-{variant}-{uuid.uuid4().hex[:8]}")
    survivor = cluster.node(2).url
    workdir, tmp = _workdir(workdir)
    victim = cluster.node(VICTIM)
    kill: Dict[str, Any] = {}
    try:
        if variant == "classic":
            # Home node 2: only the connections die with node 1, not the queues.
            setup = open_transport(survivor)
            try:
                setup.declare(names.topology())
            finally:
                setup.close()
        service = ServiceProcess(url, names, workdir, "cluster", casts=casts, calls=calls,
                                 queue_type=queue_type)
        with service, ReplyLog() as replies, ClientLog(os.path.join(workdir, "client.log")):
            service.start()
            cli = client.RPCClient(url, names.discovery(), source=CLIENT)
            try:
                # Connect both client connections (the first call opens them).
                cli.soak.ask(seq=calls).call(timeout=drain_timeout)
                pids = [service.pid, os.getpid()]
                before = connections_by_port(cluster, 2, pids)
                result.figures["queues"] = queue_homes(cluster, names)
                stream = Stream(cli, casts, calls, callers, call_timeout,
                                0 if refusals else resend)

                def killer() -> None:
                    if not stream.wait_for(kill_at * (casts + calls)):
                        return
                    kill["at"] = stream.progress
                    cluster.kill(VICTIM)
                    began = time.monotonic()
                    try:
                        cluster.restart(VICTIM)
                        kill["restart_s"] = round(time.monotonic() - began, 1)
                    except Exception as exc:  # noqa: BLE001 - reported as a problem
                        kill["restart_error"] = f"{type(exc).__name__}: {exc}"

                send_seconds, after_kill = stream.run_faulted(killer, 300, service, result,
                                                              drain_timeout)
                after = connections_by_port(cluster, 2, pids)
            finally:
                cli.close()
            final = service.terminate()
            sizes = queue_sizes(survivor, names)
            moved = service.log_count("connection moved to node")
            with open(os.path.join(workdir, "client.log"), encoding="utf-8") as log:
                client_moved = log.read().count("connection moved to node")
            late = replies.dropped
        stream.judge(result, final, sizes, after_kill, "the kill", cast_errors_ok=refusals)
        result.figures.update({
            "killed_at": kill.get("at"), "restart_s": kill.get("restart_s"),
            "service_moves": moved, "client_moves": client_moved,
            "peak_rss_mb": round(service.peak_rss_kb / 1024, 1),
            "late_answers_dropped": late,
            "send_s": round(send_seconds, 1),
        })
        home = cluster.node(2 if variant == "classic" else VICTIM).nodename
        result.check(result.figures["queues"].get(names.queue) == f"{queue_type}@{home}",
                     f"the queue was not a {queue_type} queue held by {home}")
        result.check("at" in kill, "the stream ended before the kill")
        result.check("restart_error" not in kill, f"node 1 did not restart: "
                                                 f"{kill.get('restart_error')}")
        on_victim = sorted(before.get(victim.port, []))
        result.check(on_victim == sorted(pids * 2),
                     f"before the kill, not both sides' two connections on node 1: {before}")
        # Where they are now is no verdict: a connection that noticed the loss after node 1
        # was back may have gone back to it. They must be there, and all of them answer.
        result.check(sorted(sum(after.values(), [])) == sorted(pids * 2),
                     f"after the kill, not both sides' two connections open: {after}")
        check_dead_letters(result, survivor, names, sizes["dead"], stream)
    except ScenarioError as exc:
        result.problems.append(str(exc))
    finally:
        try:
            cleanup(survivor, names)
        finally:
            if tmp is not None:
                tmp.cleanup()
    return result.done()

