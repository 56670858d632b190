"""Declaring services and handlers, and finding the handler of a message.

The method decorators only record what a method handles; ``rpc_service``
checks the class, inspects each handler's signature once (compiling the
checks of its annotated parameters, see :mod:`tavrida.contracts`), and gives
the class a :class:`Dispatcher` that maps entry points to handlers. Nothing
is inspected per message.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, TypeVar

from tavrida import contracts, entry_point, events, exceptions, messages, schema

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound=type)

#: Handler kinds, named for the message type they take.
SUBSCRIPTION = messages.NOTIFICATION
_ENTRIES_ATTR = "_tavrida_entries"
_PUBLISHES_ATTR = "_tavrida_publishes"


#: Names the proxy parameter (the second after ``self``) may have.
PROXY_PARAMETER_NAMES = ("proxy", "_proxy", "_")
_SIGNATURE = "a handler takes (self, message, proxy, ...)"


class Handler:
    """One handler method and the payload keys it takes (computed once).

    The signature is checked here, when the class is declared: ``self``,
    the message, the proxy (a parameter named ``proxy``, so that a payload
    key is never bound to it by mistake), then the payload keys it takes by
    name. An error handler takes exactly ``(self, error, proxy)``. The
    payload parameters' annotations make its :attr:`contract`; ``localns``
    names what the class's scope defines (to resolve them), ``publishes``
    the events it declares (see :mod:`tavrida.events`).
    """

    __slots__ = ("method_name", "message_type", "entry_point", "params", "required", "var_kw",
                 "func", "payload_params", "localns", "contract", "publishes", "is_async")

    def __init__(self, method_name: str, message_type: str, ep: entry_point.EntryPoint,
                 func: Callable[..., Any],
                 localns: Optional[Dict[str, Any]] = None) -> None:
        self.method_name = method_name
        self.message_type = message_type
        self.entry_point = ep
        self.func = func
        #: An ``async def`` handler: its coroutine runs on an event loop
        #: (:mod:`tavrida.coroutines`), with an awaitable proxy in an aio server.
        self.is_async = inspect.iscoroutinefunction(func)
        parameters = list(inspect.signature(func).parameters.values())[1:]  # drop self
        named = [p for p in parameters[2:]
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        self.params = frozenset(p.name for p in named)
        self.required = frozenset(p.name for p in named if p.default is p.empty)
        self.var_kw = any(p.kind == p.VAR_KEYWORD for p in parameters)
        reason = self._signature_problem(parameters)
        if reason:
            raise exceptions.WrongHandlerParameters(
                handler=getattr(func, "__qualname__", method_name), entry_point=ep,
                reason=reason)
        #: The payload parameters, in order (what AsyncAPI describes).
        self.payload_params = named
        self.localns = localns
        #: Checks and converts annotated payload values; None: nothing to check.
        self.contract = None if message_type == messages.ERROR else contracts.Contract.of(
            f"handler {method_name} of {ep}", func, named, localns)
        #: Event name -> payload type of the events it declares it publishes.
        self.publishes: Dict[str, Any] = dict(getattr(func, _PUBLISHES_ATTR, {}))

    def _signature_problem(self, parameters: List[inspect.Parameter]) -> str:
        """Why a handler's parameters (``self`` dropped) are wrong, or ""."""
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        firsts = parameters[:2]
        if len(firsts) < 2 or any(p.kind not in positional for p in firsts):
            return _SIGNATURE
        proxy = firsts[1].name
        if proxy not in PROXY_PARAMETER_NAMES:
            return (f"its second parameter {proxy!r} takes the proxy; name it 'proxy' "
                    f"({_SIGNATURE}, payload keys after the proxy)")
        if self.message_type == messages.ERROR and len(parameters) != 2:
            return "an error handler takes exactly (self, error, proxy)"
        by_position = [p.name for p in parameters[2:] if p.kind == p.POSITIONAL_ONLY]
        if by_position:
            return (f"payload parameter(s) {', '.join(by_position)} are positional-only; "
                    f"payload keys are passed by name")
        return ""

    def arguments(self, payload: Mapping[str, Any]) -> Dict[str, Any]:
        """Keyword arguments for a payload: extra keys dropped, missing ones an error.

        Annotated values are converted (see :mod:`tavrida.contracts`); one
        that does not match raises :class:`~tavrida.exceptions.InvalidPayload`
        naming each offending field.
        """
        if self.message_type == messages.ERROR:
            return {}
        keys = payload.keys()
        if not keys >= self.required:  # operators, not method calls: this runs per message
            missing = self.required.difference(payload)
            raise exceptions.WrongHandlerParameters(
                handler=self.method_name, entry_point=self.entry_point,
                reason=f"payload lacks required parameter(s) {', '.join(sorted(missing))}")
        if self.var_kw or keys <= self.params:
            kwargs = dict(payload)  # nothing to drop (the usual case)
        else:
            kwargs = {k: v for k, v in payload.items() if k in self.params}
        if self.contract is None:
            return kwargs
        try:
            return self.contract.convert(kwargs)
        except schema.Invalid as exc:
            raise exceptions.InvalidPayload(
                handler=self.method_name, entry_point=self.entry_point, reason=str(exc),
                problems=[str(problem) for problem in exc.problems]) from None


