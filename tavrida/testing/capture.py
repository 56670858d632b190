"""What a test saw: the messages sent, and the handler failures nobody was told of."""

from __future__ import annotations

from typing import List, Optional, Tuple, Type, Union

from tavrida import messages

ExpectedErrors = Union[Type[BaseException], Tuple[Type[BaseException], ...]]


class Capture:
    """What one service or client sent, in order, split by kind."""

    def __init__(self) -> None:
        self.all: List[messages.Message] = []

    def __call__(self, message: messages.Message) -> None:
        self.all.append(message)

    def _of(self, message_type: str) -> List[messages.Message]:
        return [m for m in self.all if m.message_type == message_type]

    @property
    def requests(self) -> List[messages.Message]:
        return self._of(messages.REQUEST)

    @property
    def responses(self) -> List[messages.Message]:
        return self._of(messages.RESPONSE)

    @property
    def errors(self) -> List[messages.Message]:
        return self._of(messages.ERROR)

    @property
    def notifications(self) -> List[messages.Message]:
        return self._of(messages.NOTIFICATION)

    def clear(self) -> None:
        self.all.clear()


class HandlerFailed(AssertionError):
    """A handler raised and no Error answer told a caller; the original is the cause."""


class Failure:
    """One handler (or incoming middleware) that raised, as a cluster saw it."""

    __slots__ = ("answered", "exception", "message")

    def __init__(self, message: Optional[messages.Message], exception: BaseException) -> None:
        #: The message the handler got.
        self.message = message
        #: What it raised.
        self.exception = exception
        #: True once an Error answer for it was sent to the caller.
        self.answered = False

    def __repr__(self) -> str:
        state = "answered with an Error" if self.answered else "unanswered"
        return f"<Failure {self.exception!r} on {self.message!r}: {state}>"


def is_expected(exc: BaseException, expect_errors: ExpectedErrors) -> bool:
    return bool(expect_errors) and isinstance(exc, expect_errors)
