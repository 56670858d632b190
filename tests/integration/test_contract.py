"""The contract suite: the same service behaviour on every transport, through either API.

Runs on tavrida's in-memory transport, RabbitMQ, Redis and kombu's
``memory://``, through the blocking API (``Server.run`` in threads, as in a
process, and ``RPCClient``); and on the first three through the asyncio API
(``aio.Server`` and ``aio.RPCClient``, the services' handlers made
``async def``): see contract_drivers.py. Every test uses its own exchange
and queue names.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, List

import pytest
from contract_drivers import Running

from tavrida import discovery, dispatcher, exceptions, messages, middleware, service

#: (broker, driver): the blocking API on every broker, the asyncio API on tavrida's own ones.
DEPLOYMENTS = [*((broker, "blocking") for broker in ("memory", "amqp", "redis", "kombu-memory")),
               *((broker, "async") for broker in ("memory", "amqp", "redis"))]


@pytest.fixture(params=DEPLOYMENTS, ids="-".join)
def deployment(request):
    return request.param


@pytest.fixture
def url(deployment, request, unique):
    """A broker URL of each kind; the in-memory one private to the test."""
    broker = deployment[0]
    if broker == "memory":
        return f"memory://{unique.prefix}"
    if broker == "amqp":
        return request.getfixturevalue("amqp_url")
    if broker == "redis":
        return request.getfixturevalue("redis_url")
    return "kombu+memory://"


class Recorder:
    """What handlers saw, with a way to wait for it."""

    def __init__(self) -> None:
        self.items: List[Any] = []
        self._cond = threading.Condition()

    def add(self, item: Any) -> None:
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 15.0) -> List[Any]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.items) >= count, timeout), (
                f"saw {len(self.items)} of {count}: {self.items}")
            return list(self.items)


SEEN = Recorder()
#: Released at the end of each test: the ``slow`` service's handler waits for it.
RELEASE = threading.Event()


@pytest.fixture
def running(url, deployment):
    global SEEN
    SEEN = Recorder()
    RELEASE.clear()
    cluster = Running(url, deployment[1])
    yield cluster
    RELEASE.set()
    cluster.close()


class Failure(Exception):
    code = 13


@dispatcher.rpc_service("front")
class Front(service.ServiceController):

    @dispatcher.rpc_method(service="front", method="start")
    def start(self, request, proxy, value):
        SEEN.add(("front.start", request.correlation_id, dict(request.context)))
        proxy.middle.work(step=value).call()

    @dispatcher.rpc_response_method(service="middle", method="work")
    def on_work(self, response, proxy, result):
        SEEN.add(("front.response", response.correlation_id, dict(response.context), result))

    @dispatcher.rpc_error_method(service="middle", method="work")
    def on_error(self, error, proxy):
        SEEN.add(("front.error", error.correlation_id, dict(error.payload)))


@dispatcher.rpc_service("middle")
class Middle(service.ServiceController):

    @dispatcher.rpc_method(service="middle", method="work")
    def work(self, request, proxy, step):
        SEEN.add(("middle.work", request.correlation_id, dict(request.context)))
        if step == "fail":
            raise Failure("middle refuses")
        proxy.back.end(depth=3).cast()
        proxy.publish(step=step)
        return {"result": f"done {step}"}

    @dispatcher.rpc_method(service="middle", method="echo")
    def echo(self, request, proxy, value):
        return {"value": value, "headers": messages.user_headers(request.headers)}


@dispatcher.rpc_service("back")
class Back(service.ServiceController):

    @dispatcher.rpc_method(service="back", method="end")
    def end(self, request, proxy, depth):
        SEEN.add(("back.end", request.correlation_id, dict(request.context)))


@dispatcher.rpc_service("watcher")
class Watcher(service.ServiceController):

    @dispatcher.subscription_method(service="middle", method="work")
    def on_work(self, notification, proxy, step):
        SEEN.add(("watcher", notification.correlation_id, step))


@dispatcher.rpc_service("auditor")
class Auditor(service.ServiceController):

    @dispatcher.subscription_method(service="middle", method="work")
    def on_work(self, notification, proxy, step):
        SEEN.add(("auditor", notification.correlation_id, step))


def chain(running: Running, unique) -> Dict[str, str]:
    """Front -> Middle -> Back, Middle publishing to Watcher and Auditor."""
    ex = {name: unique(name) for name in ("front", "middle", "back", "events", "client")}
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("front", ex["front"])
    disc.register_remote_service("middle", ex["middle"])
    disc.register_remote_service("back", ex["back"])
    disc.register_remote_service("client", ex["client"])
    disc.register_local_publisher("middle", ex["events"])
    disc.register_remote_publisher("middle", ex["events"])
    for cls in (Front, Middle, Back, Watcher, Auditor):
        cls.set_discovery(disc)
    running.serve(unique("front-q"), ex["front"], [Front])
    running.serve(unique("middle-q"), ex["middle"], [Middle])
    running.serve(unique("back-q"), ex["back"], [Back])
    running.serve(unique("watcher-q"), unique("watcher-ex"), [Watcher])
    running.serve(unique("auditor-q"), unique("auditor-ex"), [Auditor])
    return ex


def test_call_chain_keeps_correlation_id_and_grows_context(running, unique):
    chain(running, unique)
    disc = Front.get_discovery()
    cli = running.client(disc, "client")
    cli.front.start(value=7).cast(correlation_id="corr-42")
    seen = SEEN.wait_for(6)
    by_kind = {item[0]: item for item in seen}
    assert {item[1] for item in seen} == {"corr-42"}
    assert by_kind["front.start"][2] == {"value": 7}
    assert by_kind["middle.work"][2] == {"value": 7, "step": 7}
    assert by_kind["back.end"][2] == {"value": 7, "step": 7, "depth": 3}
    assert by_kind["front.response"][3] == "done 7"
    assert by_kind["front.response"][2]["result"] == "done 7"
    assert {by_kind["watcher"][2], by_kind["auditor"][2]} == {7}


def test_error_reaches_the_error_handler(running, unique):
    chain(running, unique)
    cli = running.client(Front.get_discovery(), "client")
    cli.front.start(value="fail").cast()
    seen = SEEN.wait_for(3)
    [error] = [item for item in seen if item[0] == "front.error"]
    assert error[2] == {"class": f"{__name__}.Failure", "name": "Failure",
                        "message": "middle refuses", "code": 13}


def test_blocking_call_and_remote_error(running, unique):
    chain(running, unique)
    cli = running.client(Front.get_discovery(), "client", headers={"x-trace": "t1"})
    answer = cli.middle.echo(value=[1, "two"]).call(timeout=10)
    assert answer == {"value": [1, "two"], "headers": {"x-trace": "t1"}}
    with pytest.raises(exceptions.RemoteError) as info:
        cli.middle.work(step="fail").call(timeout=10)
    assert info.value.remote_name == "Failure"
    assert info.value.code == 13


def test_concurrent_blocking_calls_get_their_own_answers(running, unique):
    chain(running, unique)
    cli = running.client(Front.get_discovery(), "client")
    results: Dict[int, Any] = {}

    def call(i: int) -> None:
        results[i] = cli.middle.echo(value=i).call(timeout=20)["value"]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == {i: i for i in range(50)}


@dispatcher.rpc_service("worker")
class Worker(service.ServiceController):

    @dispatcher.rpc_method(service="worker", method="job")
    def job(self, request, proxy, n):
        SEEN.add((id(self), n))  # one controller instance per server


def test_competing_consumers_share_one_queue(running, unique):
    exchange, queue = unique("work-ex"), unique("work-q")
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("worker", exchange)
    Worker.set_discovery(disc)
    running.serve(queue, exchange, [Worker], workers=1, prefetch_count=1)
    running.serve(queue, exchange, [Worker], workers=1, prefetch_count=1)
    cli = running.client(disc, "client")
    for n in range(40):
        cli.worker.job(n=n).cast()
    seen = SEEN.wait_for(40)
    assert sorted(n for _, n in seen) == list(range(40))
    assert len({owner for owner, _ in seen}) == 2, "one server took every message"


class Stamp(middleware.Middleware):
    def process(self, message):
        if isinstance(message, messages.Response):
            message.payload["stamped"] = True
        return message


class Gate(middleware.Middleware):
    def process(self, message):
        if message.headers.get("x-key") != "open":
            return messages.Error.create_by_request(message, PermissionError("no key"))
        return message


@dispatcher.rpc_service("guarded")
class Guarded(service.ServiceController):

    def __init__(self, postprocessor):
        super().__init__(postprocessor)
        self.add_incoming_middleware(Gate())
        self.add_outgoing_middleware(Stamp())

    @dispatcher.rpc_method(service="guarded", method="get")
    def get(self, request, proxy):
        return {"secret": 1}


def served_alone(running, unique, name, service_class):
    """``service_class`` served as ``name`` on an exchange and a queue of its own; the
    discovery (with a client exchange for ``client``)."""
    exchange = unique(f"{name}-ex")
    disc = discovery.LocalDiscovery()
    disc.register_remote_service(name, exchange)
    disc.register_remote_service("client", unique("client-ex"))
    service_class.set_discovery(disc)
    running.serve(unique(f"{name}-q"), exchange, [service_class])
    return disc


def test_middlewares_gate_and_stamp(running, unique):
    disc = served_alone(running, unique, "guarded", Guarded)
    with pytest.raises(exceptions.RemoteError, match="no key"):
        running.client(disc, "client").guarded.get().call(timeout=10)
    keyed = running.client(disc, "client", headers={"x-key": "open"})
    assert keyed.guarded.get().call(timeout=10) == {"secret": 1, "stamped": True}


@dispatcher.rpc_service("clock")
class Clock(service.ServiceController):

    @dispatcher.rpc_method(service="clock", method="now")
    def now(self, request, proxy):
        return {"when": complex(2026, 1)}  # not JSON

    @dispatcher.rpc_method(service="clock", method="ping")
    def ping(self, request, proxy):
        return {"pong": True}


def test_an_answer_that_is_not_json_reaches_its_caller_as_an_error(running, unique):
    exchange, queue = unique("clock-ex"), unique("clock-q")
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("clock", exchange)
    Clock.set_discovery(disc)
    running.serve(queue, exchange, [Clock])
    cli = running.client(disc, "client")
    assert cli.clock.ping().call(timeout=10) == {"pong": True}  # reply queue in place
    # An Error, not the CallTimeout its 30 s would end in (no verdict by the clock).
    with pytest.raises(exceptions.RemoteError) as info:
        cli.clock.now().call(timeout=30)
    assert info.value.remote_name == "UnsendableAnswer"
    assert info.value.remote_message == ("The answer of clock.now could not be sent: answer "
                                         "field 'when': complex is not JSON-serialisable")
    assert cli.clock.ping().call(timeout=10) == {"pong": True}  # the request was acked
    transport = running.servers[0].transport
    assert transport is not None
    assert transport.queue_size(queue + ".dead") in (0, None)  # an Error went: no dead letter


class Again(exceptions.BaseNackableException):
    message_template = "not yet"


@dispatcher.rpc_service("retrier")
class Retrier(service.ServiceController):

    @dispatcher.rpc_method(service="retrier", method="do")
    def do(self, request, proxy, value):
        attempts = request.headers.get("x-tavrida-attempts")
        SEEN.add(("retrier.do", value, attempts))
        if attempts is None:
            raise Again()
        return {"value": value, "attempts": attempts}


def test_a_retry_runs_again_after_its_backoff(running, unique):
    # The broker holds the wait (a delay queue); kombu+memory:// has none and the
    # server holds it instead: the caller sees the same either way.
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("retrier", unique("retrier"))
    disc.register_remote_service("client", unique("client"))
    Retrier.set_discovery(disc)
    queue = unique("retrier-q")
    unique.track(queue + ".retry.200")  # its one delay queue (max_attempts=2)
    running.serve(queue, unique("retrier"), [Retrier], max_attempts=2, retry_backoff=0.2,
                  prefetch_count=1)
    cli = running.client(disc, source="client")
    assert cli.retrier.do(value=7).call(timeout=15) == {"value": 7, "attempts": 1}
    assert SEEN.wait_for(2) == [("retrier.do", 7, None), ("retrier.do", 7, 1)]


def test_a_call_and_a_cast_no_queue_takes_raise_unroutable(running, unique):
    chain(running, unique)
    disc = Front.get_discovery()
    disc.register_remote_service("nobody", disc.get_remote("middle"))  # bound to no queue
    cli = running.client(disc, "client")
    with pytest.raises(exceptions.Unroutable):
        cli.nobody.method(x=1).call(timeout=10)
    with pytest.raises(exceptions.Unroutable):
        cli.nobody.method(x=1).cast()
    assert cli.middle.echo(value=1).call(timeout=10)["value"] == 1  # the client still works


@dispatcher.rpc_service("slow")
class Slow(service.ServiceController):
    """Sync in both drivers (aio.Server runs it on a worker): it waits for the test's end."""

    sync_in_both_drivers = True

    @dispatcher.rpc_method(service="slow", method="wait")
    def wait(self, request, proxy):
        SEEN.add(("slow.wait", request.correlation_id))
        RELEASE.wait(30)


def test_a_call_unanswered_by_its_deadline_raises_call_timeout(running, unique):
    disc = served_alone(running, unique, "slow", Slow)
    cli = running.client(disc, "client")
    with pytest.raises(exceptions.CallTimeout) as info:
        cli.slow.wait().call(correlation_id="corr-late", timeout=0.5)
    assert info.value.kwargs["correlation_id"] == "corr-late"
    assert SEEN.wait_for(1) == [("slow.wait", "corr-late")]  # it was running, unanswered
