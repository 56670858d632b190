"""Services in processes of their own, run and stopped as a user does.

``svc_chain`` is the hello/world tutorial (examples/run_service.py) with
names this test chooses, so runs never share a queue. Each service is a
``python -m svc_chain ROLE`` subprocess; the test waits for its
"started" log line, drives it with an ``RPCClient``, watches the reports
its handlers cast to an ``observer`` exchange, then sends SIGTERM.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterator, List

import pytest
import redis
import svc_chain
from svc_support import PlainAMQP, Proc, subprocess_env, wait_until

from tavrida import client, discovery, exceptions

STARTED = "started with services"  # Server's log line once it consumes
STOP_WITHIN = 5.0  # seconds from SIGTERM to exit

StartService = Callable[[str, str, str], Proc]


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[StartService]:
    """``start(role, url, prefix)`` runs ``python -m svc_chain ROLE``; stopped at teardown."""
    started: List[Proc] = []

    def start(role: str, url: str, prefix: str) -> Proc:
        env = subprocess_env(TVT_URL=url, TVT_PREFIX=prefix)
        proc = Proc.python(["-m", "svc_chain", role], tmp_path, role, env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
        print(proc.describe())  # shown by pytest when the test failed


def chain_names(unique) -> dict:
    """svc_chain's names for this test, registered with ``unique`` for deletion."""
    return {what: unique.track(name) for what, name in svc_chain.names(unique.prefix).items()}


def test_call_chain_across_processes_then_sigterm(amqp_url, unique, start_service):
    n = chain_names(unique)
    with PlainAMQP(amqp_url) as plain:
        plain.declare_exchange(n["observer-ex"])
        reports = plain.spy(unique("reports"), [(n["observer-ex"], "observer.#")])
        world = start_service("world", amqp_url, unique.prefix)
        hello = start_service("hello", amqp_url, unique.prefix)
        world.wait_for_output(STARTED)
        hello.wait_for_output(STARTED)

        disc = discovery.LocalDiscovery()
        disc.register_remote_service("test_hello", n["hello-ex"])
        disc.register_remote_service("test_world", n["world-ex"])
        disc.register_remote_service("client_app", n["client-ex"])
        with client.RPCClient(amqp_url, disc, source="client_app") as cli:
            assert cli.test_hello.hello(param=7).call(correlation_id="corr-ok",
                                                      timeout=10) == {"accepted": 7}
            assert cli.test_hello.hello(param="fail").call(correlation_id="corr-fail",
                                                           timeout=10) == {"accepted": "fail"}
            with pytest.raises(exceptions.RemoteError) as info:
                cli.test_world.world(param="fail").call(timeout=10)
        # Raised in the world process, whose main module is svc_chain.
        assert (info.value.remote_class, info.value.remote_name, info.value.code) == \
            ("__main__.WorldFailure", "WorldFailure", 42)
        assert info.value.remote_message == "world fails (param=fail)"

        got = plain.wait_for(reports, 4)
        assert len(got) == 4, got
        seen = {}
        for report in got:
            payload = json.loads(report.body)["payload"]
            seen[payload["kind"], report.headers["correlation_id"]] = (payload["source"],
                                                                      payload["payload"])
        assert seen == {
            ("response", "corr-ok"): ("test_world.world", {"param": "world response to 7"}),
            ("notification", "corr-ok"): ("test_hello.hello", {"param": 7}),
            ("error", "corr-fail"): ("test_world.world", {
                "class": "__main__.WorldFailure", "name": "WorldFailure",
                "message": "world fails (param=fail)", "code": 42}),
            ("notification", "corr-fail"): ("test_hello.hello", {"param": "fail"}),
        }

        for proc in (hello, world):
            code, took = proc.terminate()
            assert code == 0, proc.describe()
            assert took < STOP_WITHIN, f"{proc.name} took {took:.1f}s to stop"
            assert f"{proc.name} stopped" in proc.stdout, proc.describe()
            assert "Traceback" not in proc.stderr, proc.describe()
        for queue in (n["hello-q"], n["world-q"]):
            assert plain.message_count(queue) == 0, f"{queue} kept messages"
            assert plain.message_count(queue + ".dead") == 0, f"{queue}.dead got messages"
            assert plain.consumer_count(queue) == 0


def test_sigterm_with_work_in_hand_loses_nothing(amqp_url, unique, start_service):
    """SIGTERM while requests wait: the one in hand is finished, the rest stay queued."""
    n = chain_names(unique)
    total = 20
    with PlainAMQP(amqp_url) as plain:
        plain.declare_exchange(n["observer-ex"])
        reports = unique("reports")  # not consumed: counted once the service has exited
        plain.declare_queue(reports)
        plain.bind(reports, n["observer-ex"], "observer.#")
        world = start_service("world", amqp_url, unique.prefix)
        world.wait_for_output(STARTED)
        disc = discovery.LocalDiscovery()
        disc.register_remote_service("test_world", n["world-ex"])
        with client.RPCClient(amqp_url, disc, source="client_app") as cli:
            for i in range(total):
                cli.test_world.work(n=i, seconds=0.05).cast()
        wait_until(lambda: plain.message_count(reports) >= 1, what="the first report")
        code, took = world.terminate()
        assert code == 0, world.describe()
        assert took < STOP_WITHIN, f"world took {took:.1f}s to stop"
        # Reports are confirmed by the broker before the service moves on: all are in.
        done = [json.loads(report.body)["payload"]["payload"]["n"]
                for report in plain.get_all(reports)]
        left = plain.message_count(n["world-q"])
        assert len(done) == len(set(done)), f"handled twice: {sorted(done)}"
        assert len(done) + left == total, (
            f"{len(done)} handled + {left} still queued != {total} sent\n{world.describe()}")
        assert 0 < len(done) < total, f"SIGTERM came too late to test anything: {len(done)}"
        assert plain.message_count(n["world-q"] + ".dead") == 0


def redis_queue_length(conn: redis.Redis, queue: str) -> int:
    """Messages waiting in a kombu Redis queue (its list and its priority lists)."""
    keys = [key for key in conn.scan_iter(match=f"{queue}*", count=1000)
            if key == queue.encode() or key.startswith(queue.encode() + b"\x06\x16")]
    return sum(conn.llen(key) for key in keys)


def test_simple_call_to_a_process_on_redis(redis_url, unique, start_service):
    n = chain_names(unique)
    world = start_service("world", redis_url, unique.prefix)
    world.wait_for_output(STARTED)
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("test_world", n["world-ex"])
    disc.register_remote_service("client_app", n["client-ex"])
    with client.RPCClient(redis_url, disc, source="client_app") as cli:
        assert cli.test_world.world(param=3).call(timeout=10) == {
            "param": "world response to 3"}
    code, took = world.terminate()
    assert code == 0, world.describe()
    assert took < STOP_WITHIN, f"world took {took:.1f}s to stop"
    conn = redis.Redis.from_url(redis_url, socket_timeout=3)
    try:
        assert redis_queue_length(conn, n["world-q"]) == 0
        assert redis_queue_length(conn, n["world-q"] + ".dead") == 0
    finally:
        conn.close()
