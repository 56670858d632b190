"""Exceptions raised by tavrida. All derive from :class:`TavridaError`.

Each exception renders ``message_template`` with the keyword arguments it
was raised with, so messages name the culprit (the entry point, the
service, the header). ``code`` travels in the ``code`` field of Error
messages.

:class:`AckableException` marks errors after which the message is acked
(it can never succeed); :class:`NackableException` marks errors after which
the message is rejected and requeued for another try.
"""

from __future__ import annotations

import builtins
from typing import Any, Dict, List, Optional

from tavrida import defaults


class AckableException:
    """Mixin: the message that caused this error is acked (not retried)."""


class NackableException:
    """Mixin: the message that caused this error is requeued for a retry."""


class TavridaError(Exception):
    """Root of every tavrida exception (``BaseException`` in 1.0's docs)."""

    message_template = "An unknown tavrida error occurred"
    code = 1000

    def __init__(self, message: str = "", **kwargs: Any) -> None:
        self.kwargs = kwargs
        if not message:
            try:
                message = self.message_template % kwargs
            except (KeyError, TypeError, ValueError):
                message = self.message_template
        self.message = message
        super().__init__(message)


# The 1.0 name, kept for compatibility; it shadows the builtin only here.
BaseException = TavridaError  # noqa: A001


class BaseAckableException(TavridaError, AckableException):
    """A tavrida error after which the message is acked."""


class BaseNackableException(TavridaError, NackableException):
    """A tavrida error after which the message is requeued."""


class CantRegisterRemotePublisher(TavridaError):
    message_template = (
        "Service %(service)s cannot subscribe to %(publisher)s: "
        "%(publisher)s has no notifications exchange in %(ds_file)s"
    )


class ConfigFileIsNotDefined(TavridaError):
    message_template = "Discovery file is not defined"


class DuplicatedEntryPointRegistration(BaseAckableException):
    message_template = (
        "Entry point %(entry_point)s (%(message_type)s) is registered twice in "
        "%(service)s: by %(first)s and %(second)s"
    )


class DuplicatedMethodRegistration(TavridaError):
    message_template = "Method %(method)s is registered twice in %(service)s"


class DuplicatedServiceRegistration(BaseAckableException):
    message_template = (
        "Service %(service)s is registered twice in one server: "
        "%(first)s and %(second)s"
    )


class FieldMustExist(BaseAckableException):
    message_template = "Header %(field)s must exist"


class FieldMustFullyDefined(BaseAckableException):
    message_template = "Field %(field)s must be fully defined"


class ForbiddenHeaders(TavridaError):
    message_template = "Headers %(headers)s are reserved by tavrida"


class HandlerNotFound(BaseAckableException):
    message_template = "No %(message_type)s handler for %(entry_point)s"


class IncorrectAMQPConfig(TavridaError):
    message_template = "Incorrect connection config: %(reason)s"


class QueueMismatch(IncorrectAMQPConfig):
    """The broker has a queue of this name with another type or other arguments.

    Raised when declaring; ``queue`` names it, ``reason`` says what to do and
    carries the broker's own words. A classic queue (tavrida 1.0's kind)
    never becomes a quorum queue: quorum needs a new name.
    """

    message_template = "Cannot declare queue %(queue)r: %(reason)s"


class QueueLocked(IncorrectAMQPConfig):
    """Another connection holds this queue (an exclusive reply queue of another client).

    Raised by ``declare_reply_queue``; ``queue`` names it, ``reason`` says
    what to do and carries the broker's own words (RabbitMQ: 405
    RESOURCE_LOCKED). The queue goes away when its owner's connection closes.
    """

    message_template = "Cannot declare reply queue %(queue)r: %(reason)s"


class IncorrectAMQPLibrary(TavridaError):
    message_template = "Unknown transport %(name)s"


class IncorrectMessage(BaseAckableException):
    message_template = "Incorrect message: %(reason)s"

    #: The message's tavrida headers when they were valid (its body was not), or
    #: those of a call its Error answer needs (its ``source`` was not), so that
    #: a call can still be answered with an Error; set by :func:`tavrida.wire.decode`.
    headers: Optional[Dict[str, str]] = None


class IncorrectOutgoingMessage(TavridaError):
    message_template = "Incorrect outgoing message: %(reason)s"


class UnsendableAnswer(IncorrectOutgoingMessage):
    """A service's answer to a call could not be sent; its caller gets this Error instead.

    The answer was not JSON (``reason`` names the field and its type), its
    headers could not be written, or the broker refused it for its size.
    """

    message_template = "The answer of %(entry_point)s could not be sent: %(reason)s"


class NeedToBeController(TavridaError):
    message_template = "%(name)s must be a subclass of tavrida.service.ServiceController"


class PublisherEndpointNotFound(BaseAckableException):
    message_template = "No notification exchange registered for publisher %(service)s"


class ServiceIsNotRegister(BaseAckableException):
    message_template = "Service %(service)s is not registered"


class ServiceNotFound(BaseAckableException):
    message_template = "No local service %(service)s handles this message"


class SubscriptionHandlerNotFound(BaseAckableException):
    message_template = "No subscription handler for %(entry_point)s"


class UnableToDiscover(BaseAckableException):
    message_template = "Unable to discover the exchange of service %(service)s"


class UnknownService(BaseAckableException):
    message_template = "Unknown service %(service)s"


class UnsuitableFieldValue(BaseAckableException):
    message_template = "Header %(field)s has an unsuitable value %(value)r"


