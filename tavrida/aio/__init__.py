"""asyncio support: an awaitable client and a server for ``async def`` handlers.

* ``RPCClient`` (:mod:`tavrida.aio.client`) -- ``await cli.svc.method(**payload).call(timeout=5)``;
* ``Server`` (:mod:`tavrida.aio.server`) -- ``await srv.serve()``: sync and async handlers;
* ``AsyncProxy`` (:mod:`tavrida.aio.proxies`) -- what an ``async def`` handler's proxy is.

Same wire and transports as the blocking API (see :doc:`/asyncio`).
"""

from tavrida.aio.client import RPCClient
from tavrida.aio.proxies import AsyncProxy
from tavrida.aio.server import Server

__all__ = ["AsyncProxy", "RPCClient", "Server"]
