"""Middlewares: code that runs around every handler of a service.

Subclass :class:`Middleware`, implement :meth:`~Middleware.process`, and add
an instance with ``add_incoming_middleware`` or ``add_outgoing_middleware``
in the controller's ``__init__``. They run in the order they were added.

An incoming middleware gets the incoming message and returns it (or a
replacement of the same kind) to go on, or a Response or Error to stop
there: that answer goes back to the caller when the request was a call.
An outgoing middleware gets the Response or Error a handler produced and
must return one of the same class. :mod:`tavrida.idempotency` has a
ready-made one that lets handlers see each message once.
"""

from __future__ import annotations

from typing import Any


class AbstractController:
    """Something that processes an object in a chain of steps."""

    def process(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


class AbstractMessageController(AbstractController):
    """A step in the chain of actions on a message."""

    def process(self, message: Any) -> Any:
        raise NotImplementedError


class Middleware(AbstractMessageController):
    """Base middleware: override :meth:`process`."""

    def process(self, message: Any) -> Any:
        """Return the message to go on (incoming), or the answer (outgoing)."""
        return message

    def done(self, message: Any, answer: Any) -> None:
        """Called on incoming middlewares once ``message`` was handled and any
        ``answer`` (Response or Error) sent, just before the message is acked."""
