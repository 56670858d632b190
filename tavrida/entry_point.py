"""Entry points: the ``service.method`` addresses messages travel between."""

from __future__ import annotations

import functools

from tavrida import exceptions


class EntryPoint:
    """An address: a service name and a method name (``service.method``)."""

    __slots__ = ("service", "method")

    def __init__(self, service_name: str, method_name: str) -> None:
        self.service = service_name
        self.method = method_name

    def to_routing_key(self) -> str:
        """The routing key of messages sent to this entry point."""
        return f"{self.service}.{self.method}"

    def copy(self) -> "EntryPoint":
        return type(self)(self.service, self.method)

    def __str__(self) -> str:
        return self.to_routing_key()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, EntryPoint):
            return (self.service, self.method) == (other.service, other.method)
        if isinstance(other, str):
            return str(self) == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.service, self.method))

    def __bool__(self) -> bool:
        return bool(self.service)


class Source(EntryPoint):
    """Where a message comes from."""

    __slots__ = ()


class Destination(EntryPoint):
    """Where a message goes."""

    __slots__ = ()


class ServiceEntryPoint(EntryPoint):
    """A whole service (``reply_to`` of a call, destination of a response)."""

    __slots__ = ()

    def __init__(self, service_name: str, method_name: str = "") -> None:
        super().__init__(service_name, "")

    def to_routing_key(self) -> str:
        return self.service

    def copy(self) -> "ServiceEntryPoint":
        return ServiceEntryPoint(self.service)


class NullEntryPoint(EntryPoint):
    """No address (an empty header)."""

    __slots__ = ()

    def __init__(self, service_name: str = "", method_name: str = "") -> None:
        super().__init__("", "")

    def to_routing_key(self) -> str:
        return ""

    def copy(self) -> "NullEntryPoint":
        return NullEntryPoint()


class EntryPointFactory:
    """Parses header values into entry points."""

    def create(self, value: object, source: bool = False,
               destination: bool = False) -> EntryPoint:
        """Parse ``value``: ``""`` is null, ``svc`` a service, ``svc.method`` a full one.

        Raises :class:`~tavrida.exceptions.WrongEntryPointFormat` on anything
        else (not a string, empty parts, more than one dot).
        """
        if isinstance(value, EntryPoint):
            return value.copy()
        if not isinstance(value, str):
            raise exceptions.WrongEntryPointFormat(value=value)
        if not value:
            return NullEntryPoint()
        service, dot, method = value.partition(".")
        if not service or (dot and not method) or "." in method:
            raise exceptions.WrongEntryPointFormat(value=value)
        if not dot:
            return ServiceEntryPoint(service)
        if source:
            return Source(service, method)
        if destination:
            return Destination(service, method)
        return EntryPoint(service, method)


def parse(value: object, source: bool = False, destination: bool = False) -> EntryPoint:
    """Shortcut for :meth:`EntryPointFactory.create`, cached for header strings.

    Entry points are values: the cached instances are shared, never mutate one.
    """
    if isinstance(value, str):
        return parse_text(value, source, destination)
    return _FACTORY.create(value, source=source, destination=destination)


_FACTORY = EntryPointFactory()


@functools.lru_cache(maxsize=4096)
def parse_text(value: str, source: bool = False, destination: bool = False) -> EntryPoint:
    """:func:`parse` of a header string, cached (the per-message path calls it directly).

    A service sees the same few addresses over and over: each is parsed once.
    The instances are shared, never mutate one.
    """
    return _FACTORY.create(value, source=source, destination=destination)
