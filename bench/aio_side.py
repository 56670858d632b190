"""Scenario ``aio``'s three sides: asyncio calls with many in flight from one client.

Each side runs its service in one spawned process and its client in
another (see :class:`bench.common.Child`), on RabbitMQ:

* ``tavrida``: :class:`tavrida.aio.Server` with an ``async def`` echo,
  :class:`tavrida.aio.RPCClient` calling it;
* ``aio-pika``: the RPC pattern of aio-pika's own example (a correlation id
  per call, an exclusive reply queue the client consumes, the service
  answering through the default exchange to ``reply_to``), both ends in
  aio-pika;
* ``faststream``: a ``RabbitBroker`` subscriber answering, ``await
  broker.request(...)`` calling (FastStream answers through RabbitMQ's
  direct reply-to).

The client makes ``warmup`` sequential calls, then ``n`` calls
``echo(value=i)`` with ``concurrency`` of them in flight at all times
(``concurrency`` coroutines, each calling in turn), and reports every
call's latency, the elapsed time and its process CPU. Messages are
persistent on every side; publisher confirms as the run says (FastStream:
its default, on).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any, Awaitable, Callable, Dict, List

from bench.common import CLIENT, BenchError, Link, Names, Setup, now

#: The asyncio service's name (requests: ``bench_aio.echo``).
AIO_SERVICE = "bench_aio"
#: Seconds one call may take before the run fails.
CALL_TIMEOUT = 30.0
#: The slowest side still measured (calls/s): a client slower than this fails the run.
MIN_RATE = 40.0
#: The sides, in the order a round runs them (alternated by the runner).
AIO_SIDES = ("tavrida", "aio-pika", "faststream")


async def concurrent_calls(one: Callable[[int], Awaitable[Any]], n: int, concurrency: int,
                           warmup: int) -> Dict[str, Any]:
    """``warmup`` sequential, then ``n`` calls ``one(i)`` with ``concurrency`` in flight.

    ``one(i)`` must return ``i`` (the echoed value) and has a deadline of
    its own (``CALL_TIMEOUT``); the parent bounds the whole (:func:`deadline`).
    """
    for i in range(warmup):
        if await one(i) != i:
            raise BenchError(f"warm-up call {i} answered wrongly")
    latencies: List[float] = []
    indexes = iter(range(n))  # shared: each coroutine takes the next call when one ends

    async def caller() -> None:
        for i in indexes:
            began = now()
            answer = await one(i)
            latencies.append(now() - began)
            if answer != i:
                raise BenchError(f"call {i} got {answer!r}")

    cpu = time.process_time()
    start = now()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed = now() - start
    cpu = time.process_time() - cpu
    return {"latencies": latencies, "elapsed": elapsed, "cpu": cpu}


def deadline(setup: Setup, n: int) -> float:
    """Longest wait (seconds) for a client's ``n`` calls: ``MIN_RATE`` calls/s at least."""
    return setup.timeout + n / MIN_RATE


async def _until_stopped(link: Link) -> None:
    await asyncio.get_running_loop().run_in_executor(None, link.stop.wait)


# --- tavrida.aio ---------------------------------------------------------------------------------

def _tavrida_parts(setup: Setup, names: Names) -> Any:
    from bench.tavrida_side import make_config, make_discovery

    disc = make_discovery(names)
    disc.register_remote_service(AIO_SERVICE, names.exchange)
    return make_config(setup), disc


def _tavrida_service() -> type:
    from tavrida import dispatcher, service

    @dispatcher.rpc_service(AIO_SERVICE)
    class AioBenchService(service.ServiceController):
        """``echo`` answers the value back from an ``async def`` handler."""

        @dispatcher.rpc_method(service=AIO_SERVICE, method="echo")
        async def echo(self, request: Any, proxy: Any, value: Any) -> Dict[str, Any]:
            return {"value": value}

    return AioBenchService


async def _tavrida_serve(link: Link, setup: Setup, names: Names) -> None:
    from tavrida import aio

    conf, disc = _tavrida_parts(setup, names)
    controller: Any = _tavrida_service()
    controller.set_discovery(disc)
    srv = aio.Server(conf, names.queue, names.exchange, [controller],
                     prefetch_count=setup.prefetch)
    serving = asyncio.ensure_future(srv.serve())
    started = asyncio.ensure_future(srv.wait_started())
    await asyncio.wait({serving, started}, timeout=setup.timeout,
                       return_when=asyncio.FIRST_COMPLETED)
    if serving.done():
        serving.result()  # its failure, reported to the parent
    if not started.done():
        raise BenchError(f"aio.Server did not start within {setup.timeout:.0f}s")
    link.send("ready", os.getpid())
    await _until_stopped(link)
    await srv.stop()
    await serving


