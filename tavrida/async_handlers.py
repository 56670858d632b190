"""The ``async def`` handlers of a server: their tasks, and their awaitable proxies.

A service with ``async def`` handlers or middlewares (see
:mod:`tavrida.coroutines`) gets, when its server starts, the server's
:class:`~tavrida.coroutines.HandlerTasks` and proxies that make awaitable
calls (:class:`tavrida.aio.server.AwaitableProxies`: ``await
proxy.svc.m(x=1).call(timeout=2)``), on a blocking server as on an
:class:`tavrida.aio.server.Server`. When the server closes, the tasks of
the handlers a stop gave up on are cancelled: their messages went back to
the broker with the connection, and nothing of theirs runs on after the
server stopped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, List, Optional

from tavrida import config as config_mod
from tavrida.service import ServiceController

if TYPE_CHECKING:
    from tavrida.aio.server import AwaitableProxies
    from tavrida.coroutines import HandlerTasks


class AsyncHandlers:
    """The ``async def`` handlers of one server's services (none: nothing is made)."""

    def __init__(self, config: config_mod.ConnectionConfig) -> None:
        self._config = config
        self._tasks: Optional[HandlerTasks] = None
        self._proxies: List[AwaitableProxies] = []

    def adopt(self, controllers: Iterable[ServiceController]) -> None:
        """Give the services that run coroutines their tasks and awaitable proxies (at start)."""
        for controller in controllers:
            if not controller.runs_coroutines():
                continue
            # Imported here: asyncio loads only for such a service (see tavrida.service).
            from tavrida.aio.server import AwaitableProxies
            from tavrida.coroutines import HandlerTasks

            if self._tasks is None:
                self._tasks = HandlerTasks()
            self._tasks.reopen()
            controller.tasks = self._tasks
            proxies = AwaitableProxies(self._config, controller)
            controller.async_proxy = proxies
            self._proxies.append(proxies)

    @property
    def adopted(self) -> bool:
        """True when a service of the server runs coroutines."""
        return bool(self._proxies)

    def give_up(self) -> None:
        """Cancel the handler tasks running (the threads waiting for them get StopNow)."""
        if self._tasks is not None:
            self._tasks.abandon()

    def close(self) -> None:
        """Cancel the handler tasks still running (after the connection closed); close proxies."""
        self.give_up()
        proxies, self._proxies = self._proxies, []
        for made in proxies:
            made.close()
