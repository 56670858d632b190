"""Test helpers: run services in-process on the in-memory transport.

::

    from tavrida import testing

    with testing.MemoryCluster() as cluster:
        cluster.add_server([HelloController, WorldController])
        cli = cluster.client(disc, source="client_app")
        cli.test_hello.hello(param=1).call()
        cluster.deliver()                    # until idle; raises on unanswered failures
        assert cluster.sent_by("test_world").responses[0].payload == {...}

        answer = cli.test_hello.hello(param=2).call(timeout=5)   # blocking calls work too

    result = testing.call_handler(HelloController, "hello", param=1)
    assert result.response == {...} and result.sent.requests

From an async test (``async def`` handlers, :mod:`tavrida.aio`):
``cli = cluster.aio_client(disc, source="client_app")`` then
``await cli.test_hello.hello(param=1).call(timeout=5)``, ``await cluster.adeliver()``
and ``await testing.acall_handler(HelloController, "hello", param=1)``;
:func:`call_handler` runs an ``async def`` handler too.

Every cluster has its own in-memory broker, so tests do not see each
other's messages. Nothing runs in the background: :meth:`MemoryCluster.deliver`
(and a blocking call of a cluster's client) hands messages to the servers in
the calling thread until no queue has work, so a test sees one order of events.

One import for a test (``from tavrida import testing``): :class:`MemoryCluster`
(a whole deployment in-process, :mod:`tavrida.testing.cluster`) and
:func:`call_handler` (one handler, no broker, :mod:`tavrida.testing.handlers`)
share their record of what was sent (:class:`Capture`, :mod:`tavrida.testing.capture`).
"""

from tavrida.testing.capture import Capture, ExpectedErrors, Failure, HandlerFailed
from tavrida.testing.cluster import MemoryCluster
from tavrida.testing.handlers import HandlerResult, RecordingSender, acall_handler, call_handler

__all__ = ["Capture", "ExpectedErrors", "Failure", "HandlerFailed", "HandlerResult",
           "MemoryCluster", "RecordingSender", "acall_handler", "call_handler"]
