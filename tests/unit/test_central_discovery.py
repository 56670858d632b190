"""Central discovery on memory://: records, conflicts, expiry, mixing, config, the command.

The broker-independent behaviour; tests/integration/test_central_discovery_brokers.py
runs the issue's scenarios on memory://, RabbitMQ and Redis alike.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import pathlib
import textwrap
import threading
import time
import uuid
from typing import Any, Iterator, List

import pytest

from tavrida import cli, config, config_file, discovery, dispatcher, exceptions, server, service
from tavrida.registry import record as record_mod
from tavrida.registry.command import rows
from tavrida.registry.record import Entry, MalformedRecord, Record
from tavrida.registry.store import open_store

SETTINGS = {"refresh": 0.2, "ttl": 2.0, "sync_timeout": 2.0}


@pytest.fixture
def url() -> str:
    return f"memory://central-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make(url: str) -> Iterator[Any]:
    """make(**kw) -> a CentralDiscovery of its own (as in another process), closed after."""
    made: List[discovery.CentralDiscovery] = []

    def build(**kwargs: Any) -> discovery.CentralDiscovery:
        disc = discovery.CentralDiscovery(url, shared=False, **{**SETTINGS, **kwargs})
        made.append(disc)
        return disc

    yield build
    for disc in made:
        disc.close()


def write(url: str, rec: Record) -> None:
    store = open_store(config.ConnectionConfig.from_url(url))
    try:
        store.write(rec.owner, rec.encode(), 1)
    finally:
        store.close()


# -- records ---------------------------------------------------------------


def test_a_record_survives_its_round_trip():
    rec = Record("h/1/a", {"svc": Entry("svc_ex", "svc_events", "svc_q")}, 1.0, 2.0, 60.0)
    assert record_mod.decode(rec.encode()) == rec


@pytest.mark.parametrize("raw, why", [
    (b"[1]", "not a JSON object"),
    (b"\xff", "not JSON"),
    (b'{"v": 2}', "version 2"),
    (b'{"v": 1, "owner": "", "services": {}}', "owner must be"),
    (b'{"v": 1, "owner": "o", "services": []}', "services must be an object"),
    (b'{"v": 1, "owner": "o", "services": {"s": {"exchange": 3}}}', "exchange must be"),
    (b'{"v": 1, "owner": "o", "services": {"s": {"exchange": "e", "role": "x"}}}', "role"),
    (b'{"v": 1, "owner": "o", "services": {}, "since": -1, "at": 0, "ttl": 0}', "since"),
    (b'{"v": 1, "owner": "o", "services": {}, "since": 0, "at": 0, "ttl": 0, "alive": 1}',
     "alive"),
])
def test_a_malformed_record_says_what_is_wrong(raw: bytes, why: str):
    with pytest.raises(MalformedRecord, match=why):
        record_mod.decode(raw)


# -- lookups -----------------------------------------------------------------


def test_an_unknown_name_fails_at_once_naming_the_store(make):
    disc = make()
    with pytest.raises(exceptions.UnableToDiscover, match=r"nobody \(not in central discovery "
                                                          r"at memory://central-"):
        disc.get_remote("nobody")


def test_local_registrations_override_central_ones(make):
    owner, caller = make(), make()
    owner.announce("svc", "central_ex")
    assert caller.wait_for("svc", "central_ex")
    caller.register_remote_service("svc", "local_ex")
    assert caller.get_remote("svc") == "local_ex"
    caller.unregister_remote_service("svc")
    assert caller.get_remote("svc") == "central_ex"


def test_notifications_of_a_registered_service_are_found(make):
    owner, caller = make(), make()
    owner.register_local_publisher("svc", "svc_events")
    owner.announce("svc", "svc_ex", queue="svc_q")
    assert caller.wait_for("svc", "svc_ex")
    assert caller.get_remote_publisher("svc") == "svc_events"
    assert caller.knows_exchange("svc_ex") and caller.knows_exchange("svc_events")
    assert not caller.knows_exchange("elsewhere")


def test_a_stopped_service_stays_as_last_known(make):
    owner, caller = make(), make()
    owner.announce("svc", "svc_ex")
    assert caller.wait_for("svc", "svc_ex")
    owner.withdraw("svc")
    directory = caller.directory
    assert directory.wait(lambda: not directory._resolved["svc"][1].alive, 2)
    assert caller.get_remote("svc") == "svc_ex"  # requests wait in its queue


def test_the_first_registration_holds_and_the_conflict_is_logged_on_both(
        make, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, logger="tavrida.discovery")
    first, second, caller = make(), make(), make()
    first.announce("svc", "first_ex")
    assert caller.wait_for("svc", "first_ex")
    second.announce("svc", "second_ex")
    assert second.directory.wait(lambda: len(second.directory._owners_of.get("svc", ())) == 2, 2)
    assert first.directory.wait(lambda: len(first.directory._owners_of.get("svc", ())) == 2, 2)
    assert caller.get_remote("svc") == second.get_remote("svc") == "first_ex"
    logged = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert any(level == "ERROR" and "claimed first by" in text and "second_ex" in text
               for level, text in logged), logged
    assert any(level == "WARNING" and "came first and holds" in text for level, text in logged)
    first.withdraw("svc")  # the first owner stops: the other one takes over
    assert caller.wait_for("svc", "second_ex", 2)


def test_an_expired_first_registration_gives_way_and_the_newest_is_last_known(url, make):
    now = time.time()
    write(url, Record("dead", {"svc": Entry("dead_ex")}, since=1.0, at=now - 100, ttl=5))
    caller = make()
    assert caller.get_remote("svc") == "dead_ex"  # the last known
    write(url, Record("live", {"svc": Entry("live_ex")}, since=now, at=now, ttl=60))
    assert caller.wait_for("svc", "live_ex", 2)
    write(url, Record("older", {"svc": Entry("older_ex")}, since=2.0, at=now - 200, ttl=5))
    assert caller.get_remote("svc") == "live_ex"


def test_an_owner_that_dies_expires_and_another_takes_over(url, make):
    now = time.time()
    write(url, Record("dying", {"svc": Entry("dying_ex")}, since=1.0, at=now, ttl=0.5))
    write(url, Record("other", {"svc": Entry("other_ex")}, since=2.0, at=now, ttl=60))
    caller = make()
    assert caller.get_remote("svc") == "dying_ex"
    assert caller.wait_for("svc", "other_ex", 5)  # its ttl lapsed with no heartbeat


def test_a_malformed_record_is_logged_and_ignored(url, make, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, logger="tavrida.discovery")
    store = open_store(config.ConnectionConfig.from_url(url))
    store.write("junk", b'{"v": 1}', 1)
    store.close()
    caller = make()
    with pytest.raises(exceptions.UnableToDiscover):
        caller.get_remote("junk")
    assert any("malformed record" in r.getMessage() for r in caplog.records)


def test_heartbeats_keep_a_record_live(make):
    owner, caller = make(), make()
    owner.announce("svc", "svc_ex")
    assert caller.wait_for("svc", "svc_ex")
    first_at = caller.directory._resolved["svc"][1].at
    assert caller.directory.wait(lambda: caller.directory._resolved["svc"][1].at > first_at, 2)


def test_an_unknown_store_scheme_is_a_clear_error():
    with pytest.raises(exceptions.IncorrectAMQPConfig, match="not on kombu\\+memory://"):
        discovery.CentralDiscovery("kombu+memory://").get_remote("x")


# -- servers, the reply guard --------------------------------------------------


@dispatcher.rpc_service("central_unit")
class Unit(service.ServiceController):

    @dispatcher.rpc_method(service="central_unit", method="ping")
    def ping(self, request: Any, proxy: Any) -> Any:
        return {"pong": True}


def test_a_server_registers_on_start_and_withdraws_on_close(url, make):
    Unit.set_discovery(make())
    caller = make()
    srv = server.Server(url, "unit_queue", "unit_exchange", [Unit])
    srv.start()
    assert caller.wait_for("central_unit", "unit_exchange")
    (entry, rec) = caller.directory._resolved["central_unit"]
    assert (entry.queue, entry.role, rec.alive) == ("unit_queue", "service", True)
    srv.close()
    directory = caller.directory
    assert directory.wait(lambda: not directory._resolved["central_unit"][1].alive, 2)


def test_reply_exchanges_must_be_any_or_known():
    with pytest.raises(exceptions.IncorrectAMQPConfig, match="reply_exchanges must be"):
        server.Server("memory://", "q", "e", [Unit], reply_exchanges="some")


def test_a_bad_call_naming_an_unknown_exchange_gets_no_error_answer(cluster, broker, make):
    """The Error answer of an unreadable call goes nowhere unknown either: dead-lettered."""
    Unit.set_discovery(discovery.LocalDiscovery())
    cluster.add_server([Unit], queue_name="guard_queue", exchange_name="guard_exchange",
                       reply_exchanges="known")
    spy = broker.spy("stranger_exchange")
    headers = broker.headers("central_unit.ping", reply_to="stranger",
                             **{"x-tavrida-reply-exchange": "stranger_exchange"})
    broker.publish("guard_exchange", "central_unit.ping", b"not json", headers)
    cluster.deliver(raise_errors=False)
    assert spy.collect() == []
    assert len(broker.dead("guard_queue")) == 1


def test_a_good_call_naming_an_unknown_exchange_is_refused(cluster, broker):
    Unit.set_discovery(discovery.LocalDiscovery())
    cluster.add_server([Unit], queue_name="guard_queue", exchange_name="guard_exchange",
                       reply_exchanges="known")
    spy = broker.spy("stranger_exchange")
    headers = broker.headers("central_unit.ping", reply_to="stranger",
                             **{"x-tavrida-reply-exchange": "stranger_exchange"})
    broker.publish("guard_exchange", "central_unit.ping", broker.body({}), headers)
    cluster.deliver()
    assert spy.collect() == []
    ((dead_headers, _),) = broker.dead("guard_queue")
    assert "unknown to discovery" in dead_headers["x-tavrida-dead-reason"]


# -- config files, the command, the example -------------------------------------

SERVICES = '''
from tavrida import dispatcher, service


@dispatcher.rpc_service("cf_central")
class CentralController(service.ServiceController):

    @dispatcher.rpc_method(service="cf_central", method="say")
    def say(self, request, proxy, text):
        return {"said": text}
'''


def test_a_config_file_asks_for_central_discovery(tmp_path: pathlib.Path, url: str):
    (tmp_path / "cf_central_services.py").write_text(SERVICES)
    path = tmp_path / "services.ini"
    path.write_text(textwrap.dedent(f"""\
        [connection]
        url = {url}
        [server]
        queue = cfc_queue
        exchange = cfc_exchange
        services = cf_central_services:CentralController
        reply_exchanges = known
        [discovery]
        central = true
        remote.legacy = legacy_exchange
        """))
    srv = server.Server.from_config(str(path))
    disc = srv.service_classes[0].get_discovery()
    try:
        assert isinstance(disc, discovery.CentralDiscovery)
        assert srv.reply_exchanges == "known"
        assert disc.get_remote("legacy") == "legacy_exchange"
        assert disc.config.url == config.ConnectionConfig.from_url(url).url
    finally:
        assert isinstance(disc, discovery.CentralDiscovery)
        disc.close()


def test_a_config_file_rejects_a_bad_reply_exchanges(tmp_path: pathlib.Path, url: str):
    (tmp_path / "cf_central_services.py").write_text(SERVICES)
    path = tmp_path / "services.ini"
    path.write_text(f"[connection]\nurl = {url}\n[server]\nqueue = q\nexchange = e\n"
                    "services = cf_central_services:CentralController\nreply_exchanges = some\n")
    with pytest.raises(config_file.ConfigError, match=r"\[server\] reply_exchanges: 'some' is "
                                                      r"not one of any, known"):
        config_file.ServiceConfig(str(path))


def test_the_command_sets_lists_and_removes(url: str, capsys: pytest.CaptureFixture[str]):
    assert cli.main(["discovery", "set", "legacy", "legacy_ex", "--publisher", "legacy_ev",
                     "--url", url]) == 0
    assert cli.main(["discovery", "list", "--url", url, "--json"]) == 0
    out = capsys.readouterr().out
    listed = json.loads(out[out.index("["):])
    assert [(r["service"], r["exchange"], r["notifications"], r["owner"], r["state"])
            for r in listed] == [("legacy", "legacy_ex", "legacy_ev", "manual/legacy", "manual")]
    assert cli.main(["discovery", "remove", "legacy", "--url", url]) == 0
    assert cli.main(["discovery", "list", "--url", url]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split() == [
        "SERVICE", "EXCHANGE", "NOTIFICATIONS", "ROLE", "OWNER", "STATE", "AGE"]
    assert cli.main(["discovery", "remove", "legacy", "--url", url]) == 1


def test_list_rows_say_each_records_owner_state_and_age():
    now = 1000.0
    table = rows([Record("a", {"s": Entry("x")}, 1.0, 990.0, 60.0),
                  Record("b", {"s": Entry("y")}, 2.0, 900.0, 60.0),
                  Record("c", {"s": Entry("z")}, 3.0, 999.0, 60.0, alive=False)], now)
    assert [(r["owner"], r["state"], r["age"]) for r in table] == [
        ("a", "live", 10.0), ("b", "expired", 100.0), ("c", "stopped", 1.0)]


def test_the_example_runs_with_no_hand_written_discovery(capsys: pytest.CaptureFixture[str]):
    example = pathlib.Path(__file__).resolve().parents[2] / "examples" / "central_discovery.py"
    spec = importlib.util.spec_from_file_location(f"example_{uuid.uuid4().hex}", example)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(f"memory://example-{uuid.uuid4().hex[:8]}") == 0
    out = capsys.readouterr().out
    assert "client <- response {'answer': 42}" in out
    assert "world  <- notification from central_hello.hello: param=21" in out
    assert out.splitlines()[-1] == "done"


def test_records_nobody_heartbeats_are_written_again_before_retention_drops_them(url):
    """A store that forgets (a stream's retention) gets hand-made records again from a watcher."""
    from tavrida.registry.directory import Directory
    from tavrida.transports.memory.store import MemoryStore

    class Forgetful(MemoryStore):
        retention = 0.4  # seconds: rewritten between 0.2 and 0.3 s after the last write

    manual = Record("manual/legacy", {"legacy": Entry("legacy_ex")}, 1.0, 1.0, 0, kind="manual")
    write(url, manual)
    seen: List[bytes] = []
    # The spy's own signal: a record written again as is changes nothing the watcher's
    # wait() would be woken by (it would only look again at its timeout).
    arrived = threading.Condition()

    def spied(raw: bytes) -> None:
        with arrived:
            seen.append(raw)
            arrived.notify_all()

    spy = open_store(config.ConnectionConfig.from_url(url))
    watcher = Directory(Forgetful(config.ConnectionConfig.from_url(url), "tavrida.discovery"),
                        refresh=0.1, ttl=1.0)
    try:
        spy.watch(spied, lambda ok: None)
        watcher.start()
        assert watcher.lookup("legacy") is not None
        with arrived:  # the first, then two rewrites
            assert arrived.wait_for(lambda: len(seen) >= 3, 5), seen
        assert all(record_mod.decode(raw) == manual for raw in seen)  # written again as is
    finally:
        watcher.close()
        spy.close()


def test_a_bad_central_url_names_its_key(tmp_path: pathlib.Path, url: str):
    (tmp_path / "cf_central_services.py").write_text(SERVICES)
    path = tmp_path / "services.ini"
    path.write_text(f"[connection]\nurl = {url}\n[server]\nqueue = q\nexchange = e\n"
                    "services = cf_central_services:CentralController\n"
                    "[discovery]\ncentral = true\ncentral_url = amqp://h:notaport/\n")
    with pytest.raises(config_file.ConfigError, match=r"\[discovery\] central_url: "):
        config_file.ServiceConfig(str(path))


def test_beside_central_discovery_a_ds_file_may_be_partial(tmp_path: pathlib.Path, url: str):
    (tmp_path / "cf_central_services.py").write_text(SERVICES)
    (tmp_path / "services.ds").write_text("[legacy]\nexchange = legacy_exchange\n")
    path = tmp_path / "services.ini"
    path.write_text(f"[connection]\nurl = {url}\n[server]\nqueue = q\nexchange = e\n"
                    "services = cf_central_services:CentralController\n"
                    "[discovery]\ncentral = true\nfile = services.ds\n")
    conf = config_file.ServiceConfig(str(path))  # no [cf_central] section: not an error
    conf.bind_discovery()
    disc = conf.service_classes[0].get_discovery()
    try:
        assert disc.get_remote("legacy") == "legacy_exchange"
    finally:
        assert isinstance(disc, discovery.CentralDiscovery)
        disc.close()
