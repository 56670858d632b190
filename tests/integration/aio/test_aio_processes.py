"""An asyncio service process stopped with SIGTERM while calls are in flight: none is lost."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import svc_aio
from svc_support import Proc, subprocess_env

from tavrida import aio, discovery

pytestmark = pytest.mark.anyio

STARTED = "started with services"
CALLS = 40


def start(url: str, prefix: str, folder: Path, name: str, hold: str) -> Proc:
    env = subprocess_env(TVT_URL=url, TVT_PREFIX=prefix, TVT_HOLD=hold)
    proc = Proc.python(["-m", "svc_aio"], folder, name, env)
    proc.wait_for_output(STARTED)
    return proc


@pytest.mark.slow
async def test_sigterm_with_calls_in_flight_loses_none(url, unique, tmp_path):
    names = {what: unique.track(name) for what, name in svc_aio.names(unique.prefix).items()}
    first = start(url, unique.prefix, tmp_path, "first", hold="1.0")
    second = None
    try:
        disc = discovery.LocalDiscovery()
        disc.register_remote_service("tvt_aio", names["exchange"])
        async with aio.RPCClient(url, disc, source=unique("caller").replace(".", "-")) as cli:
            calls = [asyncio.ensure_future(cli.tvt_aio.work(n=n).call(timeout=90))
                     for n in range(CALLS)]
            loop = asyncio.get_running_loop()
            # Handlers are running (the first holds its message a second): stop it now.
            await loop.run_in_executor(None, first.wait_for_output, "working")
            code, _ = await loop.run_in_executor(None, first.terminate)
            assert code == 0, first.describe()
            # What the first did not take is still queued: a second process answers it.
            second = start(url, unique.prefix, tmp_path, "second", hold="0")
            answers = await asyncio.gather(*calls)
        assert [answer["n"] for answer in answers] == list(range(CALLS))
        by_first = [a for a in answers if a["pid"] == first.popen.pid]
        assert by_first, "the first process finished the calls it had in hand"
        assert "stopping" in first.stdout + first.stderr
    finally:
        first.stop()
        if second is not None:
            second.stop()
