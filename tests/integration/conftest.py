"""Fixtures for tests against real brokers.

* ``amqp_url`` / ``redis_url``: the broker URL from ``TAVRIDA_AMQP_URL`` /
  ``TAVRIDA_REDIS_URL`` (local defaults below), checked once per session.
  An unreachable broker skips the test locally and fails it when ``CI`` is
  set, so a CI run can never pass by skipping everything.
* ``broker_url``: parametrized over ``amqp``, ``redis`` and ``kombu-memory``,
  for contract tests that must behave the same on every broker.
* ``unique``: a uuid-suffixed name prefix; names made with ``unique("x")``
  are deleted from the brokers the test used when it ends.
* ``close_amqp_connections`` / ``close_redis_connections``: make the broker
  drop connections by their client-provided name (RabbitMQ needs
  ``rabbitmqctl``, i.e. a local broker; Redis uses ``CLIENT KILL``).

Every test uses its own names and deletes what it declares: other suites
share these brokers.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import urllib.parse
import uuid
from typing import Any, Callable, Dict, Iterator, List, Optional, Set

import pytest

from tavrida.retries import RetryPolicy

AMQP_URL_ENV = "TAVRIDA_AMQP_URL"
REDIS_URL_ENV = "TAVRIDA_REDIS_URL"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
KOMBU_MEMORY_URL = "kombu+memory://"
BROKERS = ("amqp", "redis", "kombu-memory")

#: Delay queues ``<queue>.retry.<ms>`` a server with the default retry settings declares.
DEFAULT_RETRY_DELAYS = RetryPolicy().delays_ms()

_DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671, "redis": 6379, "rediss": 6379}
#: url -> None when reachable, else why not (one check per session).
_reachability: Dict[str, Optional[str]] = {}


def _unreachable_reason(url: str) -> Optional[str]:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 0)
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return None
    except OSError as exc:
        return f"no {parts.scheme} broker at {host}:{port} ({exc})"


def _require_broker(env: str, default: str) -> str:
    """The URL in ``env`` if its broker answers; skip (locally) or fail (CI) if not."""
    url = os.environ.get(env) or default
    if url not in _reachability:
        _reachability[url] = _unreachable_reason(url)
    reason = _reachability[url]
    if reason is not None:
        reason = f"{reason}; set {env} to point at one"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return url


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """URL of a reachable RabbitMQ."""
    return _require_broker(AMQP_URL_ENV, DEFAULT_AMQP_URL)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of a reachable Redis."""
    return _require_broker(REDIS_URL_ENV, DEFAULT_REDIS_URL)


@pytest.fixture(params=BROKERS)
def broker_url(request: pytest.FixtureRequest) -> str:
    """Each broker in turn: RabbitMQ, Redis, kombu's in-process memory transport."""
    if request.param == "amqp":
        return request.getfixturevalue("amqp_url")
    if request.param == "redis":
        return request.getfixturevalue("redis_url")
    return KOMBU_MEMORY_URL


