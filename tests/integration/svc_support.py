"""Helpers for the integration tests that watch the wire and run services as processes.

Not a test module (pytest does not collect it). It holds:

* :class:`PlainAMQP`: a py-amqp connection used the way a program without
  tavrida (or tavrida 1.0) uses RabbitMQ: declare, bind, publish raw
  headers and bytes, and spy on exchanges;
* :class:`Proc`: a subprocess whose stdout and stderr go to files, with a
  bounded wait for a line of its output and a teardown that always kills;
* :func:`subprocess_env`: the environment that makes ``tavrida`` and the
  ``svc_*`` service modules importable in a subprocess.

Waits are bounded loops on a condition (never fixed sleeps standing in
for synchronisation).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import amqp

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
#: Upper bound of every wait in these helpers (seconds).
WAIT = 15.0


def amqp_connection(url: str) -> amqp.Connection:
    """A connected py-amqp connection to ``url`` (an ``amqp://`` URL)."""
    parts = urllib.parse.urlsplit(url)
    vhost = urllib.parse.unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    conn = amqp.Connection(f"{parts.hostname or '127.0.0.1'}:{parts.port or 5672}",
                           userid=urllib.parse.unquote(parts.username or "guest"),
                           password=urllib.parse.unquote(parts.password or "guest"),
                           virtual_host=vhost, connect_timeout=5,
                           client_properties={"connection_name": "tavrida-test-plain"})
    conn.connect()
    return conn


@dataclasses.dataclass
class Seen:
    """One message as a plain AMQP consumer received it."""

    exchange: str
    routing_key: str
    headers: Dict[str, Any]
    #: AMQP basic properties present, without the header table.
    properties: Dict[str, Any]
    body: bytes

    @property
    def message_type(self) -> Any:
        return self.headers.get("message_type")


def _seen(message: amqp.Message) -> Seen:
    properties = dict(message.properties)
    headers = properties.pop("application_headers", None) or {}
    body = message.body  # py-amqp decodes it when a content_encoding is given
    body = body.encode(properties["content_encoding"]) if isinstance(body, str) else body
    return Seen(message.delivery_info["exchange"], message.delivery_info["routing_key"],
                dict(headers), properties, bytes(body))


class PlainAMQP:
    """One py-amqp connection and channel; spies consume on it, :meth:`wait_for` reads it.

    Not thread-safe (py-amqp is not): use one per thread.
    """

    def __init__(self, url: str) -> None:
        self.conn = amqp_connection(url)
        self.channel = self.conn.channel()
        self.seen: Dict[str, List[Seen]] = {}

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001 - the broker may have closed it already
            pass

    def __enter__(self) -> "PlainAMQP":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # -- declarations, exactly as tavrida 1.0 made them --------------------------------------

    def declare_exchange(self, name: str) -> None:
        """A durable topic exchange, not auto-deleted, not internal, no arguments."""
        self.channel.exchange_declare(name, "topic", durable=True, auto_delete=False)

    def declare_queue(self, name: str) -> None:
        """A durable queue, not exclusive, not auto-deleted, no arguments."""
        self.channel.queue_declare(name, durable=True, exclusive=False, auto_delete=False)

    def bind(self, queue: str, exchange: str, routing_key: str) -> None:
        self.channel.queue_bind(queue, exchange, routing_key)

    def message_count(self, queue: str) -> int:
        """Messages ready in ``queue`` (passive declare: fails if it does not exist)."""
        return self.channel.queue_declare(queue, passive=True).message_count

    def consumer_count(self, queue: str) -> int:
        return self.channel.queue_declare(queue, passive=True).consumer_count

    # -- publishing --------------------------------------------------------------------------

    def publish(self, exchange: str, routing_key: str, body: bytes,
                headers: Dict[str, Any]) -> None:
        """Publish as 1.0 did: only a header table (no content type, no delivery mode)."""
        assert isinstance(body, bytes)  # py-amqp would add content_encoding for a str
        self.channel.basic_publish(amqp.Message(body, application_headers=dict(headers)),
                                   exchange=exchange, routing_key=routing_key)

    def get_all(self, queue: str, limit: int = 10000) -> List[Seen]:
        """Take (and ack) every message ready in ``queue``, at most ``limit``."""
        taken: List[Seen] = []
        for _ in range(limit):
            message = self.channel.basic_get(queue, no_ack=True)
            if message is None:
                break
            taken.append(_seen(message))
        return taken

    # -- spying ------------------------------------------------------------------------------

    def spy(self, queue: str, bindings: Iterable[Tuple[str, str]]) -> str:
        """Consume from a new exclusive ``queue`` bound as given; messages go to ``seen[queue]``."""
        self.channel.queue_declare(queue, durable=False, exclusive=True, auto_delete=True)
        for exchange, routing_key in bindings:
            self.bind(queue, exchange, routing_key)
        self.seen[queue] = []

        def on_message(message: amqp.Message) -> None:
            self.seen[queue].append(_seen(message))

        self.channel.basic_consume(queue, callback=on_message, no_ack=True)
        return queue

    def drain(self, timeout: float) -> None:
        try:
            self.conn.drain_events(timeout=timeout)
        except socket.timeout:
            pass

    def wait_for(self, queue: str, count: int, timeout: float = WAIT,
                 where: Callable[[Seen], bool] = lambda seen: True) -> List[Seen]:
        """The messages of spy ``queue`` matching ``where``, once there are ``count`` of them."""
        deadline = time.monotonic() + timeout
        while True:
            matching = [seen for seen in self.seen[queue] if where(seen)]
            if len(matching) >= count:
                return matching
            remaining = deadline - time.monotonic()
            assert remaining > 0, (f"spy {queue} saw {len(matching)} of {count} messages "
                                   f"in {timeout}s: {self.seen[queue]}")
            self.drain(min(remaining, 0.2))


def service_names(prefix: str) -> Dict[str, str]:
    """The queue and exchange of a service process run with ``prefix`` (svc_aio, svc_retry)."""
    return {"queue": f"{prefix}.queue", "exchange": f"{prefix}.svc"}


def wait_until(condition: Callable[[], Any], timeout: float = WAIT, what: str = "",
               interval: float = 0.05) -> Any:
    """Poll ``condition`` until it is truthy (returned); fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(interval)


# -- subprocesses ------------------------------------------------------------------------------

def subprocess_env(**extra: str) -> Dict[str, str]:
    """This environment plus PYTHONPATH = repo root and this folder (the svc_ modules)."""
    env = dict(os.environ)
    paths = [str(REPO), str(HERE)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("TAVRIDA_URL", None)  # each test passes its URL explicitly
    env.update(extra)
    return env


class Proc:
    """A subprocess with its stdout and stderr in files under ``folder``."""

    def __init__(self, args: Sequence[str], folder: Path, name: str,
                 env: Optional[Dict[str, str]] = None) -> None:
        self.args = [str(arg) for arg in args]
        self.name = name
        self.stdout_path = folder / f"{name}.stdout"
        self.stderr_path = folder / f"{name}.stderr"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.popen = subprocess.Popen(self.args, stdout=out, stderr=err,
                                          stdin=subprocess.DEVNULL, cwd=str(REPO),
                                          env=env or subprocess_env())

    @classmethod
    def python(cls, args: Sequence[str], folder: Path, name: str,
               env: Optional[Dict[str, str]] = None) -> "Proc":
        return cls([sys.executable, *args], folder, name, env)

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def describe(self) -> str:
        """Everything the process said, for assertion messages."""
        return (f"{self.name} {self.args} returncode={self.popen.poll()}\n"
                f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}")

    def wait_for_output(self, text: str, timeout: float = WAIT) -> None:
        """Poll the output files until ``text`` appears; fail if the process ends first."""
        deadline = time.monotonic() + timeout
        while text not in self.stdout + self.stderr:
            if self.popen.poll() is not None:
                raise AssertionError(f"exited before printing {text!r}:\n{self.describe()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} within {timeout}s:\n{self.describe()}")
            time.sleep(0.05)

    def wait(self, timeout: float = WAIT) -> int:
        """Wait for the exit; fail (after killing it) if it takes longer than ``timeout``."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"still running after {timeout}s:\n{self.describe()}") from None

    def terminate(self, timeout: float = WAIT) -> Tuple[int, float]:
        """SIGTERM, then wait: (return code, seconds it took to exit)."""
        started = time.monotonic()
        self.popen.send_signal(signal.SIGTERM)
        code = self.wait(timeout)
        return code, time.monotonic() - started

    def stop(self, timeout: float = 5.0) -> None:
        """Teardown: SIGTERM if it still runs, then kill it if it has not exited in time."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        """Kill it if it still runs (teardown: never leave a process behind)."""
        if self.popen.poll() is None:
            self.popen.kill()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                pass


def run_python(args: Sequence[str], folder: Path, name: str, timeout: float = 30.0,
               env: Optional[Dict[str, str]] = None) -> Proc:
    """Run ``python ARGS`` to the end (killed after ``timeout``); the finished :class:`Proc`."""
    proc = Proc.python(args, folder, name, env)
    try:
        proc.wait(timeout)
    finally:
        proc.kill()
    return proc