class Dispatcher:
    """Maps (message type, entry point) to a handler of one service class."""

    def __init__(self) -> None:
        self.handlers: Dict[Tuple[str, entry_point.EntryPoint], Handler] = {}
        # The same handlers keyed by plain strings: looking one up hashes and compares
        # no EntryPoint (Python-level __hash__/__eq__) for every message.
        self._index: Dict[Tuple[str, str, str], Handler] = {}

    def register(self, ep: entry_point.EntryPoint, message_type: str,
                 handler_method_name: str, func: Optional[Callable[..., Any]] = None,
                 service_name: str = "", localns: Optional[Dict[str, Any]] = None) -> Handler:
        """Register a handler; raises DuplicatedEntryPointRegistration.

        ``localns``: the names of the scope the service class was declared in
        (to resolve its annotations).
        """
        key = (message_type, ep)
        if key in self.handlers:
            raise exceptions.DuplicatedEntryPointRegistration(
                entry_point=ep, message_type=message_type, service=service_name,
                first=self.handlers[key].method_name, second=handler_method_name)
        handler = Handler(handler_method_name, message_type, ep,
                          func or (lambda self, message, proxy: None), localns)
        self.handlers[key] = handler
        self._index[(message_type, ep.service, ep.method)] = handler
        return handler

    def find(self, ep: entry_point.EntryPoint, message_type: str) -> Optional[Handler]:
        """The handler for a message type and entry point, or None."""
        return self._index.get((message_type, ep.service, ep.method))

    def get_handler(self, ep: entry_point.EntryPoint, message_type: str) -> str:
        """Name of the handler method; raises HandlerNotFound."""
        handler = self.find(ep, message_type)
        if handler is None:
            raise exceptions.HandlerNotFound(message_type=message_type, entry_point=ep)
        return handler.method_name

    def _entries(self, message_type: str) -> Iterator[entry_point.EntryPoint]:
        return (ep for (kind, ep) in self.handlers if kind == message_type)

    def get_request_entry_services(self) -> Iterator[entry_point.EntryPoint]:
        """Entry points this service handles requests for."""
        return self._entries(messages.REQUEST)

    def get_publishers(self) -> Iterator[entry_point.EntryPoint]:
        """Remote entry points this service subscribes to."""
        return self._entries(SUBSCRIPTION)

    def get_subscription_handlers(self) -> Iterator[Tuple[entry_point.EntryPoint, Handler]]:
        """Remote entry points this service subscribes to, each with its handler."""
        return ((ep, handler) for (kind, ep), handler in self.handlers.items()
                if kind == SUBSCRIPTION)

    @property
    def subscriptions(self) -> List[entry_point.EntryPoint]:
        return list(self.get_publishers())

    def handles_answers(self) -> bool:
        """True when the service takes responses or errors (it makes calls)."""
        return any(kind in (messages.RESPONSE, messages.ERROR) for kind, _ in self.handlers)


