"""A service whose handler asks for one retry, run as a process (killed by the test).

Run by tests/integration/reliability/test_reliability_retries_expiry.py::

    TVT_URL=... TVT_PREFIX=tvt-xyz TVT_RUNS=/tmp/runs TVT_BACKOFF=10 python -m svc_retry

Serves ``tvt_retry.do(value)`` on queue ``<TVT_PREFIX>.queue`` (exchange
``<TVT_PREFIX>.svc``) with ``prefetch_count=1``. Each run appends
``<value> <attempts>`` to the file ``TVT_RUNS`` (``None`` on the first run);
a value starting with ``retry`` asks for a retry on its first run. Logs
``started`` once it consumes.
"""

from __future__ import annotations

import logging
import os
import sys

from svc_support import service_names as names

from tavrida import discovery, dispatcher, exceptions, server, service


class Again(exceptions.BaseNackableException):
    message_template = "not yet"


@dispatcher.rpc_service("tvt_retry")
class RetryOnce(service.ServiceController):

    @dispatcher.rpc_method(service="tvt_retry", method="do")
    def do(self, request, proxy, value):
        attempts = request.headers.get("x-tavrida-attempts")
        with open(os.environ["TVT_RUNS"], "a") as runs:
            runs.write(f"{value} {attempts}\n")
        if value.startswith("retry") and attempts is None:
            raise Again()


def main() -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    n = names(os.environ["TVT_PREFIX"])
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("tvt_retry", n["exchange"])
    RetryOnce.set_discovery(disc)
    srv = server.Server(os.environ["TVT_URL"], n["queue"], n["exchange"], [RetryOnce],
                        prefetch_count=1, max_attempts=3,
                        retry_backoff=float(os.environ["TVT_BACKOFF"]))
    srv.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