async def _tavrida_call(link: Link, setup: Setup, names: Names, n: int,
                        concurrency: int) -> None:
    from tavrida import aio

    conf, disc = _tavrida_parts(setup, names)
    async with aio.RPCClient(conf, disc, source=CLIENT) as cli:
        async def one(i: int) -> Any:
            answer = await cli.bench_aio.echo(value=i).call(timeout=CALL_TIMEOUT)
            return answer["value"]

        result = await concurrent_calls(one, n, concurrency, setup.warmup)
    link.send("result", result)


# --- aio-pika ------------------------------------------------------------------------------------

async def _pika_serve(link: Link, setup: Setup, names: Names) -> None:
    import aio_pika

    connection = await aio_pika.connect(setup.url, timeout=setup.timeout)
    async with connection:
        channel = await connection.channel(publisher_confirms=setup.confirms)
        await channel.set_qos(prefetch_count=setup.prefetch)
        queue = await channel.declare_queue(names.queue, durable=True)
        exchange = channel.default_exchange

        async def on_request(message: Any) -> None:
            async with message.process(requeue=False):
                value = json.loads(message.body)["value"]
                await exchange.publish(
                    aio_pika.Message(json.dumps({"value": value}).encode(),
                                     content_type="application/json",
                                     correlation_id=message.correlation_id,
                                     delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=message.reply_to)

        await queue.consume(on_request)
        link.send("ready", os.getpid())
        await _until_stopped(link)


async def _pika_call(link: Link, setup: Setup, names: Names, n: int, concurrency: int) -> None:
    import uuid

    import aio_pika

    connection = await aio_pika.connect(setup.url, timeout=setup.timeout)
    async with connection:
        channel = await connection.channel(publisher_confirms=setup.confirms)
        replies = await channel.declare_queue(exclusive=True)
        loop = asyncio.get_running_loop()
        waiting: Dict[str, "asyncio.Future[Any]"] = {}

        async def on_reply(message: Any) -> None:
            future = waiting.pop(message.correlation_id, None)
            if future is not None and not future.done():
                future.set_result(json.loads(message.body)["value"])

        await replies.consume(on_reply, no_ack=True)
        exchange = channel.default_exchange

        async def one(i: int) -> Any:
            correlation_id = uuid.uuid4().hex
            future = waiting[correlation_id] = loop.create_future()
            try:
                await exchange.publish(
                    aio_pika.Message(json.dumps({"value": i}).encode(),
                                     content_type="application/json",
                                     correlation_id=correlation_id, reply_to=replies.name,
                                     delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=names.queue)
                return await asyncio.wait_for(future, CALL_TIMEOUT)
            finally:
                waiting.pop(correlation_id, None)

        result = await concurrent_calls(one, n, concurrency, setup.warmup)
    link.send("result", result)


# --- FastStream ----------------------------------------------------------------------------------

async def _faststream_serve(link: Link, setup: Setup, names: Names) -> None:
    from faststream.rabbit import RabbitBroker, RabbitQueue

    broker = RabbitBroker(setup.url, logger=None)

    @broker.subscriber(RabbitQueue(names.queue, durable=True))
    async def echo(body: Dict[str, Any]) -> Dict[str, Any]:
        return {"value": body["value"]}

    await broker.start()
    try:
        link.send("ready", os.getpid())
        await _until_stopped(link)
    finally:
        await broker.stop()


async def _faststream_call(link: Link, setup: Setup, names: Names, n: int,
                           concurrency: int) -> None:
    from faststream.rabbit import RabbitBroker

    async with RabbitBroker(setup.url, logger=None) as broker:
        async def one(i: int) -> Any:
            reply = await broker.request({"value": i}, names.queue, persist=True,
                                         timeout=CALL_TIMEOUT)
            return json.loads(reply.body)["value"]

        result = await concurrent_calls(one, n, concurrency, setup.warmup)
    link.send("result", result)


SERVICES = {"tavrida": _tavrida_serve, "aio-pika": _pika_serve, "faststream": _faststream_serve}
CLIENTS = {"tavrida": _tavrida_call, "aio-pika": _pika_call, "faststream": _faststream_call}


# --- child processes -----------------------------------------------------------------------------

def serve(link: Link, side: str, setup: Setup, names: Names) -> None:
    """A side's service process: reports ``ready``, serves until asked to stop."""
    asyncio.run(SERVICES[side](link, setup, names))


def call_client(link: Link, side: str, setup: Setup, names: Names, n: int,
                concurrency: int) -> None:
    """A side's client process: reports ``result`` (latencies, elapsed, cpu)."""
    asyncio.run(CLIENTS[side](link, setup, names, n, concurrency))


def missing(side: str) -> str:
    """Why ``side`` cannot run here ('' when it can): the package it needs is absent."""
    import importlib.util

    package = {"tavrida": "tavrida", "aio-pika": "aio_pika", "faststream": "faststream"}[side]
    if importlib.util.find_spec(package) is None:
        return f"{package} is not installed (pip install -e '.[bench]')"
    return ""