def _mark(message_type: str, service: str, method: str,
          publishes: Optional[events.Publishes] = None) -> Callable[[F], F]:
    ep = entry_point.EntryPoint(service, method)
    declared = events.declared(publishes)

    def decorator(func: F) -> F:
        entries = getattr(func, _ENTRIES_ATTR, None)
        if entries is None:
            entries = []
            setattr(func, _ENTRIES_ATTR, entries)
        if (message_type, ep) in entries:
            raise exceptions.DuplicatedMethodRegistration(method=func.__qualname__, service=ep)
        entries.append((message_type, ep))
        if declared:
            setattr(func, _PUBLISHES_ATTR, {**getattr(func, _PUBLISHES_ATTR, {}), **declared})
        return func

    if not service or not method or "." in service or "." in method:
        raise exceptions.WrongEntryPointFormat(value=f"{service}.{method}")
    return decorator


def rpc_method(service: str, method: str, *,
               publishes: Optional[events.Publishes] = None) -> Callable[[F], F]:
    """Mark a method as the handler of requests to ``service.method`` (a local entry point).

    ``publishes``: the named events it publishes (names, or names to payload
    types), for the AsyncAPI document; see :mod:`tavrida.events`.
    """
    return _mark(messages.REQUEST, service, method, publishes)


def rpc_response_method(service: str, method: str, *,
                        publishes: Optional[events.Publishes] = None) -> Callable[[F], F]:
    """Mark a method as the handler of responses from remote ``service.method``."""
    return _mark(messages.RESPONSE, service, method, publishes)


def rpc_error_method(service: str, method: str, *,
                     publishes: Optional[events.Publishes] = None) -> Callable[[F], F]:
    """Mark a method as the handler of errors from remote ``service.method``.

    The method takes exactly ``(self, error, proxy)``.
    """
    return _mark(messages.ERROR, service, method, publishes)


def subscription_method(service: str, method: str, *,
                        publishes: Optional[events.Publishes] = None) -> Callable[[F], F]:
    """Mark a method as the handler of notifications published by ``service.method``.

    ``method`` is the publishing handler's name or an event's name (see
    :mod:`tavrida.events`).
    """
    return _mark(SUBSCRIPTION, service, method, publishes)


def rpc_service(service_name: str) -> Callable[[C], C]:
    """Declare a :class:`~tavrida.service.ServiceController` subclass as service ``service_name``.

    Raises NeedToBeController for other classes, DuplicatedEntryPointRegistration
    when two methods handle the same entry point, and WrongHandlerParameters
    for a bad handler signature or a request handler of another service.
    """
    if not isinstance(service_name, str) or not service_name or "." in service_name:
        raise exceptions.WrongEntryPointFormat(value=service_name)

    def decorator(cls: C) -> C:
        from tavrida import service

        # The names of the scope declaring the class (a function's locals, for a class
        # declared in one): its handlers' annotations may name them.
        frame = sys._getframe(1)
        localns = dict(vars(cls)) if frame.f_locals is frame.f_globals else \
            {**frame.f_locals, **vars(cls)}
        if not (isinstance(cls, type) and issubclass(cls, service.ServiceController)):
            raise exceptions.NeedToBeController(name=getattr(cls, "__qualname__", repr(cls)))
        dispatcher = Dispatcher()
        seen = set()
        for klass in cls.__mro__:
            for name, func in vars(klass).items():
                if name in seen:
                    continue
                seen.add(name)
                entries = getattr(func, _ENTRIES_ATTR, ())
                if entries and hasattr(service.ServiceController, name):
                    raise exceptions.WrongHandlerParameters(
                        handler=name, entry_point=entries[0][1],
                        reason=f"{name} is a ServiceController method; name the handler "
                               f"otherwise")
                for message_type, ep in entries:
                    if message_type == messages.REQUEST and ep.service != service_name:
                        raise exceptions.WrongHandlerParameters(
                            handler=name, entry_point=ep,
                            reason=f"service {service_name} can only handle requests "
                                   f"to {service_name}.<method>")
                    dispatcher.register(ep, message_type, name, func, service_name, localns)
        cls._tavrida_service_name = service_name
        cls._dispatcher = dispatcher
        return cls

    return decorator
