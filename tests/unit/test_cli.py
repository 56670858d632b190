"""The ``tavrida`` command and service config files, on the in-memory transport."""

import io
import json
import textwrap
import threading
import uuid

import pytest

import tavrida
from tavrida import cli, config, config_file, server
from tavrida.transports import Binding, OutgoingEnvelope, Topology, create_transport
from tavrida.transports.memory import MemoryBroker

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
from tavrida import dispatcher, messages, service


@dispatcher.rpc_service("echo")
class EchoController(service.ServiceController):

    @dispatcher.rpc_method(service="echo", method="say")
    def say(self, request, proxy, text, times=1):
        if text == "fail":
            raise ValueError("refused")
        return {"said": text * times}

    @dispatcher.rpc_method(service="echo", method="headers")
    def headers(self, request, proxy):
        return {"headers": messages.user_headers(request.headers)}

    @dispatcher.rpc_method(service="echo", method="context")
    def context(self, request, proxy):
        return {"context": request.context}
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


@pytest.mark.parametrize("extra", [[], ["--reply-exchange", "my_replies"]])
def test_call_needs_no_entry_for_the_cli_in_the_services_discovery(
        config_path, capsys, extra):
    path, url = config_path
    path.write_text(path.read_text().replace("remote.tavrida_cli = cli_reply_exchange\n", ""))
    srv = server.Server.from_config(str(path))
    srv.start()
    thread = threading.Thread(target=srv.run)
    thread.start()
    try:
        assert cli.main(["call", "echo.say", "text=hi", "--url", url,
                         "--exchange", "cli_exchange", "--timeout", "5", *extra]) == 0
    finally:
        srv.stop()
        thread.join(10)
    assert json.loads(capsys.readouterr().out) == {"said": "hi"}


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
     "[connection] prefetch_count: 'lots' is not a whole number"),
    ("connection", "colour", "colour = blue", "[connection] colour: unknown key"),
    ("connection", "publish_timeout", "publish_timeout = 0",
     "[connection] publish_timeout: '0' is not a positive number of seconds or none"),
    ("connection", "url", "url = nothing", "[connection] url:"),
    ("discovery", "bogus", "bogus.x = y", "[discovery] bogus.x: unknown key; [discovery] takes "
     "file, remote.<service>, remote_publisher.<service>, local_publisher.<service>"),
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
    path.write_text(path.read_text().replace("prefetch_count = 10",
                                             f"prefetch_count = 10\n{text}"))
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


def test_missing_config_file_exits_2_saying_so(tmp_path, capsys):
    missing = tmp_path / "nope.ini"
    assert cli.main(["run", str(missing)]) == 2
    assert capsys.readouterr().err == f"tavrida: {missing}: the file does not exist\n"