class WrongEntryPointFormat(BaseAckableException):
    message_template = "Wrong entry point format: %(value)r"


class WrongResponse(TavridaError):
    message_template = "Wrong response: %(reason)s"


class WrongHandlerParameters(BaseAckableException):
    """The payload does not match the handler's parameters."""

    message_template = "Handler %(handler)s of %(entry_point)s: %(reason)s"


class InvalidPayload(WrongHandlerParameters):
    """Payload values do not match the handler's annotations (see :mod:`tavrida.contracts`).

    ``problems`` lists each offending field: ``item_id: expected int, got str 'abc'``.
    """

    message_template = "Invalid payload for %(entry_point)s: %(reason)s"

    def __init__(self, message: str = "", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.problems: List[str] = list(kwargs.get("problems", ()))


class PublishFailed(TavridaError):
    """The broker did not take a message (nack, unroutable, connection lost).

    For a batch (``confirm_all``): ``failed`` maps the index of each failed
    message to its reason, ``envelopes`` holds those messages (to retry),
    and ``unencodable`` lists the indexes that can never be published as
    they are (headers too large or of a type the broker library cannot write).
    """

    message_template = "Publishing to %(exchange)s/%(routing_key)s failed: %(reason)s"

    def __init__(self, message: str = "", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.exchange: str = kwargs.get("exchange", "")
        self.routing_key: str = kwargs.get("routing_key", "")
        self.failed: Dict[int, str] = kwargs.get("failed", {})
        self.envelopes: List[Any] = kwargs.get("envelopes", [])
        self.unencodable: List[int] = kwargs.get("unencodable", [])
        #: Indexes of the messages no queue took (see :class:`Unroutable`).
        self.unroutable: List[int] = kwargs.get("unroutable", [])


class Unroutable(PublishFailed):
    """No queue took the message: nothing is bound to ``exchange`` for ``routing_key``.

    RabbitMQ returned it (it was published ``mandatory``), or the virtual
    transport (Redis, ``memory://``) found no binding. The message is not
    stored anywhere: it was not sent. ``exchange`` and ``routing_key`` name
    the (first) message that failed; for a batch, ``unroutable`` lists the
    indexes of every unroutable message.
    """

    message_template = (
        "No queue takes messages to exchange %(exchange)r with routing key "
        "%(routing_key)r: %(reason)s")


class ConnectionFailed(TavridaError):
    """The broker could not be reached (refused, unreachable, login refused, timed out).

    Raised by every entry point that touches the broker (``Server.run``,
    blocking calls, casts, publishes, declarations) once retries ran out,
    the operation's deadline passed, or the transport was stopped or
    closed meanwhile. ``safe_url`` is the broker URL with the password
    masked; ``cause`` the broker library's error, if any.
    """

    message_template = "Cannot reach the broker at %(safe_url)s: %(reason)s"

    def __init__(self, message: str = "", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.safe_url: str = kwargs.get("safe_url", "")
        self.cause: Any = kwargs.get("cause")


class PublishConnectionFailed(ConnectionFailed, PublishFailed):
    """A publish gave up because the broker could not be reached in time.

    Both a :class:`ConnectionFailed` and a :class:`PublishFailed` (with
    ``failed`` and ``envelopes`` saying which messages of a batch were not
    confirmed; the others were).
    """

    message_template = ConnectionFailed.message_template


class RemoteError(TavridaError):
    """The remote service answered a blocking call with an Error message.

    ``remote_class``, ``remote_name``, ``remote_message`` and ``code`` are
    the fields of the Error payload.
    """

    message_template = "%(remote_class)s: %(remote_message)s"

    def __init__(self, remote_class: str = "", remote_name: str = "",
                 remote_message: str = "", code: int = 1000, **kwargs: Any) -> None:
        self.remote_class = remote_class
        self.remote_name = remote_name
        self.remote_message = remote_message
        self.code = code
        super().__init__(remote_class=remote_class, remote_name=remote_name,
                         remote_message=remote_message, **kwargs)


class CallTimeout(TavridaError):
    """A blocking call got no answer in time."""

    message_template = (
        "No answer from %(destination)s within %(timeout)ss "
        "(correlation_id %(correlation_id)s)"
    )


def get_fqcn(obj: Any) -> str:
    """``module.ClassName`` of an object or class (fully qualified class name)."""
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def error_payload(exception: builtins.BaseException) -> Dict[str, Any]:
    """The Error payload for ``exception``: ``class``, ``name``, ``message``, ``code``.

    Never fails, so that a caller always gets its Error: an exception whose
    ``str()`` or ``code`` raises is described by its ``repr()`` or type.
    """
    try:
        code = getattr(exception, "code", defaults.ERROR_CODE)
    except Exception:  # noqa: BLE001 - a property that raises
        code = defaults.ERROR_CODE
    if not isinstance(code, int) or isinstance(code, bool):
        code = defaults.ERROR_CODE
    try:
        text = str(exception)
    except Exception:  # noqa: BLE001 - a __str__ that raises
        try:
            text = repr(exception)
        except Exception:  # noqa: BLE001
            text = f"<{type(exception).__name__} that cannot be shown>"
    if not isinstance(text, str):  # a str subclass is fine; anything else is not JSON
        text = type(exception).__name__
    return {"class": get_fqcn(exception), "name": type(exception).__name__,
            "message": str.__str__(text), "code": int(code)}
