"""``tavrida topology show|delete CONFIG`` against RabbitMQ and Redis.

The commands run as a user runs them (``python -m tavrida.cli`` subprocesses,
the service module beside the config file); the test declares what the
server of the config declares, with messages waiting, and looks at the broker
itself afterwards.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Dict, List

import amqp
import pytest
import redis
from svc_support import HERE, REPO, subprocess_env

from tavrida import config, config_file
from tavrida.server import Server
from tavrida.transports import OutgoingEnvelope, create_transport

CONFIG = """\
[connection]
url = {url}

[server]
queue = {queue}
exchange = {exchange}
services = svc_cli:Calc

[discovery]
remote.tavrida_cli = {reply}
local_publisher.calc = {events}
remote_publisher.ticker = {ticker}
"""


@pytest.fixture(params=["amqp", "redis"])
def url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_url")


def tavrida(folder: Path, *args: str, answer: str = "") -> subprocess.CompletedProcess:
    env = subprocess_env()
    env["PYTHONPATH"] = str(REPO)  # svc_cli is found beside the config file
    return subprocess.run([sys.executable, "-m", "tavrida.cli", *args], cwd=folder, env=env,
                          input=answer, capture_output=True, text=True, timeout=60)


def declare(path: Path, url: str, messages: int) -> None:
    """Declare what ``tavrida run`` would, and leave ``messages`` in the queue."""
    conf = config_file.ServiceConfig(str(path))
    conf.bind_discovery()
    srv = Server(conf.connection, conf.queue, conf.exchange, conf.service_classes)
    transport = create_transport(config.ConnectionConfig.from_url(url))
    try:
        transport.declare(srv.topology())
        for _ in range(messages):
            transport.publish(OutgoingEnvelope(conf.exchange, "calc.add", b"{}", {}))
    finally:
        transport.close()


def broker_state(url: str, names: Dict[str, str]) -> Dict[str, object]:
    """What the broker itself holds: ready messages per queue, own exchanges, bindings."""
    if url.startswith("redis"):
        client = redis.Redis.from_url(url, socket_timeout=5)
        try:
            queues = {q: client.llen(q) for q in (names["queue"], names["queue"] + ".dead")}
            bound: List[str] = sorted(
                member.decode() for exchange in (names["exchange"], names["ticker"])
                for member in client.smembers(f"_kombu.binding.{exchange}"))
        finally:
            client.close()
        return {"queues": queues, "bindings": bound}
    parts = urllib.parse.urlsplit(url)
    conn = amqp.Connection(f"{parts.hostname}:{parts.port or 5672}", userid=parts.username,
                           password=parts.password, connect_timeout=5)
    conn.connect()
    try:
        queues: Dict[str, object] = {}
        for queue in (names["queue"], names["queue"] + ".dead"):
            try:
                queues[queue] = conn.channel().queue_declare(queue, passive=True).message_count
            except amqp.NotFound:
                queues[queue] = "missing"
        exchanges = {}
        for what in ("exchange", "events", "reply", "ticker"):
            try:
                conn.channel().exchange_declare(names[what], "topic", passive=True)
                exchanges[what] = "exists"
            except amqp.NotFound:
                exchanges[what] = "missing"
    finally:
        conn.close()
    return {"queues": queues, "exchanges": exchanges}


def test_show_counts_then_delete_refuses_then_deletes_with_force(url, unique, tmp_path):
    names = {what: unique(what) for what in ("queue", "exchange", "reply", "events", "ticker")}
    queue, dead = names["queue"], names["queue"] + ".dead"
    shutil.copy(HERE / "svc_cli.py", tmp_path / "svc_cli.py")
    path = tmp_path / "services.ini"
    path.write_text(CONFIG.format(url=url, **names))
    declare(path, url, messages=2)
    before = broker_state(url, names)
    assert before["queues"] == {queue: 2, dead: 0}

    shown = tavrida(tmp_path, "topology", "show", str(path), "--counts")
    assert shown.returncode == 0, shown.stderr
    assert f"  {queue}             queue of calc" in shown.stdout
    assert f"  {queue}.retry.4000  retries of {queue} waiting 4 s" in shown.stdout
    assert shown.stdout.count("2 messages") == 1 and "0 messages" in shown.stdout

    refused = tavrida(tmp_path, "topology", "delete", str(path), "--yes", "--exchanges")
    assert refused.returncode == 1, refused.stderr
    assert f"tavrida: queue {queue} holds 2 messages" in refused.stderr
    assert broker_state(url, names) == before  # nothing deleted, no message lost

    unconfirmed = tavrida(tmp_path, "topology", "delete", str(path), "--force")  # stdin: EOF
    assert unconfirmed.returncode == 1, unconfirmed.stderr
    assert "not confirmed: deleted nothing" in unconfirmed.stderr
    assert broker_state(url, names) == before

    deleted = tavrida(tmp_path, "topology", "delete", str(path), "--force", "--exchanges",
                      answer="y\n")
    assert deleted.returncode == 0, deleted.stderr
    # its queue, dead-letter queue and 4 retry delay queues (the default backoff)
    assert deleted.stdout.endswith("deleted 6 queues and 2 exchanges\n"), deleted.stdout
    after = broker_state(url, names)
    if url.startswith("redis"):
        assert after == {"queues": {queue: 0, dead: 0}, "bindings": []}
    else:
        assert after == {"queues": {queue: "missing", dead: "missing"}, "exchanges": {
            "exchange": "missing", "events": "missing",  # the service's own
            "reply": "exists", "ticker": "exists"}}  # other services': kept
