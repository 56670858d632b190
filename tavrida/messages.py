"""Messages: what handlers receive and what they send.

Every message has seven tavrida headers (``correlation_id``,
``request_id``, ``message_id``, ``message_type``, ``reply_to``,
``source``, ``destination``), a ``context`` dict and a ``payload`` dict.
The headers are exposed as read-only properties; :attr:`Message.headers`
is a mutable dict of the same values plus any user headers (the two are
not kept in sync, as in 1.0).

Incoming classes are built by the server from the wire; outgoing classes
are built by proxies and handlers. tavrida 2 gives every message a fresh
``message_id`` (1.0 reused the request's in its responses); ``request_id``
pairs a request with its response or error; ``correlation_id`` is kept
along a whole chain of calls.
"""

from __future__ import annotations

import itertools
import operator
import reprlib
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Type, TypeVar

from tavrida import defaults, entry_point, exceptions
from tavrida import headers as header_names
from tavrida.exceptions import error_payload as error_payload
from tavrida.exceptions import get_fqcn as get_fqcn
from tavrida.headers import expiry_of as expiry_of
from tavrida.headers import late_by as late_by
from tavrida.headers import user_headers as user_headers
from tavrida.ids import new_correlation_id as new_correlation_id
from tavrida.ids import new_id as new_id

_M = TypeVar("_M", bound="Message")

REQUEST = "request"
RESPONSE = "response"
ERROR = "error"
NOTIFICATION = "notification"
MESSAGE_TYPES = (REQUEST, RESPONSE, ERROR, NOTIFICATION)

#: The headers tavrida owns; everything else in ``headers`` is the user's.
TAVRIDA_HEADERS = header_names.TAVRIDA_1
#: Headers an incoming message must carry (``reply_to`` may be absent).
REQUIRED_HEADERS = header_names.REQUIRED
#: Header of a 2.0 call: the exchange its answers go to, used when the answering
#: service's discovery does not know the caller (1.0 ignores it). Like every
#: ``x-tavrida-*`` header it describes one message and is not copied into others.
REPLY_EXCHANGE_HEADER = header_names.REPLY_EXCHANGE
#: Error code sent when an exception has no ``code`` attribute.
DEFAULT_ERROR_CODE = defaults.ERROR_CODE


#: Header of a request whose caller stops waiting at a known time: a blocking
#: ``call(timeout=T)`` sets it to the moment it gives up, in milliseconds since the
#: Unix epoch (an integer). A server drops such a request once that time has passed
#: instead of running it. Like every ``x-tavrida-`` header it is never copied into
#: another message; tavrida 1.0 ignores it.
EXPIRES_AT_HEADER = header_names.EXPIRES_AT


_BLANK_HEADERS = dict.fromkeys(TAVRIDA_HEADERS, "")


