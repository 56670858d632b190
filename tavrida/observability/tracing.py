"""OpenTelemetry spans per hop, in W3C ``traceparent`` headers (``pip install 'tavrida[otel]'``).

:class:`Tracing` (a server hook) gives every message a CONSUMER span, the
child of the span named by the message's ``traceparent`` header, named for
what came in: ``<entry point> process`` for a request, ``<entry point>
response`` and ``<entry point> error`` for the answers that come back from
a remote entry point, ``<entry point> notification`` for a notification it
published. Its ``tavrida.outcome`` attribute says what became of the
message (see :mod:`tavrida.observability.hooks`); an ``error``,
``dead-lettered`` or ``requeued`` one sets the span's status to ERROR. The
correlation id is in the attributes ``tavrida.correlation_id`` and
``messaging.message.conversation_id``. The span is current while the
handler runs, and the message's ``traceparent`` (and ``tracestate``) are
rewritten to name it before the handler sees the message. As tavrida
carries user headers from a message to the messages its handler sends and
to its answer, every message sent by this hop names this hop's span as its
parent: each hop is a child of the one before.

A hop without tracing (a 1.0 service, a 2.0 one not configured) passes
``traceparent`` on unchanged, so the next traced hop is a child of the last
traced one. :func:`instrument_client` makes an :class:`~tavrida.client.RPCClient`
start a PRODUCER span per message it sends and write its ``traceparent``.

Spans go to the tracer provider set with ``opentelemetry.trace`` (the SDK
and its exporters are the application's choice), or the one given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional

from tavrida import messages
from tavrida.observability.hooks import (
    DEAD_LETTERED,
    ERROR,
    REQUEUED,
    MessageRecord,
    ServerHook,
)
from tavrida.transports.confirmation import Confirmation

if TYPE_CHECKING:
    from tavrida.client import RPCClient
    from tavrida.server import Server

trace: Any
try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.propagators.textmap import Getter
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # pragma: no cover - exercised where the extra is missing
    trace = None

#: The last word of a CONSUMER span's name, by message type: a request from the answers.
SPAN_VERBS = {messages.REQUEST: "process", messages.RESPONSE: "response",
              messages.ERROR: "error", messages.NOTIFICATION: "notification"}
#: Outcomes that mark a span's status as an error.
FAILED_OUTCOMES = frozenset({ERROR, DEAD_LETTERED, REQUEUED})

#: The headers this module reads and writes.
TRACE_HEADERS = ("traceparent", "tracestate")
INSTRUMENTATION = "tavrida"


def _require() -> None:
    if trace is None:
        raise ImportError("tracing needs opentelemetry-api: pip install 'tavrida[otel]'")


if trace is not None:
    class _HeaderGetter(Getter[Mapping[str, Any]]):
        """Reads AMQP header tables, whose values may be bytes."""

        def get(self, carrier: Mapping[str, Any], key: str) -> Optional[List[str]]:
            value = carrier.get(key)
            if value is None:
                return None
            if isinstance(value, bytes):
                value = value.decode("ascii", "replace")
            return [str(value)]

        def keys(self, carrier: Mapping[str, Any]) -> List[str]:
            return list(carrier)


def _attributes(message_type: str, entry_point: str, correlation_id: str,
                **more: Any) -> Dict[str, Any]:
    attributes = {"messaging.system": "tavrida", "tavrida.message_type": message_type,
                  "tavrida.entry_point": entry_point,
                  "tavrida.correlation_id": correlation_id,
                  "messaging.message.conversation_id": correlation_id}
    attributes.update((k, v) for k, v in more.items() if v)
    return attributes


class Tracing(ServerHook):
    """A CONSUMER span per message, current while the handler runs."""

    def __init__(self, tracer_provider: Any = None) -> None:
        _require()
        self.tracer = trace.get_tracer(INSTRUMENTATION, tracer_provider=tracer_provider)
        self.propagator = TraceContextTextMapPropagator()
        self._getter = _HeaderGetter()

    def message_started(self, server: Server, record: MessageRecord) -> None:
        headers = record.headers
        parent = self.propagator.extract(headers, getter=self._getter)
        span = self.tracer.start_span(
            f"{record.label} {SPAN_VERBS.get(record.message_type, 'process')}",
            context=parent, kind=trace.SpanKind.CONSUMER,
            attributes=_attributes(record.message_type, record.entry_point,
                                   record.correlation_id,
                                   **{"messaging.operation": "process",
                                      "messaging.destination.name": record.queue,
                                      "messaging.message.id":
                                          str(headers.get("message_id") or "")}))
        current = trace.set_span_in_context(span, parent)
        token = otel_context.attach(current)
        for name in TRACE_HEADERS:
            headers.pop(name, None)
        self.propagator.inject(headers, context=current)
        record.state[self] = (span, token)

    def message_finished(self, server: Server, record: MessageRecord) -> None:
        span, token = record.state.pop(self, (None, None))
        if span is None:
            return
        try:
            span.set_attribute("tavrida.outcome", record.outcome or "")
            if record.exception is not None:
                span.record_exception(record.exception)
            if record.outcome in FAILED_OUTCOMES:
                why = (type(record.exception).__name__ if record.exception is not None
                       else record.error_name or record.outcome)
                span.set_status(trace.Status(trace.StatusCode.ERROR, why))
            span.end()
        finally:
            otel_context.detach(token)


def instrument_client(client: RPCClient, tracer_provider: Any = None) -> RPCClient:
    """Make ``client`` send each message in a PRODUCER span named by its ``traceparent``.

    The span is a child of the current one (wrap calls in your own span to
    tie them together). Returns the client.
    """
    _require()
    tracer = trace.get_tracer(INSTRUMENTATION, tracer_provider=tracer_provider)
    propagator = TraceContextTextMapPropagator()
    sender = client.sender
    publish = sender.publish

    def traced_publish(message: messages.Message) -> Confirmation:
        entry = str(message.source if message.message_type == messages.NOTIFICATION
                    else message.destination)
        span = tracer.start_span(f"{entry} send", kind=trace.SpanKind.PRODUCER,
                                 attributes=_attributes(message.message_type, entry,
                                                        message.correlation_id,
                                                        **{"messaging.operation": "publish"}))
        for name in TRACE_HEADERS:
            message.headers.pop(name, None)
        propagator.inject(message.headers, context=trace.set_span_in_context(span))
        try:
            confirmation = publish(message)
        except BaseException:
            span.end()
            raise
        # The span lasts until the broker's verdict (a blocking call's: its answer or confirm).
        confirmation.add_done_callback(lambda _: span.end())
        return confirmation

    # An instance attribute shadows the Sender's method on purpose: this one
    # client's sends (send and send_many publish through it) are traced,
    # other senders are left alone.
    sender.publish = traced_publish  # type: ignore[method-assign]
    return client


__all__ = ["SPAN_VERBS", "TRACE_HEADERS", "Tracing", "instrument_client"]
