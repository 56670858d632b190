"""Central discovery on every broker it keeps records on: memory://, RabbitMQ, Redis.

Servers run in threads as they would in processes; each discovery made
with ``shared=False`` has a connection, cache and owner of its own, as in
another process, so what one learns from another went through the store.
Every test has its own store name, exchanges and queues, deleted after it.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any, Callable, Dict, Iterator, List

import pytest

from soak.proxy import TcpProxy
from tavrida import client, discovery, dispatcher, exceptions, server, service
from tavrida.config import ConnectionConfig
from tavrida.registry.record import Entry, Record
from tavrida.registry.store import open_store
from tavrida.transports import create_transport
from tavrida.transports.base import Delivery, Topology
from tavrida.transports.memory.store import MemoryStore

#: Short heartbeats so a stop or an outage shows within a test.
SETTINGS = {"refresh": 0.5, "ttl": 5.0, "sync_timeout": 10.0}
WAIT = 15.0


@pytest.fixture(params=["memory", "amqp", "redis"])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return f"memory://tvt-central-{uuid.uuid4().hex[:10]}"
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def env(url: str, unique: Any) -> Iterator["Env"]:
    made = Env(url, unique)
    yield made
    made.close()


class Env:
    """One broker, one store name; servers, clients and discoveries closed at the end."""

    def __init__(self, url: str, unique: Any) -> None:
        self.url = url
        self.unique = unique
        self.store = unique("discovery")
        unique.track(f"{self.store}.beats")  # the heartbeats' exchange on RabbitMQ
        self.closers: List[Callable[[], None]] = []
        self.stoppers: Dict[server.Server, Callable[[], None]] = {}

    def discovery(self, url: str = "", **kwargs: Any) -> discovery.CentralDiscovery:
        disc = discovery.CentralDiscovery(url or self.url, name=self.store, shared=False,
                                          **{**SETTINGS, **kwargs})
        self.closers.append(disc.close)
        return disc

    def serve(self, cls: type, exchange: str, **kwargs: Any) -> server.Server:
        queue = self.unique(f"{exchange}-queue")
        srv = server.Server(self.url, queue, self.unique(exchange), [cls], **kwargs)
        srv.start()
        thread = threading.Thread(target=srv.run, daemon=True)
        thread.start()

        def stop() -> None:
            srv.stop()
            thread.join(30)

        self.closers.append(stop)
        self.stoppers[srv] = stop
        return srv

    def stop(self, srv: server.Server) -> None:
        """Stop ``srv`` and wait until it closed (and withdrew its record)."""
        self.stoppers[srv]()

    def client(self, disc: discovery.AbstractDiscovery, source: str) -> client.RPCClient:
        cli = client.RPCClient(self.url, disc, source=source)
        self.closers.append(cli.close)
        return cli

    def close(self) -> None:
        for closer in reversed(self.closers):
            closer()


def echo_service(name: str) -> type:
    @dispatcher.rpc_service(name)
    class Echo(service.ServiceController):
        @dispatcher.rpc_method(service=name, method="echo")
        def echo(self, request: Any, proxy: Any, text: str) -> Any:
            return {"text": text}

    return Echo


def test_a_client_with_no_registrations_calls_a_service_that_registered_itself(env: Env):
    echo = echo_service("central_echo")
    echo.set_discovery(env.discovery())
    srv = env.serve(echo, "echo")
    caller = env.discovery()
    assert caller.wait_for("central_echo", srv.exchange_name, WAIT)
    cli = env.client(caller, f"caller_{uuid.uuid4().hex[:6]}")
    assert cli.central_echo.echo(text="hi").call(timeout=WAIT) == {"text": "hi"}
    assert caller.get_all_exchanges()["remote"] == {}  # nothing written by hand


def test_a_moved_service_is_reached_by_a_running_caller(env: Env):
    echo = echo_service("central_moving")
    echo.set_discovery(env.discovery())
    first = env.serve(echo, "old")
    caller = env.discovery()
    assert caller.wait_for("central_moving", first.exchange_name, WAIT)
    cli = env.client(caller, f"caller_{uuid.uuid4().hex[:6]}")
    assert cli.central_moving.echo(text="1").call(timeout=WAIT) == {"text": "1"}
    env.stop(first)
    echo.set_discovery(env.discovery())  # a new process, on a new exchange
    second = env.serve(echo, "new")
    assert caller.wait_for("central_moving", second.exchange_name, WAIT)
    assert cli.central_moving.echo(text="2").call(timeout=WAIT) == {"text": "2"}


def cut_off(env: Env, disc: discovery.CentralDiscovery, proxy: Any) -> None:
    """Make ``disc``'s store unreachable."""
    store = disc.directory.store
    if isinstance(store, MemoryStore):
        store.unreachable = True
    else:
        proxy.close()


@pytest.fixture
def proxy(url: str) -> Iterator[Any]:
    if url.startswith("memory"):
        yield None
        return
    with TcpProxy.for_url(url) as running:
        yield running


