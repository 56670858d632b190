"""The ``tavrida`` command end to end: ``run`` a config file, ``call``, ``cast``, ``publish``.

Everything runs as a user runs it: ``python -m tavrida.cli ...`` subprocesses
against RabbitMQ, the service module (``svc_cli.py``) copied beside the
config file, as the README describes. Output goes to files shown on failure.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Dict, Iterator, List

import pytest
from svc_support import HERE, REPO, PlainAMQP, Proc, run_python, subprocess_env

STARTED = "started with services calc"
STOP_WITHIN = 5.0

CONFIG = """\
; written by test_cli_e2e
[connection]
url = {url}
prefetch_count = 10

[server]
queue = {queue}
exchange = {exchange}
services = svc_cli:Calc       ; beside this file
workers = 2

[discovery]
remote.tavrida_cli = {reply}
local_publisher.calc = {events}
remote_publisher.ticker = {ticker}

[logging]
level = INFO
"""


def cli_env() -> Dict[str, str]:
    """PYTHONPATH = the repository only: the service module is found beside the config."""
    env = subprocess_env()
    env["PYTHONPATH"] = str(REPO)
    return env


class Service:
    """``tavrida run CONFIG`` in a subprocess, and ``tavrida`` commands run against it."""

    def __init__(self, url: str, unique, folder: Path) -> None:
        self.url = url
        self.folder = folder
        self.names = {what: unique(what) for what in
                      ("queue", "exchange", "reply", "events", "ticker")}
        shutil.copy(HERE / "svc_cli.py", folder / "svc_cli.py")
        self.config = folder / "services.ini"
        self.config.write_text(CONFIG.format(url=url, **self.names))
        self.commands: List[Proc] = []
        self.proc = Proc.python(["-m", "tavrida.cli", "run", str(self.config)], folder, "run",
                                cli_env())

    def command(self, *args: str, timeout: float = 30.0) -> Proc:
        """Run ``tavrida ARGS --url URL`` to the end."""
        proc = run_python(["-m", "tavrida.cli", *args, "--url", self.url], self.folder,
                          f"{args[0]}-{len(self.commands)}", timeout, cli_env())
        self.commands.append(proc)
        return proc

    def call(self, target: str, *params: str, timeout: float = 5.0) -> Proc:
        return self.command("call", target, *params, "--exchange", self.names["exchange"],
                            "--reply-exchange", self.names["reply"],
                            "--timeout", str(timeout))


@pytest.fixture
def service(amqp_url, unique, tmp_path) -> Iterator[Service]:
    svc = Service(amqp_url, unique, tmp_path)
    try:
        svc.proc.wait_for_output(STARTED)
        yield svc
    finally:
        svc.proc.stop()
        for proc in [svc.proc, *svc.commands]:
            print(proc.describe())  # shown by pytest when the test failed


def returncode(proc: Proc) -> int:
    return proc.popen.returncode


def test_call_prints_the_answer_or_the_remote_error(service):
    ok = service.call("calc.add", "a=1", "b=2")
    assert returncode(ok) == 0, ok.describe()
    assert ok.stdout.splitlines() == ['{"sum":3}']
    assert json.loads(ok.stdout) == {"sum": 3}

    text = service.call("calc.add", "a=[1]", "b=[2, 3]")  # key=value parsed as JSON
    assert returncode(text) == 0, text.describe()
    assert json.loads(text.stdout) == {"sum": [1, 2, 3]}

    failed = service.call("calc.fail", "reason=no way")
    assert returncode(failed) == 1, failed.describe()
    assert json.loads(failed.stdout) == {"error": {
        "class": "svc_cli.CalcFailure", "name": "CalcFailure", "message": "no way", "code": 7}}


def test_call_no_queue_takes_is_refused_naming_exchange_and_routing_key(service):
    lost = service.call("ghost.method", "x=1", timeout=1.0)
    assert returncode(lost) == 2, lost.describe()
    assert lost.stdout == ""
    assert lost.stderr.startswith("tavrida: No queue takes messages to exchange "), \
        lost.describe()
    assert service.names["exchange"] in lost.stderr and "'ghost.method'" in lost.stderr, \
        lost.describe()


def test_cast_and_publish_reach_the_running_service(service, amqp_url, unique):
    names = service.names
    with PlainAMQP(amqp_url) as plain:
        spy = plain.spy(unique("spy"), [(names["events"], "#"), (names["ticker"], "#")])

        cast = service.command("cast", "calc.note", "text=hi", "--exchange", names["exchange"],
                               "--correlation-id", "corr-cli")
        assert returncode(cast) == 0, cast.describe()
        assert cast.stdout == ""
        [noted] = plain.wait_for(spy, 1, where=lambda m: m.routing_key == "calc.note")
        assert noted.exchange == names["events"]
        assert noted.headers["correlation_id"] == "corr-cli"
        assert json.loads(noted.body)["payload"] == {"noted": "hi"}

        published = service.command("publish", "ticker.tick", "n=3",
                                    "--exchange", names["ticker"])
        assert returncode(published) == 0, published.describe()
        [tick] = plain.wait_for(spy, 1, where=lambda m: m.routing_key == "ticker.tick")
        assert tick.exchange == names["ticker"]
        assert tick.message_type == "notification"
        assert tick.headers["source"] == "ticker.tick"
        assert json.loads(tick.body)["payload"] == {"n": 3}
        # The service heard it: its subscription handler published in turn.
        [heard] = plain.wait_for(spy, 1, where=lambda m: m.routing_key == "calc.on_tick")
        assert heard.exchange == names["events"]
        assert heard.headers["correlation_id"] == tick.headers["correlation_id"]
        assert json.loads(heard.body)["payload"] == {"tick": 3}


def test_sigterm_stops_run_with_exit_0(service):
    assert returncode(service.call("calc.add", "a=2", "b=2")) == 0
    code, took = service.proc.terminate()
    assert code == 0, service.proc.describe()
    assert took < STOP_WITHIN, f"tavrida run took {took:.1f}s to stop"
    assert "stopped" in service.proc.stderr, service.proc.describe()
    assert "Traceback" not in service.proc.stderr, service.proc.describe()


BAD_CONFIGS = {
    "missing queue": ("queue = {queue}\n", "", "[server] queue: is required"),
    "unimportable module": ("svc_cli:Calc", "svc_nowhere:Calc",
                            "[server] services: cannot import svc_nowhere:Calc"),
    "not a service": ("svc_cli:Calc", "svc_cli:CalcFailure",
                      "[server] services: svc_cli:CalcFailure is not a ServiceController"),
    "bad number": ("prefetch_count = 10", "prefetch_count = lots",
                   "[connection] prefetch_count: 'lots' is not a whole number"),
    "bad discovery key": ("remote.tavrida_cli", "remotely.tavrida_cli",
                          "[discovery] remotely.tavrida_cli: unknown key "
                          "(did you mean remote.tavrida_cli?)"),
    "bad log level": ("level = INFO", "level = LOUD", "[logging] level: unknown level 'LOUD'"),
    "misspelt section": ("[server]", "[sever]",
                         "[sever]: unknown section (did you mean [server]?)"),
    "unknown key": ("workers = 2", "workerz = 2",
                    "[server] workerz: unknown key (did you mean workers?)"),
    "subscription without exchange": ("remote_publisher.ticker = {ticker}\n", "",
                                      "[discovery] remote_publisher.ticker: is required"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_exits_2_naming_file_section_and_key(case, tmp_path):
    old, new, expected = BAD_CONFIGS[case]
    shutil.copy(HERE / "svc_cli.py", tmp_path / "svc_cli.py")
    template = CONFIG.replace(old, new)
    assert template != CONFIG
    # No broker at that port: a config taken as good cannot declare anything anywhere.
    config = tmp_path / "bad.ini"
    config.write_text(template.format(url="amqp://guest:guest@127.0.0.1:1//",
                                      queue="q", exchange="e", reply="r", events="v",
                                      ticker="t"))
    proc = run_python(["-m", "tavrida.cli", "run", str(config)], tmp_path, "run-bad",
                      timeout=30, env=cli_env())
    assert returncode(proc) == 2, proc.describe()
    assert proc.stdout == ""
    assert proc.stderr.strip() == f"tavrida: {config}: {expected}" or (
        proc.stderr.startswith(f"tavrida: {config}: {expected}")), proc.describe()
    assert len(proc.stderr.strip().splitlines()) == 1, proc.describe()  # no traceback


@pytest.mark.parametrize("command", ["call", "run"])
def test_broker_trouble_exits_2_with_one_line(command, amqp_url, tmp_path):
    """A wrong password or no broker at all: a one-line message, exit 2 (not a traceback)."""
    parts = urllib.parse.urlsplit(amqp_url)
    if command == "call":
        url = f"amqp://guest:wrong-password@{parts.hostname}:{parts.port or 5672}/"
        args = ["call", "ghost.method", "x=1", "--url", url, "--exchange", "never-declared",
                "--timeout", "1"]
        expected = "ACCESS_REFUSED"
    else:
        shutil.copy(HERE / "svc_cli.py", tmp_path / "svc_cli.py")
        config = tmp_path / "nobroker.ini"
        config.write_text(CONFIG.replace("prefetch_count = 10", "connection_attempts = 1").format(
            url="amqp://guest:guest@127.0.0.1:1//", queue="q", exchange="e", reply="r",
            events="v", ticker="t"))
        args = ["run", str(config)]
        expected = "Connection refused"
    proc = run_python(["-m", "tavrida.cli", *args], tmp_path, command, timeout=30,
                      env=cli_env())
    assert returncode(proc) == 2, proc.describe()
    assert "Traceback" not in proc.stderr, proc.describe()
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("tavrida: ") and expected in last, proc.describe()


def test_call_and_cast_take_the_services_own_config_file(service, amqp_url, unique):
    """``--config services.ini``: the URL, the service's exchange and the reply exchange."""
    def tavrida(*args: str) -> Proc:
        proc = run_python(["-m", "tavrida.cli", *args, "--config", str(service.config)],
                          service.folder, f"{args[0]}-config-{len(service.commands)}", 30,
                          cli_env())
        service.commands.append(proc)
        return proc

    ok = tavrida("call", "calc.add", "a=1", "b=2", "--timeout", "5")
    assert returncode(ok) == 0, ok.describe()
    assert json.loads(ok.stdout) == {"sum": 3}
    failed = tavrida("call", "calc.fail", "reason=no", "--timeout", "5")
    assert returncode(failed) == 1, failed.describe()
    assert json.loads(failed.stdout)["error"]["name"] == "CalcFailure"

    with PlainAMQP(amqp_url) as plain:
        spy = plain.spy(unique("spy"), [(service.names["events"], "calc.note")])
        cast = tavrida("cast", "calc.note", "text=hi", "--context", "tenant=acme")
        assert returncode(cast) == 0, cast.describe()
        [noted] = plain.wait_for(spy, 1)
        assert json.loads(noted.body)["payload"] == {"noted": "hi"}
        # The notification the handler published carries the request's context on.
        assert json.loads(noted.body)["context"]["tenant"] == "acme"

    unknown = tavrida("call", "calx.add", "a=1", "--timeout", "1")
    assert returncode(unknown) == 2, unknown.describe()
    assert unknown.stderr.startswith(
        f"tavrida: Unable to discover the exchange of service calx in {service.config} "
        "(did you mean calc?): name it with --exchange EXCHANGE, or --config CONFIG"), \
        unknown.describe()


