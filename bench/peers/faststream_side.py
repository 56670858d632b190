"""FastStream's side of the peer comparison (``python -m bench.peers.faststream_side``).

``serve URL QUEUE``: a ``RabbitBroker`` (its per-message access log off, as
tavrida's and nameko's services log nothing per message) with a subscriber on a durable queue whose
handler returns ``{"value": value}`` (FastStream answers through RabbitMQ's
direct reply-to); prints ``ready`` and runs until its standard input closes.
``call URL QUEUE N WARMUP``: ``N`` sequential ``await broker.request(...)``
with ``persist=True`` (publisher confirms are FastStream's default, on);
prints one JSON line (latencies, elapsed, cpu, unanswered). A call with no
answer in ``CALL_TIMEOUT`` is counted (its wait stays in the elapsed time)
and the next one is made, up to ``MAX_LOST`` of them.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

#: Seconds a call waits for its answer.
CALL_TIMEOUT = 10.0
#: Calls that may go unanswered (each reported on stderr and counted) before the run fails.
MAX_LOST = 5


def _queue(name: str):
    from faststream.rabbit import RabbitQueue

    return RabbitQueue(name, durable=True)


async def _serve(url: str, queue: str) -> None:
    from faststream.rabbit import RabbitBroker

    broker = RabbitBroker(url, logger=None)

    @broker.subscriber(_queue(queue))
    async def echo(body: dict) -> dict:
        return {"value": body["value"]}

    await broker.start()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await broker.stop()


async def _call(url: str, queue: str, n: int, warmup: int) -> None:
    from faststream.rabbit import RabbitBroker

    async with RabbitBroker(url, logger=None) as broker:
        lost = []

        async def one(i: int) -> None:
            try:
                reply = await broker.request({"value": i}, queue, persist=True,
                                             timeout=CALL_TIMEOUT)
            except TimeoutError:
                lost.append(i)
                print(f"call {i}: no answer in {CALL_TIMEOUT}s", file=sys.stderr, flush=True)
                if len(lost) > MAX_LOST:
                    raise
                return
            answer = json.loads(reply.body)
            if answer["value"] != i:
                raise RuntimeError(f"call {i} got {answer!r}")

        for i in range(warmup):
            await one(i)
        latencies = []
        cpu = time.process_time()
        start = time.perf_counter()
        for i in range(n):
            began = time.perf_counter()
            await one(i)
            latencies.append(time.perf_counter() - began)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
    print(json.dumps({"latencies": latencies, "elapsed": elapsed, "cpu": cpu,
                      "unanswered": len(lost)}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        asyncio.run(_serve(sys.argv[2], sys.argv[3]))
    else:
        asyncio.run(_call(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
