"""What both connections of a :class:`~tavrida.transports.kombu.KombuTransport` share.

The consuming and the publishing connection are objects of their own, each
with its own lock; they share only this: the config, the
:class:`~.connector.Connector`, the :class:`~.lifecycle.Lifecycle`, the
calling thread's deadline and the reconnect policy, with the few operations
built on them (retrying, taking a lock before the deadline).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Optional, TypeVar

from tavrida.config import ConnectionConfig
from tavrida.transports.kombu.compat import Compat
from tavrida.transports.kombu.connector import Connector
from tavrida.transports.kombu.deadlines import Deadline, Holding, ThreadState, take
from tavrida.transports.kombu.lifecycle import Lifecycle
from tavrida.transports.kombu.reconnect import Errors, ReconnectPolicy

T = TypeVar("T")


class KombuContext:
    """The transport's shared surroundings; fixed for its life, safe from any thread."""

    def __init__(self, config: ConnectionConfig, compat: Compat, max_retry_interval: float,
                 stop_step_timeout: float) -> None:
        self.config = config
        self.compat = compat
        #: Per-thread deadline of blocking operations (see :meth:`deadline`).
        self.local = ThreadState()
        self.lifecycle = Lifecycle()
        self.connector = Connector(config, self.local, self.lifecycle, compat)
        self.policy = ReconnectPolicy.from_config(config, max_retry_interval)
        #: Longest a step of a stop (cancel, close) waits for the broker.
        self.stop_step_timeout = stop_step_timeout
        self.is_amqp = self.connector.is_amqp
        self.confirms = self.is_amqp and config.publisher_confirms
        self.retry_errors: Errors = self.connector.retry_errors
        self.connection_errors: Errors = self.connector.connection_errors
        self.channel_errors: Errors = self.connector.channel_errors

    @property
    def thread_deadline(self) -> Optional[float]:
        """This thread's deadline (``time.monotonic()``), if any."""
        return self.local.deadline

    def deadline(self, timeout: Optional[float]) -> "contextlib.AbstractContextManager[None]":
        """Bound this thread's blocking operations inside the block (earliest wins)."""
        return Deadline(self.local, timeout)

    def step_deadline(self) -> float:
        """When a step of a stop gives up: this thread's deadline, at most
        :attr:`stop_step_timeout` from now (a stalled connection cannot hold a stop)."""
        bound = time.monotonic() + self.stop_step_timeout
        own = self.local.deadline
        return bound if own is None or own > bound else own

    def holding(self, lock: Any) -> "contextlib.AbstractContextManager[None]":
        """Acquire ``lock`` before this thread's deadline, or raise ConnectionFailed."""
        return Holding(self.local, lock, self.connector.failed)

    def take(self, lock: Any) -> None:
        """:meth:`holding` without its block: acquire ``lock`` (the caller releases it)."""
        take(self.local, lock, self.connector.failed)

    def retry(self, fun: Callable[[], T], initial: bool, what: str,
              once_if_interrupted: bool = False, timeout: Optional[float] = None) -> T:
        """Run ``fun`` until it stops raising connection errors, per the reconnect policy.

        Gives up with :class:`~tavrida.exceptions.ConnectionFailed` when the
        attempts run out (the first connect: ``connection_attempts``, later
        ones: ``reconnect_attempts``), this thread's deadline passes, or the
        transport is closed or interrupted; an error retrying cannot mend (a
        refused login) raises at once. ``once_if_interrupted`` (publishes):
        after an interrupt, still make the first attempt -- a stopping
        server's answer on a healthy connection goes out -- but retry nothing.
        ``timeout``: the loop, once entered, gives up that many seconds later
        at the latest (a publish's first attempt is made outside a deadline
        block when nothing in it can block).
        """
        failed_once: Optional[BaseException] = None
        if once_if_interrupted:
            # The first attempt made here, unchecked but for a close; the policy's loop (which
            # checks before each) only if it fails: most publishes need no loop, and no
            # calls to set one up (bench.profiling "cast, tavrida: client" calls/message).
            if self.lifecycle.closed:
                raise self.connector.failed(None, "the transport is closed")
            try:
                return fun()
            except self.retry_errors as exc:
                failed_once = exc
            except self.connection_errors as exc:
                raise self.connector.failed(exc, "") from exc
        with Deadline(self.local, timeout):
            return self.policy.call(
                fun, initial=initial, deadline=self.local.deadline, wake=self.lifecycle.wake,
                retry_errors=self.retry_errors, fatal_errors=self.connection_errors,
                failed=self.connector.failed, check=self.connector.check, what=what,
                url=self.connector.safe_url, failed_once=failed_once)
