"""Service controllers: the classes users write handlers on.

A controller runs a message through its incoming middlewares, calls the
handler, and turns what the handler returned into the answer to send:
a :class:`~tavrida.messages.Response`, an :class:`~tavrida.messages.Error`
or nothing. Outgoing middlewares see that answer last.
"""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any, Callable, ClassVar, List, Optional, TypeVar, Union

from tavrida import discovery as discovery_mod
from tavrida import exceptions, messages, schema
from tavrida.dispatcher import Dispatcher, Handler
from tavrida.middleware import Middleware
from tavrida.proxies import RPCProxy

LOG = logging.getLogger(__name__)

#: What a controller answers a call with.
Answer = Union[messages.Response, messages.Error]
#: An answer of one kind: outgoing middlewares keep it.
AnswerT = TypeVar("AnswerT", bound=Answer)

if TYPE_CHECKING:
    import asyncio

    from tavrida.coroutines import HandlerTasks


def _resolved(value: Any, loop: Optional[asyncio.AbstractEventLoop],
              tasks: Optional[HandlerTasks]) -> Any:
    """``value``, awaited on ``loop`` when an ``async def`` handler or middleware gave it."""
    if not inspect.isawaitable(value):
        return value
    # asyncio loads with the first async handler: 1.3 MiB of bench scenario 5's peak RSS.
    from tavrida import coroutines

    return coroutines.resolve(value, loop, tasks)