def test_shell_answers_a_scripted_call_on_rabbitmq(service):
    script = "n.calc.add(a=2, b=3)\nn.calc.fail(reason='nope')\nn.calc.note(text='x').cast()\n"
    done = subprocess.run([sys.executable, "-m", "tavrida.cli", "shell", str(service.config),
                           "--timeout", "5"], input=script, capture_output=True, text=True,
                          timeout=60, cwd=service.folder, env=cli_env())
    assert done.returncode == 0, done.stderr
    assert f"tavrida shell: {service.config} on amqp://" in done.stderr
    assert "  calc: add, fail, note" in done.stderr
    assert "RemoteError: CalcFailure: nope (code 7)" in done.stderr
    answers = [part.strip() for part in done.stdout.split(">>> ") if part.strip()]
    assert len(answers) == 2 and answers[0] == "{'sum': 5}", done.stdout
    assert answers[1].startswith("<Request tavrida_cli->calc.note "), done.stdout


def test_three_mistakes_in_a_config_file_are_reported_in_one_run(tmp_path):
    shutil.copy(HERE / "svc_cli.py", tmp_path / "svc_cli.py")
    config = tmp_path / "bad.ini"
    config.write_text(CONFIG.replace("workers = 2", "workerz = 2")
                      .replace("prefetch_count = 10", "prefetch_count = lots")
                      .replace("svc_cli:Calc", "svc_cli:Calk")
                      .format(url="amqp://guest:guest@127.0.0.1:1//", queue="q", exchange="e",
                              reply="r", events="v", ticker="t"))
    proc = run_python(["-m", "tavrida.cli", "run", str(config)], tmp_path, "run-bad",
                      timeout=30, env=cli_env())
    assert returncode(proc) == 2, proc.describe()
    assert proc.stderr.splitlines() == [
        f"tavrida: {config}: [connection] prefetch_count: 'lots' is not a whole number",
        f"tavrida: {config}: [server] workerz: unknown key (did you mean workers?)",
        f"tavrida: {config}: [server] services: cannot import svc_cli:Calk: module 'svc_cli' "
        "has no attribute 'Calk' (did you mean Calc?)",
    ], proc.describe()