def test_an_unreachable_store_leaves_calls_working_from_the_cache(
        env: Env, proxy: Any, caplog: pytest.LogCaptureFixture):
    store_url = proxy.url(env.url) if proxy is not None else env.url
    echo = echo_service("central_cached")
    server_disc = env.discovery(store_url)
    echo.set_discovery(server_disc)
    srv = env.serve(echo, "cached")
    caller = env.discovery(store_url)
    assert caller.wait_for("central_cached", srv.exchange_name, WAIT)
    cli = env.client(caller, f"caller_{uuid.uuid4().hex[:6]}")
    assert server_disc.wait_for(cli._announced, None, WAIT)  # the server knows the client
    caplog.set_level(logging.INFO, logger="tavrida.discovery")
    cut_off(env, caller, proxy)
    cut_off(env, server_disc, proxy)
    for n in range(3):
        assert cli.central_cached.echo(text=str(n)).call(timeout=WAIT) == {"text": str(n)}
    with pytest.raises(exceptions.UnableToDiscover, match="not in central discovery at"):
        caller.get_remote("central_nobody")
    # The server's heartbeat fails and says so; it goes on serving.
    registrar = server_disc.directory.registrar
    assert registrar.wait(lambda: registrar.failing, WAIT)
    assert any("cannot register" in r.getMessage() for r in caplog.records)


def test_a_malformed_record_is_ignored_with_a_log_line(env: Env,
                                                       caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, logger="tavrida.discovery")
    caller = env.discovery()
    assert caller.wait_for("central_none", None, 0.1) is False  # synced, empty
    writer = open_store(ConnectionConfig.from_url(env.url), env.store)
    try:
        writer.write("bad", b'{"v": 1, "owner": "x", "services": "not an object"}', 10)
        writer.write("worse", b"\xff not json", 10)
        good = Record("tester", {"central_good": Entry("good_exchange")}, 1.0, 1.0, 0)
        writer.write(good.owner, good.encode(), 10)
    finally:
        writer.close()
    assert caller.wait_for("central_good", "good_exchange", WAIT)
    malformed = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    assert len(malformed) == 2, malformed
    assert "services must be an object" in malformed[0]


def dead_letters(url: str, queue: str, count: int) -> List[Delivery]:
    """Wait for ``count`` messages in ``queue`` (a dead-letter queue) and take them."""
    transport = create_transport(ConnectionConfig.from_url(url))
    got: List[Delivery] = []
    arrived = threading.Event()

    def keep(delivery: Delivery) -> None:
        delivery.ack()
        got.append(delivery)
        if len(got) >= count:
            arrived.set()

    try:
        transport.declare(Topology.build(queues=[queue]))
        transport.consume(queue, keep, 0)
        for _ in range(int(WAIT * 4)):
            if arrived.is_set():
                break
            transport.drain(0.25)
        return got
    finally:
        transport.close()


def test_reply_exchanges_known_answers_registered_callers_only(env: Env):
    echo = echo_service("central_guarded")
    guard = env.discovery()
    echo.set_discovery(guard)
    srv = env.serve(echo, "guarded", reply_exchanges="known")
    # A caller that registered (its reply exchange) centrally is answered.
    caller = env.discovery()
    assert caller.wait_for("central_guarded", srv.exchange_name, WAIT)
    cli = env.client(caller, f"caller_{uuid.uuid4().hex[:6]}")
    assert guard.wait_for(cli._announced, "tavrida.replies", WAIT)  # pushed to the service
    assert cli.central_guarded.echo(text="ok").call(timeout=WAIT) == {"text": "ok"}
    # A stranger naming an exchange nobody registered is refused and dead-lettered.
    stranger_disc = discovery.LocalDiscovery()
    stranger_disc.register_remote_service("central_guarded", srv.exchange_name)
    stranger_disc.register_remote_service("stranger", env.unique("stranger-replies"))
    stranger = env.client(stranger_disc, "stranger")
    stranger.central_guarded.echo(text="no").call()  # answer wanted, not waited for
    (dead,) = dead_letters(env.url, srv.dead_letter_queue, 1)
    reason = str(dead.headers["x-tavrida-dead-reason"])
    assert "stranger-replies" in reason and "unknown to discovery" in reason


def test_on_rabbitmq_heartbeats_reach_watchers_but_not_the_stream(amqp_url: str, unique: Any):
    """A replay reads the records, not every heartbeat: those go to the watchers' own queues."""
    env = Env(amqp_url, unique)
    try:
        owner, caller = env.discovery(), env.discovery()
        owner.announce("central_beating", "beating_exchange")
        assert caller.wait_for("central_beating", "beating_exchange", WAIT)
        directory = caller.directory
        first = directory._resolved["central_beating"][1].at
        for _ in range(3):  # three heartbeats, each seen by the running watcher
            seen = directory._resolved["central_beating"][1].at
            assert directory.wait(
                lambda s=seen: directory._resolved["central_beating"][1].at > s, WAIT)
        assert directory._resolved["central_beating"][1].at > first
        replayed: List[bytes] = []
        synced = threading.Event()
        store = open_store(ConnectionConfig.from_url(amqp_url), env.store)
        try:
            store.watch(replayed.append, lambda ok: ok and synced.set())
            assert synced.wait(WAIT)
        finally:
            store.close()
        assert len(replayed) == 1, replayed  # the one record; the heartbeats are not in it
    finally:
        env.close()


def test_the_command_enters_a_service_running_callers_then_find(
        env: Env, capsys: pytest.CaptureFixture[str]):
    from tavrida import cli

    caller = env.discovery()
    assert cli.main(["discovery", "set", "central_legacy", "legacy_exchange", "--url", env.url,
                     "--name", env.store]) == 0
    assert caller.wait_for("central_legacy", "legacy_exchange", WAIT)
    assert cli.main(["discovery", "list", "--url", env.url, "--name", env.store]) == 0
    assert "manual/central_legacy" in capsys.readouterr().out
    assert cli.main(["discovery", "remove", "central_legacy", "--url", env.url,
                     "--name", env.store]) == 0
    directory = caller.directory
    assert directory.wait(lambda: "central_legacy" not in directory._resolved, WAIT)
