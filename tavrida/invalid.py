"""Invalid values: where a value does not match its type, and how errors show it."""

from __future__ import annotations

import reprlib
import typing
from typing import Any, Callable, List, Tuple, Union

#: A compiled conversion: the converted value, or :class:`Invalid`.
Convert = Callable[[Any], Any]
Key = Union[str, int]

_MISSING = object()
_repr = reprlib.Repr()
_repr.maxstring = 40
_repr.maxother = 40


class Problem:
    """One offending value: where (``order.items[2].qty``), what was expected, what came."""

    __slots__ = ("path", "expected", "got", "reason")

    def __init__(self, path: Tuple[Key, ...], expected: str, got: Any = _MISSING,
                 reason: str = "") -> None:
        self.path = path
        self.expected = expected
        self.got = got
        self.reason = reason

    def under(self, key: Key) -> Problem:
        return Problem((key,) + self.path, self.expected, self.got, self.reason)

    @property
    def where(self) -> str:
        text = ""
        for key in self.path:
            text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else key)
        return text

    def __str__(self) -> str:
        if self.reason:
            what = self.reason
        elif self.got is _MISSING:
            what = f"missing (expected {self.expected})"
        else:
            what = f"expected {self.expected}, got {describe(self.got)}"
        return f"{self.where}: {what}" if self.path else what


class Invalid(Exception):
    """Values that do not match their types; ``problems`` names each."""

    def __init__(self, problems: List[Problem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems

    @classmethod
    def one(cls, expected: str, got: Any) -> Invalid:
        return cls([Problem((), expected, got)])

    def under(self, key: Key) -> List[Problem]:
        """The problems, located under ``key`` of the enclosing value."""
        return [problem.under(key) for problem in self.problems]


def describe(value: Any) -> str:
    """``str 'abc'``, ``int 5``, ``None``: a value as an error message shows it."""
    if value is None:
        return "None"
    return f"{type(value).__name__} {_repr.repr(value)}"


def type_name(tp: Any) -> str:
    """A type as error messages and schemas name it (``list[int]``, ``Optional[Order]``)."""
    if tp is type(None) or tp is None:
        return "None"
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return repr(tp).replace("typing.", "").replace("datetime.", "").replace("uuid.", "")