class ServiceController:
    """Base class of services; declare one with :func:`tavrida.dispatcher.rpc_service`.

    Instantiated by the server with its ``postprocessor`` (the sender that
    publishes for this service). Override ``__init__`` to add middlewares,
    calling ``super().__init__(postprocessor)`` first.
    """

    _tavrida_service_name: ClassVar[str] = ""
    _dispatcher: ClassVar[Dispatcher] = Dispatcher()
    _discovery: ClassVar[Optional[discovery_mod.AbstractDiscovery]] = None

    def __init__(self, postprocessor: Any) -> None:
        self.postprocessor = postprocessor
        self.incoming_middlewares: List[Middleware] = []
        self.outgoing_middlewares: List[Middleware] = []
        #: The event loop ``async def`` handlers and middlewares run on (None: the
        #: process's, see :mod:`tavrida.coroutines`); :class:`tavrida.aio.server.Server` sets it.
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        #: What an ``async def`` handler gets as its proxy instead of the blocking one:
        #: awaitable calls (set by the servers); None: the blocking one.
        self.async_proxy: Optional[Callable[[RPCProxy], Any]] = None
        #: The server's running handler tasks (cancelled when its stop gives up on them).
        self.tasks: Optional[HandlerTasks] = None

    @classmethod
    def service_name(cls) -> str:
        """The name given to :func:`~tavrida.dispatcher.rpc_service`."""
        return cls._tavrida_service_name

    @classmethod
    def set_discovery(cls, discovery: discovery_mod.AbstractDiscovery) -> None:
        """Bind the discovery this service resolves exchanges with (before the server starts)."""
        if not isinstance(discovery, discovery_mod.AbstractDiscovery):
            raise exceptions.IncorrectAMQPConfig(
                reason=f"{cls.__qualname__}.set_discovery needs an AbstractDiscovery, "
                       f"got {type(discovery).__name__}")
        cls._discovery = discovery

    @classmethod
    def get_discovery(cls) -> discovery_mod.AbstractDiscovery:
        """This service's discovery; an empty LocalDiscovery when none was set."""
        discovery: Optional[discovery_mod.AbstractDiscovery] = cls.__dict__.get("_discovery")
        if discovery is None:
            discovery = cls._discovery = discovery_mod.LocalDiscovery()
        return discovery

    @classmethod
    def get_dispatcher(cls) -> Dispatcher:
        return cls._dispatcher

    def add_incoming_middleware(self, middleware: Middleware) -> None:
        """Append a middleware that sees incoming messages before the handler."""
        self.incoming_middlewares.append(middleware)

    def add_outgoing_middleware(self, middleware: Middleware) -> None:
        """Append a middleware that sees the Response or Error a handler produced."""
        self.outgoing_middlewares.append(middleware)

    def runs_coroutines(self) -> bool:
        """True when a handler or middleware of this service is ``async def``."""
        if any(handler.is_async for handler in self.get_dispatcher().handlers.values()):
            return True
        return any(inspect.iscoroutinefunction(getattr(middleware, name, None))
                   for middleware in (*self.incoming_middlewares, *self.outgoing_middlewares)
                   for name in ("process", "done"))

    def send_heartbeat(self) -> None:
        """Keep the broker connection alive from a long-running handler."""
        self.postprocessor.heartbeat()

    def process(self, method: Union[Handler, str], message: messages.Message,
                proxy: RPCProxy) -> Optional[Answer]:
        """Run middlewares and the handler; return the answer (Response, Error) or None.

        ``method`` is a :class:`~tavrida.dispatcher.Handler` or a method name.
        An exception in a middleware or the handler propagates; the server
        turns it into an Error for calls.
        """
        for middleware in self.incoming_middlewares:
            result = _resolved(middleware.process(message), self.loop, self.tasks)
            if isinstance(result, (messages.Response, messages.Error)):
                return result
            if not isinstance(result, type(message)):
                raise exceptions.WrongResponse(
                    reason=f"incoming middleware {type(middleware).__name__} returned "
                           f"{type(result).__name__}; expected {type(message).__name__}, "
                           f"Response or Error")
            message = result
        handler = method if isinstance(method, Handler) else self._handler_named(method, message)
        function = getattr(self, handler.method_name)
        arguments = handler.arguments(message.payload)
        if handler.is_async:
            given = proxy if self.async_proxy is None else self.async_proxy(proxy)
            result = _resolved(function(message, given, **arguments), self.loop, self.tasks)
        else:
            result = function(message, proxy, **arguments)
        return self.make_answer(message, result)

    def _handler_named(self, name: str, message: messages.Message) -> Handler:
        for handler in self.get_dispatcher().handlers.values():
            if handler.method_name == name and handler.message_type == message.message_type:
                return handler
        raise exceptions.HandlerNotFound(message_type=message.message_type, entry_point=name)

    def make_answer(self, message: messages.Message, result: Any) -> Optional[Answer]:
        """Turn a handler's return value into the answer to send (or None)."""
        if not isinstance(message, messages.IncomingRequestCall):
            return None
        if result is None:
            if message.transferred:
                return None  # forwarded with transfer(): the final service answers
            result = {}
        answer: Answer
        if isinstance(result, dict):
            answer = messages.Response.create_by_request(message, result)
        elif isinstance(result, (messages.Response, messages.Error)):
            answer = result
        else:
            payload = schema.record_payload(result)  # a dataclass, a pydantic model
            if payload is None:
                raise exceptions.WrongResponse(
                    reason=f"handler returned {type(result).__name__}; expected None, a dict, "
                           f"a dataclass, a pydantic model, a Response or an Error")
            answer = messages.Response.create_by_request(message, payload)
        return self.run_outgoing(answer)

    def message_done(self, message: messages.Message, answer: Optional[Answer]) -> None:
        """Tell the incoming middlewares that ``message`` was handled (before its ack)."""
        for middleware in self.incoming_middlewares:
            done: Any = middleware.done  # (an ``async def done`` returns a coroutine)
            _resolved(done(message, answer), self.loop, self.tasks)

    def run_outgoing(self, answer: AnswerT) -> AnswerT:
        """Pass an answer through the outgoing middlewares; each must keep its kind."""
        for middleware in self.outgoing_middlewares:
            result = _resolved(middleware.process(answer), self.loop, self.tasks)
            if type(result) is not type(answer):
                raise exceptions.WrongResponse(
                    reason=f"outgoing middleware {type(middleware).__name__} returned "
                           f"{type(result).__name__}; expected {type(answer).__name__}")
            answer = result
        return answer
