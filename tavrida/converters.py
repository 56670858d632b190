"""Converters: the compiled checks of each kind of type (scalars, containers, unions...).

:func:`tavrida.schema.converter` picks and combines them for an annotation.
"""

from __future__ import annotations

import datetime
import decimal
import uuid
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from tavrida.invalid import Convert, Invalid, Problem

# -- converters ---------------------------------------------------------------

def _none(value: Any) -> Any:
    if value is None:
        return None
    raise Invalid.one("None", value)


def _int(value: Any) -> Any:
    if type(value) is int or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise Invalid.one("int", value)


def _float(value: Any) -> Any:
    if type(value) is float:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise Invalid.one("float", value)


def _str(value: Any) -> Any:
    if isinstance(value, str):
        return value
    raise Invalid.one("str", value)


def _bool(value: Any) -> Any:
    if value is True or value is False:
        return value
    raise Invalid.one("bool", value)


def _parsed(expected: str, kind: type, parse: Callable[[str], Any]) -> Convert:
    def convert(value: Any) -> Any:
        if isinstance(value, kind):
            return value
        if isinstance(value, str):
            try:
                return parse(value)
            except ValueError:
                pass
        raise Invalid.one(expected, value)
    return convert


def _iso_datetime(text: str) -> datetime.datetime:
    # Python before 3.11 reads no "Z" suffix; JSON writers often put one.
    return datetime.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)


def _decimal(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return value
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        try:
            number = decimal.Decimal(str(value))
        except decimal.InvalidOperation:
            number = decimal.Decimal("NaN")
        if number.is_finite():
            return number
    raise Invalid.one("Decimal (a number or its text)", value)


LEAVES: Dict[Any, Convert] = {
    int: _int, float: _float, str: _str, bool: _bool, type(None): _none,
    datetime.datetime: _parsed("datetime (ISO 8601 text)", datetime.datetime, _iso_datetime),
    datetime.date: _parsed("date (ISO 8601 text)", datetime.date, datetime.date.fromisoformat),
    datetime.time: _parsed("time (ISO 8601 text)", datetime.time, datetime.time.fromisoformat),
    uuid.UUID: _parsed("UUID (its text)", uuid.UUID, uuid.UUID),
    decimal.Decimal: _decimal,
}


def _each(entries: Iterable[Tuple[Any, Optional[Convert], Any]]) -> List[Any]:
    """Each ``(key, convert, element)`` converted; every problem raised at once, under its key."""
    out = []
    problems: List[Problem] = []
    for key, convert, element in entries:
        try:
            out.append(element if convert is None else convert(element))
        except Invalid as exc:
            problems.extend(exc.under(key))
    if problems:
        raise Invalid(problems)
    return out


def items(kind: type, name: str, item: Optional[Convert], make: Callable[[Any], Any]) -> Convert:
    def convert(value: Any) -> Any:
        if type(value) is not list and not isinstance(value, kind):
            raise Invalid.one(name, value)
        if item is None:
            return value if type(value) is kind else make(value)
        elements: Any = value  # isinstance(value, kind) narrowed it to object
        return make(_each((index, item, element) for index, element in enumerate(elements)))
    return convert


def fixed_tuple(name: str, items: List[Optional[Convert]]) -> Convert:
    def convert(value: Any) -> Any:
        if not isinstance(value, (list, tuple)) or len(value) != len(items):
            raise Invalid.one(name, value)
        return tuple(_each((index, item, element)
                           for index, (element, item) in enumerate(zip(value, items))))
    return convert


def mapping(name: str, item: Optional[Convert]) -> Convert:
    def convert(value: Any) -> Any:
        if not isinstance(value, dict):
            raise Invalid.one(name, value)
        if item is None:
            return value
        return dict(zip(value, _each((key, item, element) for key, element in value.items())))
    return convert


def union(name: str, members: List[Optional[Convert]], nullable: bool) -> Convert:
    if any(member is None for member in members):
        return lambda value: value  # one member takes anything
    checked = [member for member in members if member is not None]

    def convert(value: Any) -> Any:
        if value is None and nullable:
            return None
        problems: List[Problem] = []
        for member in checked:
            try:
                return member(value)
            except Invalid as exc:
                problems.extend(exc.problems)
        if len(checked) == 1:
            raise Invalid(problems)  # Optional[X]: what is wrong inside X
        raise Invalid.one(name, value)
    return convert


def literal(values: Tuple[Any, ...]) -> Convert:
    expected = "one of " + ", ".join(repr(v) for v in values)

    def convert(value: Any) -> Any:
        for allowed in values:
            if value == allowed and type(value) is type(allowed):
                return allowed
        raise Invalid.one(expected, value)
    return convert


def enum_of(cls: type) -> Convert:
    members: List[Any] = list(cls)  # type: ignore[call-overload]
    expected = f"{cls.__name__} (one of {', '.join(repr(m.value) for m in members)})"
    by_value = {(type(m.value), m.value): m for m in members}

    def convert(value: Any) -> Any:
        if isinstance(value, cls):
            return value
        try:
            return by_value[(type(value), value)]
        except (KeyError, TypeError):
            raise Invalid.one(expected, value) from None
    return convert