def test_an_unknown_section_is_reported_as_such(config_path, capsys):
    path, url = config_path
    path.write_text(path.read_text().replace("[server]", "[sever]"))
    assert cli.main(["run", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"tavrida: {path}: [sever]: unknown section (did you mean [server]?)\n")


@pytest.mark.parametrize("args, expected", [
    (["run", "{path}", "--url", "nothing"],
     "tavrida: --url: Incorrect connection config: 'nothing' is not a URL\n"),
    (["call", "echo.say", "--url", "nothing", "--exchange", "x"],
     "tavrida: --url: Incorrect connection config: 'nothing' is not a URL\n"),
    (["cast", "echo.say", "--url", "memory://", "--exchange", "x", "--header", "novalue"],
     "tavrida: --header 'novalue' is not key=value\n"),
    (["cast", "echo.say", "--url", "memory://", "--discovery", "{folder}/nope.ds"],
     "tavrida: --discovery: Incorrect connection config: cannot read discovery file "
     "{folder}/nope.ds: No such file or directory\n"),
])
def test_a_bad_flag_is_named_not_the_file(config_path, capsys, args, expected):
    path, url = config_path
    fill = {"path": str(path), "folder": str(path.parent)}
    assert cli.main([arg.format(**fill) for arg in args]) == 2
    assert capsys.readouterr().err == expected.format(**fill)


def test_a_bad_url_in_the_environment_names_the_variable(monkeypatch, capsys):
    monkeypatch.setenv(config_file.URL_ENV, "amqp://h:bad/")
    assert cli.main(["cast", "echo.say", "--exchange", "x"]) == 2
    assert capsys.readouterr().err.startswith(f"tavrida: {config_file.URL_ENV}: ")


def test_headers_reach_the_service(running, capsys):
    assert call(running, "echo.headers", "--header", "tenant=acme",
                "--header", "x-trace=a=b") == 0
    assert json.loads(capsys.readouterr().out) == {
        "headers": {"tenant": "acme", "x-trace": "a=b"}}


def test_tavrida_headers_cannot_be_overridden(running, capsys):
    assert call(running, "echo.headers", "--header", "correlation_id=mine") == 2
    assert "correlation_id" in capsys.readouterr().err


def test_headers_go_with_casts_and_notifications(config_path, capsys):
    path, url = config_path
    transport = create_transport(config.ConnectionConfig.from_url(url))
    try:
        transport.declare(Topology.build(["cli_exchange", "echo_events"], ["spy"], [
            Binding("spy", "cli_exchange", "#"), Binding("spy", "echo_events", "#")]))
        assert cli.main(["cast", "echo.say", "text=x", "--url", url, "--exchange",
                         "cli_exchange", "--header", "tenant=acme"]) == 0
        assert cli.main(["publish", "echo.said", "text=x", "--url", url, "--exchange",
                         "echo_events", "--header", "tenant=acme", "--header", "n=2"]) == 0
        seen = []
        transport.consume("spy", lambda d: (seen.append(d), d.ack()), 0)
        transport.drain(1.0)
        assert [(d.routing_key, d.headers["tenant"]) for d in seen] == [
            ("echo.say", "acme"), ("echo.said", "acme")]
        assert seen[1].headers["n"] == "2"  # header values are text
    finally:
        transport.close()


def test_version_comes_from_the_package(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"tavrida {tavrida.__version__}\n"


@pytest.mark.parametrize("command", [[], ["run"], ["call"], ["cast"], ["publish"], ["shell"],
                                     ["topology"], ["topology", "show"],
                                     ["topology", "delete"]])
def test_help_is_plain_text(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as info:
        cli.main([*command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: tavrida")
    for markup in ("``", ":mod:", ":class:", ":func:", "::\n"):
        assert markup not in out, f"reST {markup!r} in the help of {command}"
    assert max(len(line) for line in out.splitlines()) <= 80


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


# -- tavrida topology ---------------------------------------------------------------------------

DELAYS = ["cli_queue.retry.500", "cli_queue.retry.1000", "cli_queue.retry.2000",
          "cli_queue.retry.4000"]  # the default retry backoff's steps
QUEUES = ["cli_queue", "cli_queue.dead", *DELAYS]
OWN_EXCHANGES = ["cli_exchange", "echo_events"]


def declare_service(path, url, messages=0):
    """Declare what the server of ``path`` declares and put ``messages`` in its queue."""
    srv = server.Server.from_config(str(path))
    transport = create_transport(config.ConnectionConfig.from_url(url))
    try:
        transport.declare(srv.topology())
        for _ in range(messages):
            transport.publish(OutgoingEnvelope("cli_exchange", "echo.say", b"{}", {}))
    finally:
        transport.close()
    return MemoryBroker.get(url[len("memory://"):])


def test_topology_show_prints_what_the_server_declares_without_connecting(config_path, capsys):
    path, url = config_path
    # Nothing listens on port 1: show does not connect unless asked to count.
    assert cli.main(["topology", "show", str(path), "--url", "amqp://u:secret@127.0.0.1:1/"]) == 0
    out = capsys.readouterr().out
    assert "secret" not in out
    assert out.splitlines() == [
        f"{path}: the server on amqp://u:***@127.0.0.1:1/%2F declares",
        "queues (durable):",
        "  cli_queue             queue of echo",
        "  cli_queue.dead        dead letters of cli_queue",
        "  cli_queue.retry.500   retries of cli_queue waiting 0.5 s",
        "  cli_queue.retry.1000  retries of cli_queue waiting 1 s",
        "  cli_queue.retry.2000  retries of cli_queue waiting 2 s",
        "  cli_queue.retry.4000  retries of cli_queue waiting 4 s",
        "exchanges (durable, topic):",
        "  cli_exchange        server exchange of echo (own)",
        "  cli_reply_exchange  exchange of tavrida_cli",
        "  echo_events         notifications of echo (own)",
        "bindings:",
        "  cli_exchange -> cli_queue  routing key echo.#",
    ]


def test_topology_show_counts_and_json(config_path, capsys):
    path, url = config_path
    assert cli.main(["topology", "show", str(path), "--counts", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [(q["name"], q["messages"]) for q in shown["queues"]] == [
        (name, None) for name in QUEUES]  # not declared yet
    declare_service(path, url, messages=3)
    assert cli.main(["topology", "show", str(path), "--counts", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [(q["name"], q["messages"]) for q in shown["queues"]] == [
        ("cli_queue", 3), ("cli_queue.dead", 0), *[(name, 0) for name in DELAYS]]
    assert [(e["name"], e["own"]) for e in shown["exchanges"]] == [
        ("cli_exchange", True), ("cli_reply_exchange", False), ("echo_events", True)]
    assert shown["bindings"] == [
        {"exchange": "cli_exchange", "queue": "cli_queue", "routing_key": "echo.#"}]
    assert cli.main(["topology", "show", str(path), "--counts"]) == 0
    out = capsys.readouterr().out
    assert "  cli_queue             queue of echo                       3 messages" in out


def test_topology_delete_refuses_queues_that_hold_messages(config_path, capsys):
    path, url = config_path
    broker = declare_service(path, url, messages=2)
    assert cli.main(["topology", "delete", str(path), "--yes", "--exchanges"]) == 1
    err = capsys.readouterr().err
    assert "tavrida: queue cli_queue holds 2 messages" in err
    assert "deleted nothing" in err and "--force" in err
    assert broker.queue_size("cli_queue") == 2
    assert set(OWN_EXCHANGES) <= set(broker.exchange_names())


@pytest.mark.parametrize("answer", ["n\n", "", "whatever\n"])
def test_topology_delete_asks_and_does_nothing_without_a_yes(config_path, capsys, monkeypatch,
                                                              answer):
    path, url = config_path
    broker = declare_service(path, url)
    monkeypatch.setattr("sys.stdin", io.StringIO(answer))
    assert cli.main(["topology", "delete", str(path)]) == 1
    captured = capsys.readouterr()
    assert "Delete them?" in captured.out
    assert "not confirmed: deleted nothing" in captured.err
    assert set(QUEUES) <= set(broker.queue_names())


def test_topology_delete_deletes_the_queues_and_keeps_the_exchanges(config_path, capsys,
                                                                     monkeypatch):
    path, url = config_path
    broker = declare_service(path, url)
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    assert cli.main(["topology", "delete", str(path)]) == 0
    out = capsys.readouterr().out
    assert "  queue cli_queue             0 messages" in out
    assert "  queue cli_queue.retry.4000  0 messages" in out
    assert "kept: exchanges cli_exchange, cli_reply_exchange, echo_events" in out
    assert out.endswith("deleted 6 queues\n")
    assert not set(QUEUES) & set(broker.queue_names())
    assert {"cli_exchange", "cli_reply_exchange", "echo_events"} <= set(broker.exchange_names())
    assert cli.main(["topology", "delete", str(path)]) == 0  # again: nothing left to do
    assert capsys.readouterr().out.startswith("nothing to delete on memory://")


def test_topology_delete_force_and_exchanges(config_path, capsys):
    path, url = config_path
    broker = declare_service(path, url, messages=2)
    assert cli.main(["topology", "delete", str(path), "--yes", "--force", "--exchanges"]) == 0
    out = capsys.readouterr().out
    assert "  queue cli_queue             2 messages" in out
    assert "kept: exchange cli_reply_exchange\n" in out  # another service's: never deleted
    assert out.endswith("deleted 6 queues and 2 exchanges\n")
    assert not set(QUEUES) & set(broker.queue_names())
    assert not set(OWN_EXCHANGES) & set(broker.exchange_names())
    assert "cli_reply_exchange" in broker.exchange_names()
    assert broker.bindings() == []


def test_a_call_nobody_answers_exits_1_naming_the_destination(capsys):
    from tavrida import config
    from tavrida.transports.base import Binding, Topology
    from tavrida.transports.memory import MemoryBroker, MemoryTransport

    url = f"memory://cli-{uuid.uuid4().hex}"
    idle = MemoryTransport(config.ConnectionConfig.from_url(url))  # a queue nobody consumes
    idle.declare(Topology.build(["cli_exchange"], ["idle"],
                                [Binding("idle", "cli_exchange", "echo.#")]))
    try:
        code = cli.main(["call", "echo.say", "text=hi", "--url", url, "--exchange",
                         "cli_exchange", "--reply-exchange", "cli_reply_exchange",
                         "--timeout", "0.3"])
    finally:
        idle.close()
        MemoryBroker.reset(url.split("://")[1])
    assert code == 1
    assert capsys.readouterr().err.startswith("tavrida: No answer from echo.say")


# -- call --config, --context, shell ------------------------------------------------------------

def test_call_takes_the_exchange_and_url_from_the_services_own_config(running, config_path,
                                                                      capsys):
    path, url = config_path
    assert cli.main(["call", "echo.say", "text=hi", "--config", str(path),
                     "--timeout", "5"]) == 0
    assert json.loads(capsys.readouterr().out) == {"said": "hi"}
    assert cli.main(["cast", "echo.say", "text=hi", "--config", str(path)]) == 0


def test_call_config_with_url_flag_overrides_the_files_url(config_path, capsys):
    path, url = config_path
    # Nothing listens on port 1: the flag's URL is the one tried.
    assert cli.main(["cast", "echo.say", "text=hi", "--config", str(path), "--url",
                     "amqp://guest:guest@127.0.0.1:1//"]) == 2
    assert "127.0.0.1:1" in capsys.readouterr().err


def test_context_is_the_message_context(running, config_path, capsys):
    path, url = config_path
    assert cli.main(["call", "echo.context", "--config", str(path), "--context", "tenant=acme",
                     "--context", "n=2", "--timeout", "5"]) == 0
    assert json.loads(capsys.readouterr().out) == {"context": {"tenant": "acme", "n": 2}}
    assert cli.main(["call", "echo.context", "--config", str(path), "--context", "oops"]) == 2
    assert capsys.readouterr().err == "tavrida: --context 'oops' is not key=value\n"


@pytest.mark.parametrize("args, expected", [
    (["--url", "memory://"], "tavrida: Unable to discover the exchange of service ecko: name "
     "it with --exchange EXCHANGE, or --config CONFIG (a config file that runs ecko or names "
     "it in remote.ecko)\n"),
    (["--config", "{path}"], "tavrida: Unable to discover the exchange of service ecko in "
     "{path} (did you mean echo?): name it with --exchange EXCHANGE, or --config CONFIG (a "
     "config file that runs ecko or names it in remote.ecko)\n"),
])
def test_an_unknown_service_says_how_to_name_its_exchange(config_path, capsys, args, expected):
    path, url = config_path
    assert cli.main(["call", "ecko.say", "text=hi", *[a.format(path=path) for a in args]]) == 2
    assert capsys.readouterr().err == expected.format(path=path)


def test_config_and_discovery_are_one_too_many(config_path, capsys):
    path, url = config_path
    with pytest.raises(SystemExit) as info:
        cli.main(["call", "echo.say", "--config", str(path), "--discovery", "x.ds"])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_shell_answers_a_scripted_call_and_casts(running, config_path, capsys, monkeypatch):
    path, url = config_path
    script = "\n".join([
        "n.echo.say(text='hi', times=2)",
        "n.echo.say(text='fail')",
        "sent = n.echo.say(text='cast').cast()",
        "print(sent.message_type, sent.destination)",
        "n.echo.context().call(context={'k': 'v'}, timeout=5)",
    ]) + "\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(script))
    assert cli.main(["shell", str(path), "--timeout", "5"]) == 0
    out, err = capsys.readouterr()
    assert f"tavrida shell: {path} on memory://" in err  # the banner
    assert "  echo: context, headers, say" in err
    assert "also known" not in err  # remote.tavrida_cli is where answers come
    assert out.split(">>> ") == ["", "{'said': 'hihi'}\n", "", "", "request echo.say\n",
                                 "{'context': {'k': 'v'}}\n", ""]
    assert "RemoteError: ValueError: refused (code 1000)\n" in err


def test_shell_of_a_bad_config_exits_2(tmp_path, capsys):
    missing = tmp_path / "nope.ini"
    assert cli.main(["shell", str(missing)]) == 2
    assert capsys.readouterr().err == f"tavrida: {missing}: the file does not exist\n"


def test_topology_show_of_several_files_prints_each(config_path, tmp_path, capsys):
    path, url = config_path
    other = tmp_path / "other.ini"
    other.write_text(path.read_text().replace("cli_queue", "other_queue"))
    assert cli.main(["topology", "show", str(path), str(other)]) == 0
    out = capsys.readouterr().out
    assert out.count(": the server on memory://") == 2
    assert f"\n\n{other}: the server on" in out
    assert cli.main(["topology", "show", str(path), str(other), "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [s["queues"][0]["name"] for s in shown] == ["cli_queue", "other_queue"]


def test_publish_takes_the_notification_exchange_from_the_config(config_path, capsys):
    path, url = config_path
    transport = create_transport(config.ConnectionConfig.from_url(url))
    try:
        transport.declare(Topology.build(["echo_events"], ["spy"],
                                         [Binding("spy", "echo_events", "#")]))
        assert cli.main(["publish", "echo.said", "text=x", "--config", str(path),
                         "--context", "tenant=acme"]) == 0
        seen = []
        transport.consume("spy", lambda d: (seen.append(d), d.ack()), 0)
        transport.drain(1.0)
        assert [d.routing_key for d in seen] == ["echo.said"]
        assert json.loads(seen[0].body)["context"]["tenant"] == "acme"
    finally:
        transport.close()