class Message:
    """Base message: headers, context and payload."""

    message_type = ""
    #: Outgoing requests of a blocking call: when the caller gives up (epoch
    #: seconds). The sender writes it as :data:`EXPIRES_AT_HEADER` and as the AMQP
    #: ``expiration``, so a request nobody waits for any more is never run.
    expires_at: Optional[float] = None

    def __init__(self, headers: Mapping[str, Any], context: Optional[Mapping[str, Any]],
                 payload: Optional[Mapping[str, Any]]) -> None:
        # Each of the seven present ("" where absent), then the given ones: subscripts below.
        headers = {**_BLANK_HEADERS, **headers}
        headers["message_type"] = self.message_type
        message_id = headers["message_id"]
        if not message_id:
            message_id = headers["message_id"] = new_id()
        request_id = headers["request_id"]
        if not request_id:
            request_id = headers["request_id"] = new_id()
        correlation_id = headers["correlation_id"]
        if not correlation_id:
            correlation_id = headers["correlation_id"] = new_correlation_id()
        reply_to = headers["reply_to"]
        if type(reply_to) is not str:
            reply_to = headers["reply_to"] = str(reply_to or "")
        source = headers["source"]
        if type(source) is not str:
            source = headers["source"] = str(source or "")
        destination = headers["destination"]
        if type(destination) is not str:
            destination = headers["destination"] = str(destination or "")
        self._correlation_id = str(correlation_id)
        self._request_id = str(request_id)
        self._message_id = str(message_id)
        parse = entry_point.parse_text
        self._reply_to = parse(reply_to, False, False)
        self._source = parse(source, True, False)
        self._destination = parse(destination, False, True)
        # Their routing keys: each header text is its entry point's (entry points are values).
        self._keys = (reply_to, source, destination)
        #: Exchange answers to ``reply_to`` go to when discovery does not know it ("": none).
        self.reply_exchange = (str(headers[REPLY_EXCHANGE_HEADER] or "")
                               if REPLY_EXCHANGE_HEADER in headers else "")
        self.headers = headers
        self.context: Dict[str, Any] = dict(context or {})
        self.payload: Dict[str, Any] = dict(payload or {})

    @classmethod
    def from_checked(cls: Type[_M], headers: Dict[str, Any], context: Dict[str, Any],
                     payload: Dict[str, Any]) -> _M:
        """The message of headers :func:`tavrida.wire.read_headers` checked and a fresh body.

        What ``__init__`` does, less what the checks already made sure of
        (all seven headers are non-empty text where needed, entry points
        parse): the dicts are taken as they are, not copied. The receiving
        path builds every incoming message this way.
        """
        self = cls.__new__(cls)
        headers["message_type"] = cls.message_type
        self._correlation_id = headers["correlation_id"]
        self._request_id = headers["request_id"]
        self._message_id = headers["message_id"]
        parse = entry_point.parse_text
        self._reply_to = parse(headers["reply_to"], False, False)
        self._source = parse(headers["source"], True, False)
        self._destination = parse(headers["destination"], False, True)
        self._keys = (headers["reply_to"], headers["source"], headers["destination"])
        self.reply_exchange = (headers[REPLY_EXCHANGE_HEADER] or ""
                               if REPLY_EXCHANGE_HEADER in headers else "")
        self.headers = headers
        self.context = context
        self.payload = payload
        return self

    if TYPE_CHECKING:
        @property
        def correlation_id(self) -> str: ...

        @property
        def request_id(self) -> str: ...

        @property
        def message_id(self) -> str: ...

        @property
        def reply_to(self) -> entry_point.EntryPoint: ...

        @property
        def source(self) -> entry_point.EntryPoint: ...

        @property
        def destination(self) -> entry_point.EntryPoint: ...
    else:
        # Read-only properties whose getter is C (operator.attrgetter), not a Python
        # function: they are read many times per message.
        correlation_id = property(operator.attrgetter("_correlation_id"),
                                  doc="Id of the whole chain of calls.")
        request_id = property(operator.attrgetter("_request_id"),
                              doc="Id of one request and its response or error.")
        message_id = property(operator.attrgetter("_message_id"), doc="Id of this message.")
        reply_to = property(operator.attrgetter("_reply_to"),
                            doc="Entry point answers go to (empty unless a call).")
        source = property(operator.attrgetter("_source"),
                          doc="Entry point the message comes from.")
        destination = property(operator.attrgetter("_destination"),
                               doc="Entry point the message goes to.")

    @property
    def type(self) -> str:
        return self.message_type

    @property
    def body(self) -> Dict[str, Any]:
        """The JSON envelope as a dict."""
        return {"context": self.context, "payload": self.payload}

    def body_serialize(self) -> str:
        """The JSON envelope as text."""
        from tavrida import wire

        return wire.dumps(self.body)

    def update_context(self, context: Mapping[str, Any]) -> None:
        """Merge ``context`` into this message's context."""
        self.context.update(context)

    def wire_headers(self) -> Dict[str, Any]:
        """Headers as they go on the wire: the user's, then the seven from the properties."""
        reply_to, source, destination = self._keys
        tavrida = {
            "correlation_id": self._correlation_id,
            "request_id": self._request_id,
            "message_id": self._message_id,
            "message_type": self.message_type,
            "reply_to": reply_to,
            "source": source,
            "destination": destination,
        }
        result = user_headers(self.headers)
        if not result:
            return tavrida
        result.update(tavrida)
        return result

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self._source}->{self._destination} "
                f"correlation_id={self._correlation_id} "
                f"payload={_PAYLOAD_REPR.repr(self.payload)}>")


class Incoming:
    """Marker: a message received from the broker."""


class _PayloadRepr(reprlib.Repr):
    """``repr()`` of payloads, cut where they are large; dicts keep their order."""

    def repr_dict(self, x: Dict[Any, Any], level: int) -> str:
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        items = itertools.islice(x.items(), self.maxdict)
        pieces = [f"{self.repr1(k, level - 1)}: {self.repr1(v, level - 1)}" for k, v in items]
        if len(x) > self.maxdict:
            pieces.append("...")
        return "{" + ", ".join(pieces) + "}"


#: Payloads in logs and reprs: small ones whole, large ones cut (a 100 MB answer that
#: cannot be sent is logged in a line, not in 100 MB).
_PAYLOAD_REPR = _PayloadRepr()
_PAYLOAD_REPR.maxlevel = 6
_PAYLOAD_REPR.maxdict = _PAYLOAD_REPR.maxlist = _PAYLOAD_REPR.maxtuple = 50
_PAYLOAD_REPR.maxset = _PAYLOAD_REPR.maxfrozenset = 50
_PAYLOAD_REPR.maxstring = _PAYLOAD_REPR.maxother = _PAYLOAD_REPR.maxlong = 500


class Outgoing:
    """Marker: a message to send."""


class BaseResponse(Message):
    message_type = RESPONSE


class BaseError(Message):
    message_type = ERROR


