"""The ``tavrida`` command and service config files, on the in-memory transport."""

import json
import textwrap
import threading
import uuid

import pytest

from tavrida import cli, config_file, server

CONFIG = """
[connection]
url = {url}
prefetch_count = 10

[server]
queue = cli_queue
exchange = cli_exchange
services = cli_services:EchoController
workers = 2

[discovery]
remote.tavrida_cli = cli_reply_exchange
local_publisher.echo = echo_events

[logging]
level = WARNING
"""

SERVICES = '''
from tavrida import dispatcher, service


@dispatcher.rpc_service("echo")
class EchoController(service.ServiceController):

    @dispatcher.rpc_method(service="echo", method="say")
    def say(self, request, proxy, text, times=1):
        if text == "fail":
            raise ValueError("refused")
        return {"said": text * times}
'''


@pytest.fixture
def config_path(tmp_path):
    url = f"memory://cli-{uuid.uuid4().hex}"
    (tmp_path / "cli_services.py").write_text(SERVICES)
    path = tmp_path / "services.ini"
    path.write_text(CONFIG.format(url=url))
    return path, url


@pytest.fixture
def running(config_path):
    path, url = config_path
    srv = server.Server.from_config(str(path))
    srv.start()
    thread = threading.Thread(target=srv.run)
    thread.start()
    yield url
    srv.stop()
    thread.join(10)


def call(url, *args):
    return cli.main(["call", *args, "--url", url, "--exchange", "cli_exchange",
                     "--reply-exchange", "cli_reply_exchange", "--timeout", "5"])


def test_from_config_reads_every_section(config_path):
    path, url = config_path
    srv = server.Server.from_config(str(path))
    assert srv.queue_name == "cli_queue"
    assert srv.exchange_name == "cli_exchange"
    assert srv.workers == 2
    assert srv.prefetch_count == 10
    assert srv.config.is_memory
    [cls] = srv.service_classes
    assert cls.get_discovery().get_remote("tavrida_cli") == "cli_reply_exchange"


def test_call_prints_the_json_response(running, capsys):
    assert call(running, "echo.say", "text=hi", "times=3") == 0
    assert json.loads(capsys.readouterr().out) == {"said": "hihihi"}


def test_call_prints_the_remote_error_and_exits_1(running, capsys):
    assert call(running, "echo.say", "text=fail") == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["name"] == "ValueError"
    assert error["message"] == "refused"


def test_cast_sends_without_waiting(running, capsys):
    assert cli.main(["cast", "echo.say", "text=x", "--url", running,
                     "--exchange", "cli_exchange"]) == 0


def test_bad_key_value_argument_exits_2(running, capsys):
    assert call(running, "echo.say", "novalue") == 2
    assert "key=value" in capsys.readouterr().err


@pytest.mark.parametrize("section,key,text,expected", [
    ("server", "queue", "queue =", "[server] queue: is required"),
    ("server", "services", "services = nosuchmodule:X", "cannot import nosuchmodule:X"),
    ("server", "services", "services = cli_services", "is not module:Class"),
    ("server", "services", "services = cli_services:service",
     "is not a ServiceController"),
    ("server", "workers", "workers = many", "[server] workers: 'many' is not a whole number"),
    ("connection", "prefetch_count", "prefetch_count = lots",
     "[connection] prefetch_count: 'lots' is not a valid value"),
    ("connection", "colour", "colour = blue", "[connection] colour: unknown key"),
    ("connection", "publish_timeout", "publish_timeout = 0",
     "[connection] publish_timeout: '0' is not a valid value"),
    ("connection", "url", "url = nothing", "[connection] url:"),
    ("discovery", "bogus", "bogus.x = y", "[discovery] bogus.x: expected remote.<service>"),
    ("logging", "level", "level = LOUD", "[logging] level: unknown level 'LOUD'"),
])
def test_each_config_error_names_file_section_key_and_exits_2(
        config_path, capsys, monkeypatch, section, key, text, expected):
    monkeypatch.delenv(config_file.URL_ENV, raising=False)
    path, url = config_path
    lines = path.read_text().splitlines()
    header = lines.index(f"[{section}]")
    replaced = False
    for i in range(header + 1, len(lines)):
        if lines[i].startswith("["):
            break
        if lines[i].split("=")[0].strip() == text.split("=")[0].strip():
            lines[i] = text
            replaced = True
    if not replaced:
        lines.insert(header + 1, text)
    path.write_text("\n".join(lines))
    assert cli.main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err
    assert expected in err


@pytest.mark.parametrize("text,expected", [("", 30.0), ("publish_timeout = 2.5", 2.5),
                                           ("publish_timeout = none", None)])
def test_publish_timeout_is_read_from_the_connection_section(config_path, text, expected):
    path, url = config_path
    path.write_text(path.read_text().replace("prefetch_count = 10", f"prefetch_count = 10\n{text}"))
    assert config_file.ServiceConfig(str(path)).connection.publish_timeout == expected


def test_an_unreachable_broker_is_one_line_and_exit_2(capsys):
    with __import__("socket").socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: refused
        port = sock.getsockname()[1]
        code = cli.main(["cast", "echo.say", "text=hi", "--exchange", "cli_exchange",
                         "--url", f"redis://:s3cret@127.0.0.1:{port}/0"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("tavrida: Cannot reach the broker at ")
    assert "s3cret" not in err


def test_missing_config_file_exits_2(tmp_path, capsys):
    missing = tmp_path / "nope.ini"
    assert cli.main(["run", str(missing)]) == 2
    assert "nope.ini" in capsys.readouterr().err


def test_environment_overrides_the_url(config_path, monkeypatch):
    path, url = config_path
    monkeypatch.setenv(config_file.URL_ENV, "memory://from-env")
    assert server.Server.from_config(str(path)).config.virtual_host == "from-env"


def test_ds_file_discovery(tmp_path):
    (tmp_path / "cli_services.py").write_text(SERVICES)
    (tmp_path / "services.ds").write_text(textwrap.dedent("""
        [echo]
        exchange = echo_exchange
        notifications = echo_events

        [tavrida_cli]
        exchange = cli_reply_exchange
    """))
    path = tmp_path / "services.ini"
    path.write_text(textwrap.dedent("""
        [connection]
        url = memory://ds-test
        [server]
        queue = q
        exchange = echo_exchange
        services = cli_services:EchoController
        [discovery]
        file = services.ds
    """))
    srv = server.Server.from_config(str(path))
    disc = srv.service_classes[0].get_discovery()
    assert disc.get_remote("tavrida_cli") == "cli_reply_exchange"
    assert disc.get_local_publisher("echo") == "echo_events"