class UniqueNames:
    """A name prefix no other test uses; ``names("orders")`` -> ``<prefix>.orders``.

    Every name made is deleted after the test as a queue and as an exchange
    (deleting what does not exist is harmless), with its dead-letter queue
    and the delay queues of a server with the default retry settings (a
    test with other settings tracks its own).
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.names: Set[str] = set()

    def __call__(self, suffix: str) -> str:
        name = f"{self.prefix}.{suffix}"
        self.names.add(name)
        return name

    def track(self, name: str) -> str:
        """Delete ``name`` after the test too (a name not made by this object)."""
        self.names.add(name)
        return name

    def __str__(self) -> str:
        return self.prefix


def _cleanup_amqp(url: str, names: UniqueNames) -> None:
    import amqp

    parts = urllib.parse.urlsplit(url)
    vhost = urllib.parse.unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    conn = amqp.Connection(f"{parts.hostname or '127.0.0.1'}:{parts.port or 5672}",
                           userid=urllib.parse.unquote(parts.username or "guest"),
                           password=urllib.parse.unquote(parts.password or "guest"),
                           virtual_host=vhost, connect_timeout=3)
    conn.connect()
    try:
        channel = conn.channel()
        for name in sorted(names.names):
            channel.queue_delete(name)
            channel.queue_delete(name + ".dead")
            for delay_ms in DEFAULT_RETRY_DELAYS:  # a server's delay queues (default backoff)
                channel.queue_delete(f"{name}.retry.{delay_ms}")
            channel.exchange_delete(name)
    finally:
        conn.close()


def _cleanup_redis(url: str, names: UniqueNames) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=3)
    try:
        # Queue lists (and their priority variants) and kombu's binding sets.
        keys = list(client.scan_iter(match=f"*{names.prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        _forget_unacked(client, names.prefix)
    finally:
        client.close()


#: kombu's Redis transport keeps every delivered, not yet acked message of the
#: database in one hash (delivery tag -> [message, exchange, routing key]),
#: indexed by a sorted set.
UNACKED, UNACKED_INDEX = "unacked", "unacked_index"


def _forget_unacked(client: Any, prefix: str) -> None:
    """Delete the test's entries from kombu's shared ``unacked`` hash.

    An ack lost with a cut connection (a server stopped while its broker is
    unreachable, say) leaves the message there, and kombu of a later run
    would restore it to the test's queue list after its visibility timeout.
    """
    mine = [tag for tag, value in client.hscan_iter(UNACKED, count=1000)
            if prefix.encode() in value]
    if mine:
        client.hdel(UNACKED, *mine)
        client.zrem(UNACKED_INDEX, *mine)


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> Iterator[UniqueNames]:
    """Per-test name prefix; what it names is deleted from the brokers the test used."""
    test = request.node.name.split("[")[0].replace("_", "-")[:40]
    names = UniqueNames(f"tvt-{test}-{uuid.uuid4().hex[:10]}")
    yield names
    # Looked up now: fixtures that depend on this one request a broker after it was made.
    urls: List[str] = []
    for fixture in ("amqp_url", "redis_url", "broker_url"):
        if fixture in request.fixturenames:
            try:
                urls.append(request.getfixturevalue(fixture))
            except (Exception, pytest.skip.Exception, pytest.fail.Exception):
                continue  # that broker was never reached: nothing to clean
    for url in dict.fromkeys(urls):
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme.startswith("amqp"):
            _cleanup_amqp(url, names)
        elif scheme.startswith("redis"):
            _cleanup_redis(url, names)
        # kombu+memory:// lives in this process: the names are unique, nothing to do.


@pytest.fixture
def close_amqp_connections(amqp_url: str) -> Callable[[str], int]:
    """``close(name)`` makes RabbitMQ close every connection whose name contains ``name``.

    Returns how many it closed. Skips the test when ``rabbitmqctl`` cannot
    be run (a remote broker, no permission).
    """
    rabbitmqctl = shutil.which("rabbitmqctl")
    if rabbitmqctl is None:
        pytest.skip("rabbitmqctl is not available")

    def run(*args: str) -> str:
        result = subprocess.run([rabbitmqctl, "-q", *args], capture_output=True, text=True,
                                timeout=30)
        if result.returncode != 0:
            pytest.skip(f"rabbitmqctl {args[0]} failed: {result.stderr.strip()}")
        return result.stdout

    def close(name: str) -> int:
        closed = 0
        for line in run("list_connections", "pid", "client_properties").splitlines():
            pid, _, properties = line.partition("\t")
            match = re.search(r'\{"connection_name","([^"]*)"\}', properties)
            if match and name in match.group(1):
                run("close_connection", pid, "closed by a tavrida test")
                closed += 1
        return closed

    return close


@pytest.fixture
def close_redis_connections(redis_url: str) -> Callable[[str], int]:
    """``close(name)`` makes Redis close every connection whose name contains ``name``."""
    import redis

    def close(name: str) -> int:
        client = redis.Redis.from_url(redis_url, socket_timeout=3)
        try:
            ids = [c["id"] for c in client.client_list() if name in (c.get("name") or "")]
            for client_id in ids:
                client.client_kill_filter(_id=client_id)
            return len(ids)
        finally:
            client.close()

    return close
