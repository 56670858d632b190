"""An asyncio service run as a process (stopped by the test with SIGTERM).

Run by tests/integration/aio/test_aio_processes.py::

    TVT_URL=... TVT_PREFIX=tvt-xyz TVT_HOLD=1.0 python -m svc_aio

Serves ``tvt_aio.work(n)`` on queue ``<TVT_PREFIX>.queue`` (exchange
``<TVT_PREFIX>.svc``) with ``aio.Server.run()``: an ``async def`` handler
that prints ``working <n>``, holds ``TVT_HOLD`` seconds (the work) and answers
``{"n": n, "pid": ...}``. Logs ``started`` once it consumes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from svc_support import service_names as names

from tavrida import aio, discovery, dispatcher, service


@dispatcher.rpc_service("tvt_aio")
class Worker(service.ServiceController):

    @dispatcher.rpc_method(service="tvt_aio", method="work")
    async def work(self, request, proxy, n):
        print(f"working {n}", flush=True)
        await asyncio.sleep(float(os.environ.get("TVT_HOLD", "0")))
        return {"n": n, "pid": os.getpid()}


def main() -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    n = names(os.environ["TVT_PREFIX"])
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("tvt_aio", n["exchange"])
    Worker.set_discovery(disc)
    aio.Server(os.environ["TVT_URL"], n["queue"], n["exchange"], [Worker],
               max_concurrency=10, prefetch_count=10, stop_timeout=30).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
