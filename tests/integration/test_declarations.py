"""Every queue tavrida declares on RabbitMQ is durable or exclusive; every exchange durable.

RabbitMQ 4.3 refuses a queue that is neither (a "transient non-exclusive"
queue), and 4.0 removed mirrored classic queues, so a tavrida system must
declare nothing else (docs/deployment.rst, "What tavrida declares", lists
each queue and exchange). A whole system is declared here, as users run it:
a server with two services (one answering requests, one hearing another
service's notifications), a client that calls it, and the ``tavrida call``
command, whose reply queue lives only while its call is answered: its
request is held in the handler while the broker is asked what exists
(``rabbitmqctl list_queues`` / ``list_exchanges``, the broker's own words),
then answered. Classic and quorum servers both.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import uuid
from typing import Any, Dict, Iterator, List

import pytest
from svc_support import Proc, subprocess_env

from tavrida import client, discovery, dispatcher, server, service

ASK, WATCH, NEWS = "decl_ask", "decl_watch", "decl_news"
#: Bound of each wait (seconds): generous, a loaded CI machine.
WAIT = 60.0

held = threading.Event()
release = threading.Event()


@dispatcher.rpc_service(ASK)
class Ask(service.ServiceController):

    @dispatcher.rpc_method(service=ASK, method="echo")
    def echo(self, request, proxy, n):
        return {"n": n}

    @dispatcher.rpc_method(service=ASK, method="hold")
    def hold(self, request, proxy):
        """Answer only once the test has looked at the broker (the caller's queue exists)."""
        held.set()
        return {"released": release.wait(WAIT)}


@dispatcher.rpc_service(WATCH)
class Watch(service.ServiceController):

    @dispatcher.subscription_method(service=NEWS, method="event")
    def on_event(self, notification, proxy, n):
        pass


def rabbitmqctl(*args: str) -> List[Dict[str, Any]]:
    """``rabbitmqctl -q ARGS --formatter json`` on this machine's node, parsed."""
    tool = shutil.which("rabbitmqctl")
    if tool is None:
        pytest.skip("rabbitmqctl is not available (a remote broker?)")
    done = subprocess.run([tool, "-q", *args, "--formatter", "json"], capture_output=True,
                          text=True, timeout=WAIT, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        pytest.skip(f"rabbitmqctl {args[0]} failed: {done.stderr.strip()}")
    return list(json.loads(done.stdout or "[]"))


@pytest.fixture
def system(amqp_url, unique, request) -> Iterator[Dict[str, Any]]:
    """A server (queue type of the test's parameter) with Ask and Watch, running."""
    names = {what: unique(what) for what in ("q", "ex", "news", "client-ex", "cli-ex")}
    names["client"] = f"decl_client_{uuid.uuid4().hex[:8]}"
    names["cli"] = f"decl_cli_{uuid.uuid4().hex[:8]}"
    names["queue_type"] = request.param
    disc = discovery.LocalDiscovery()
    disc.register_remote_service(ASK, names["ex"])
    disc.register_remote_service(names["client"], names["client-ex"])
    disc.register_remote_publisher(NEWS, names["news"])
    Ask.set_discovery(disc)
    Watch.set_discovery(disc)
    held.clear()
    release.clear()
    srv = server.Server(amqp_url, names["q"], names["ex"], [Ask, Watch], workers=2,
                        queue_type=request.param)
    names["dead"] = unique.track(srv.dead_letter_queue)
    srv.start()  # declared and consuming when it returns
    runner = threading.Thread(target=srv.run, daemon=True, name="decl-server")
    runner.start()
    try:
        with client.RPCClient(amqp_url, disc, source=names["client"]) as cli:
            assert cli.decl_ask.echo(n=1).call(timeout=WAIT) == {"n": 1}  # its queue is up
            yield names
    finally:
        release.set()
        srv.stop()
        runner.join(WAIT)


@pytest.mark.parametrize("system", ["classic", "quorum"], indirect=True)
def test_every_queue_is_durable_or_exclusive_and_every_exchange_durable(system, amqp_url,
                                                                        tmp_path):
    names = system
    command = Proc.python(
        ["-m", "tavrida.cli", "call", f"{ASK}.hold", "--url", amqp_url,
         "--exchange", names["ex"], "--source", names["cli"],
         "--reply-exchange", names["cli-ex"], "--timeout", str(WAIT)],
        tmp_path, "cli", subprocess_env())
    try:
        assert held.wait(WAIT), f"the command's request never came:\n{command.describe()}"
        queues = rabbitmqctl("list_queues", "name", "type", "durable", "exclusive",
                             "auto_delete")
        exchanges = rabbitmqctl("list_exchanges", "name", "type", "durable", "auto_delete")
    finally:
        release.set()
        code = command.wait(WAIT)
    assert code == 0 and json.loads(command.stdout) == {"released": True}, command.describe()

    ours = {row["name"]: row for row in queues
            if row["name"] in (names["q"], names["dead"])
            or row["name"].startswith((f"{names['client']}.replies.",
                                       f"{names['cli']}.replies."))}
    roles = sorted("service" if name == names["q"] else "dead letters" if name == names["dead"]
                   else "client replies" if name.startswith(names["client"]) else "cli replies"
                   for name in ours)
    assert roles == ["cli replies", "client replies", "dead letters", "service"], ours
    neither = {name: row for name, row in ours.items()
               if not (row["durable"] or row["exclusive"])}
    assert neither == {}, "RabbitMQ 4.3 refuses these (neither durable nor exclusive)"
    for name in (names["q"], names["dead"]):
        assert ours[name]["durable"] and not ours[name]["exclusive"], ours[name]
        assert ours[name]["type"] == names["queue_type"], ours[name]
    for name, row in ours.items():
        if ".replies." in name:
            assert row["exclusive"] and row["auto_delete"] and row["type"] == "classic", row

    wanted = {names[what] for what in ("ex", "news", "client-ex", "cli-ex")}
    found = {row["name"]: row for row in exchanges if row["name"] in wanted}
    assert set(found) == wanted, found
    assert all(row["type"] == "topic" and row["durable"] and not row["auto_delete"]
               for row in found.values()), found
