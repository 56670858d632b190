"""Server hooks: the one seam observability plugs into.

A :class:`ServerHook` is told when a server starts, each turn of its
consumer loop, around every message, and when it stops and closes. The
server holds them in a :class:`HookList` (``Server(..., hooks=[...])``)
and, when the list is empty, pays nothing per message. Access logs,
metrics, traces and health checks (the other modules of this package) are
hooks; write your own the same way.

A hook must not raise: what it raises is logged and the message goes on.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    FrozenSet,
    Iterable,
    Iterator,
    List,
    Optional,
    Tuple,
)

from tavrida import messages
from tavrida.transports.base import Delivery

if TYPE_CHECKING:
    from tavrida.server import Server

LOG = logging.getLogger(__name__)

#: Outcomes of a message (:attr:`MessageRecord.outcome`): what happened to it.
OK = "ok"                       # handled; a call was answered with a Response
ERROR = "error"                 # its caller was sent an Error (middleware refusals too)
EXPIRED = "expired"             # dropped unrun: its caller had given up waiting
RETRIED = "retried"             # its handler asked for a retry: it runs again later
DEAD_LETTERED = "dead-lettered"  # copied to the dead-letter queue
REQUEUED = "requeued"           # given back to the broker to try again
OUTCOMES = (OK, ERROR, EXPIRED, RETRIED, DEAD_LETTERED, REQUEUED)

#: The entry-point label of messages no handler of the server is declared for.
OTHER = "other"


class MessageRecord:
    """One message as hooks see it: where it goes, how it ended, how long it took.

    ``headers`` is the header table the server will decode: a hook may add
    headers to it in :meth:`ServerHook.message_started` (tracing does).
    """

    __slots__ = ("correlation_id", "dead_letter_reason", "duration", "entry_point",
                 "error_name", "exception", "headers", "known", "message_type", "outcome",
                 "queue", "started", "state")

    def __init__(self, queue: str, headers: Dict[str, Any],
                 known: FrozenSet[Tuple[str, str]]) -> None:
        self.queue = queue
        self.headers = headers
        self.message_type = _text(headers.get("message_type"))
        field = "destination" if self.message_type == messages.REQUEST else "source"
        #: The handler's entry point: a request's destination, else the source.
        self.entry_point = _text(headers.get(field))
        self.correlation_id = _text(headers.get("correlation_id"))
        #: True when a handler of the server is declared for it (a bounded label).
        self.known = (self.message_type, self.entry_point) in known
        self.started = time.perf_counter()
        self.duration: Optional[float] = None
        self.outcome: Optional[str] = None
        self.exception: Optional[BaseException] = None
        #: The ``name`` of the Error its caller was sent (outcome ``error``), else "".
        self.error_name = ""
        self.dead_letter_reason: Optional[str] = None
        #: Per-hook scratch space (a tracing span, ...), keyed by the hook.
        self.state: Dict[Any, Any] = {}

    @property
    def label(self) -> str:
        """The entry point, or ``other`` for unknown ones (hostile input stays bounded)."""
        return self.entry_point if self.known else OTHER

    def _finish(self) -> None:
        self.duration = time.perf_counter() - self.started
        if self.outcome is None:
            self.outcome = ERROR if self.exception is not None else OK


def _text(value: Any, limit: int = 200) -> str:
    """A header value as short printable text (for logs and labels)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = "" if value is None else str(value)[:limit]
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class ServerHook:
    """Base class: override what you need; every method does nothing here."""

    def started(self, server: Server) -> None:
        """The server is consuming."""

    def tick(self, server: Server) -> None:
        """One turn of :meth:`Server.run`'s consumer loop (about once a second)."""

    def message_started(self, server: Server, record: MessageRecord) -> None:
        """A message was taken, before it is decoded (in the thread that handles it)."""

    def message_finished(self, server: Server, record: MessageRecord) -> None:
        """The message is settled: ``record.outcome`` and ``record.duration`` are set.

        With pipelined answers (:attr:`Server.pipelined_answers`) a call is
        settled once its answer is confirmed, after the next messages were taken.
        """

    def message_failed(self, server: Server, message: Optional[messages.Message],
                       exc: BaseException, by_handler: bool) -> None:
        """A message failed: its handler raised ``exc`` (``by_handler``), or it could
        not be read, dispatched or answered (``message`` is None when unreadable).

        Called before the message is settled, in the thread that handles it.
        """

    def stopping(self, server: Server, in_flight: int) -> None:
        """A graceful stop began; ``in_flight`` messages are still being handled."""

    def closed(self, server: Server) -> None:
        """The server closed its connection."""