class IncomingRequest(Message, Incoming):
    """A request received by a service."""

    message_type = REQUEST

    def make_error(self, exception: BaseException) -> "Error":
        """An Error answering this request."""
        return Error.create_by_request(self, exception)


class IncomingRequestCall(IncomingRequest):
    """A request whose sender waits for an answer (``reply_to`` is set)."""

    #: Set by ``transfer()`` when the forwarded request answers the same caller:
    #: the final service answers, so a handler returning None sends nothing.
    transferred = False

    def make_response(self, **payload: Any) -> "Response":
        """A Response answering this request."""
        return Response.create_by_request(self, payload)


class IncomingRequestCast(IncomingRequest):
    """A request whose sender wants no answer."""


class IncomingResponse(BaseResponse, Incoming):
    """A response received by the caller's response handler."""


class IncomingError(BaseError, Incoming):
    """An error received by the caller's error handler.

    ``payload`` has ``class``, ``name``, ``message`` and ``code``.
    """


class IncomingNotification(Message, Incoming):
    """A notification received by a subscriber."""

    message_type = NOTIFICATION


class Request(Message, Outgoing):
    """A request to send to a remote entry point."""

    message_type = REQUEST

    @classmethod
    def create_transfer(cls, headers: Mapping[str, Any], context: Optional[Mapping[str, Any]],
                        **payload: Any) -> "Request":
        """A request forwarding another one's payload."""
        return cls(headers, context, payload)


def _answer_headers(request: Message) -> Dict[str, Any]:
    reply_to, source, destination = request._keys  # routing keys of its entry points
    headers = user_headers(request.headers)
    headers.update(correlation_id=request.correlation_id, request_id=request.request_id,
                   source=destination, reply_to="", destination=reply_to or source)
    if request.reply_exchange:  # where to send the answer; never written on the wire
        headers[REPLY_EXCHANGE_HEADER] = request.reply_exchange
    return headers


class Response(BaseResponse, Outgoing):
    """A response to send back to the caller."""

    @classmethod
    def create_by_request(cls, request: Message,
                          payload: Optional[Mapping[str, Any]]) -> "Response":
        """Answer ``request`` with ``payload``: same request and correlation ids."""
        return cls(_answer_headers(request), request.context, payload)


class Error(BaseError, Outgoing):
    """An error to send back to the caller, made from an exception."""

    def __init__(self, headers: Mapping[str, Any], context: Optional[Mapping[str, Any]],
                 exception: Any) -> None:
        if isinstance(exception, BaseException):
            payload = error_payload(exception)
        elif isinstance(exception, Mapping):
            payload = dict(exception)
        else:
            raise exceptions.IncorrectOutgoingMessage(
                reason=f"Error needs an exception or a payload dict, got {exception!r}")
        super().__init__(headers, context, payload)

    @classmethod
    def create_by_request(cls, request: Message, exception: Any) -> "Error":
        """Answer ``request`` with an error made from ``exception``."""
        return cls(_answer_headers(request), request.context, exception)


class Notification(Message, Outgoing):
    """A notification to publish on the service's notification exchange."""

    message_type = NOTIFICATION


_INCOMING: Dict[str, Type[Message]] = {
    RESPONSE: IncomingResponse,
    ERROR: IncomingError,
    NOTIFICATION: IncomingNotification,
}


class IncomingMessageFactory:
    """Creates incoming message objects from headers, context and payload."""

    def get_class(self, message_type: str, reply_to: Any) -> Type[Message]:
        """The incoming class for ``message_type`` (requests: call or cast by ``reply_to``)."""
        if message_type == REQUEST:
            return IncomingRequestCall if reply_to else IncomingRequestCast
        try:
            return _INCOMING[message_type]
        except KeyError:
            raise exceptions.UnsuitableFieldValue(field="message_type",
                                                  value=message_type) from None

    def create(self, headers: Mapping[str, Any], context: Optional[Mapping[str, Any]],
               payload: Optional[Mapping[str, Any]]) -> Message:
        """The incoming message for these parts."""
        cls = self.get_class(headers.get("message_type", ""), headers.get("reply_to"))
        return cls(headers, context, payload)

    def create_checked(self, headers: Dict[str, Any], context: Dict[str, Any],
                       payload: Dict[str, Any]) -> Message:
        """:meth:`create` for headers :func:`tavrida.wire.read_headers` checked
        (see :meth:`Message.from_checked`)."""
        message_type = headers["message_type"]
        if message_type == REQUEST:
            cls: Type[Message] = (IncomingRequestCall if headers["reply_to"]
                                  else IncomingRequestCast)
        else:
            cls = self.get_class(message_type, "")
        return cls.from_checked(headers, context, payload)

    def create_notification(self, headers: Mapping[str, Any],
                            context: Optional[Mapping[str, Any]],
                            payload: Optional[Mapping[str, Any]]) -> IncomingNotification:
        return IncomingNotification(headers, context, payload)
