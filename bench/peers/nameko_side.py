"""nameko's side of the peer comparison (``python -m bench.peers.nameko_side``).

``serve URL SERVICE``: a nameko service (eventlet, as nameko runs) whose
``echo(value)`` answers ``{"value": value}``; prints ``ready`` and runs until
its standard input closes. ``call URL SERVICE N WARMUP``: ``N`` sequential
blocking calls through nameko's standalone ``ClusterRpcProxy``; prints one
JSON line (latencies, elapsed, cpu). nameko's defaults are kept: persistent
messages (delivery_mode 2), publisher confirms on, JSON.
"""

from __future__ import annotations

import sys


def serve(url: str, service: str) -> None:
    import eventlet

    eventlet.monkey_patch()
    from eventlet import tpool
    from nameko.containers import ServiceContainer
    from nameko.rpc import rpc

    class Echo:
        name = service

        @rpc
        def echo(self, value):
            return {"value": value}

    container = ServiceContainer(Echo, {"AMQP_URI": url, "max_workers": 10})
    container.start()
    print("ready", flush=True)
    tpool.execute(sys.stdin.read)  # returns when the parent closes our stdin
    container.stop()


def call(url: str, service: str, n: int, warmup: int) -> None:
    from nameko.standalone.rpc import ClusterRpcProxy

    from bench.peers import timed_calls

    with ClusterRpcProxy({"AMQP_URI": url}, timeout=10) as proxy:
        echo = getattr(proxy, service).echo
        timed_calls(lambda i: echo(value=i), n, warmup)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3])
    else:
        call(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