class _ObservedDelivery(Delivery):
    """The delivery the server handles while hooks watch: notes requeues and its settling."""

    def __init__(self, delivery: Delivery, record: MessageRecord,
                 settled: Callable[["_ObservedDelivery"], None]) -> None:
        self._delivery = delivery
        self._record = record
        self._settled = settled
        self.done = False
        self.body = delivery.body
        self.headers = record.headers
        self.properties = delivery.properties
        self.exchange = delivery.exchange
        self.routing_key = delivery.routing_key
        self.queue = delivery.queue
        self.redelivered = delivery.redelivered

    def ack(self) -> None:
        self._delivery.ack()
        self._settled(self)

    def reject(self, requeue: bool) -> None:
        self._delivery.reject(requeue)
        if requeue:
            self._record.outcome = REQUEUED
        self._settled(self)

    @property
    def redelivery_due(self) -> bool:
        return self._delivery.redelivery_due

    def __getattr__(self, name: str) -> Any:
        return getattr(self._delivery, name)


class HookList(List[ServerHook]):
    """The hooks of one server, called in order (finishing ones in reverse)."""

    def __init__(self, hooks: Iterable[ServerHook] = (), server: Optional[Server] = None,
                 ) -> None:
        super().__init__(hooks)
        #: The server these hooks observe (passed to each hook's methods).
        self.server = server
        self._local = threading.local()
        self._known: FrozenSet[Tuple[str, str]] = frozenset()

    def _each(self, method: str, *args: Any, hooks: Optional[Iterable[ServerHook]] = None,
              ) -> None:
        for hook in self if hooks is None else hooks:
            try:
                getattr(hook, method)(*args)
            except Exception:  # noqa: BLE001 - a hook never stops the server
                LOG.exception("server hook %r failed in %s", hook, method)

    def started(self, server: Server) -> None:
        """Unlike the others, raises: a hook that cannot start (a port in use) stops the start."""
        self.server = server
        self._known = frozenset(
            (kind, str(ep)) for cls in server.service_classes
            for kind, ep in cls.get_dispatcher().handlers)
        for hook in self:
            hook.started(server)

    def tick(self, server: Server) -> None:
        self._each("tick", server)

    def stopping(self, server: Server, in_flight: int) -> None:
        self._each("stopping", server, in_flight)

    def closed(self, server: Server) -> None:
        self._each("closed", server)

    def observe(self, server: Server, delivery: Delivery,
                handle: Callable[[Delivery], None]) -> None:
        """Run ``handle(delivery)`` between the hooks' message_started and message_finished.

        The message is finished when it is settled (acked or rejected), which
        may be after ``handle`` returned (a pipelined answer); without hooks,
        ``handle`` is called as it is.
        """
        if not self:
            handle(delivery)
            return
        record = MessageRecord(delivery.queue, dict(delivery.headers or {}), self._known)
        observed = _ObservedDelivery(delivery, record, self._settled)
        self._local.record = record
        try:
            self._each("message_started", server, record)
            handle(observed)
        except BaseException:
            self._settled(observed)  # (StopNow: it is given back unsettled)
            raise
        finally:
            self._local.record = None

    def _settled(self, observed: _ObservedDelivery) -> None:
        if observed.done:
            return
        observed.done = True
        record = observed._record
        record._finish()
        self._each("message_finished", self.server, record, hooks=reversed(self))

    def given_back(self, delivery: Delivery) -> None:
        """``delivery`` will come again without being settled here (its connection is gone)."""
        if isinstance(delivery, _ObservedDelivery):
            delivery._record.outcome = REQUEUED
            self._settled(delivery)

    @contextlib.contextmanager
    def recording(self, delivery: Delivery) -> Iterator[None]:
        """Outcomes told inside go to ``delivery``'s record (a pipelined answer's confirm)."""
        if not isinstance(delivery, _ObservedDelivery):
            yield
            return
        before = self._current()
        self._local.record = delivery._record
        try:
            yield
        finally:
            self._local.record = before

    def _current(self) -> Optional[MessageRecord]:
        return getattr(self._local, "record", None)

    def failed(self, message: Optional[messages.Message], exc: BaseException,
               by_handler: bool) -> None:
        """The message being handled failed: noted on its record, told to each hook."""
        record = self._current()
        if record is not None and record.exception is None:
            record.exception = exc
        self._each("message_failed", self.server, message, exc, by_handler)

    def retrying(self) -> None:
        """The message being handled will run again after a delay (see tavrida.retries)."""
        self._outcome(RETRIED)

    def answered_error(self, name: str = "") -> None:
        """The caller of the message being handled was sent an Error named ``name``."""
        record = self._current()
        if record is not None:
            record.outcome = ERROR
            record.error_name = _text(name)

    def expired(self) -> None:
        """The message being handled was dropped unrun: its caller had given up."""
        self._outcome(EXPIRED)

    def _outcome(self, outcome: str) -> None:
        record = self._current()
        if record is not None:
            record.outcome = outcome

    def dead_lettered(self, reason: str) -> None:
        """The message being handled went to the dead-letter queue."""
        record = self._current()
        if record is not None:
            record.outcome = DEAD_LETTERED
            record.dead_letter_reason = reason


__all__ = ["DEAD_LETTERED", "ERROR", "EXPIRED", "OK", "OTHER", "OUTCOMES", "REQUEUED",
           "RETRIED", "HookList", "MessageRecord", "ServerHook"]
