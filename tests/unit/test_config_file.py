"""Service config files: the schema, strict checking and errors that say where."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path
from typing import Dict, Tuple

import pytest

from tavrida import config, config_file

SERVICES = '''
from tavrida import dispatcher, service


@dispatcher.rpc_service("cf_echo")
class EchoController(service.ServiceController):

    @dispatcher.rpc_method(service="cf_echo", method="say")
    def say(self, request, proxy, text):
        return {"said": text}
'''

GOOD = """\
[connection]
url = {url}
prefetch_count = 10
publisher_confirms = no

[server]
queue = cf_queue
exchange = cf_exchange
services = cf_services:EchoController
workers = 2

[discovery]
remote.tavrida_cli = cf_reply

[logging]
level = warning
"""


@pytest.fixture
def write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """write(text) -> path of a config file beside the cf_services module."""
    monkeypatch.delenv(config_file.URL_ENV, raising=False)
    (tmp_path / "cf_services.py").write_text(SERVICES)

    def write(text: str) -> str:
        path = tmp_path / "services.ini"
        path.write_text(textwrap.dedent(text).format(url=f"memory://cf-{uuid.uuid4().hex}"))
        return str(path)

    return write


def error_of(path: str, **kwargs: str) -> str:
    with pytest.raises(config_file.ConfigError) as info:
        config_file.ServiceConfig(path, **kwargs)
    return str(info.value)


def test_a_good_file_gives_typed_values(write):
    conf = config_file.ServiceConfig(write(GOOD))
    assert (conf.queue, conf.exchange, conf.workers) == ("cf_queue", "cf_exchange", 2)
    assert conf.connection.prefetch_count == 10
    assert conf.connection.publisher_confirms is False
    assert conf.get("server", "workers") == 2
    assert conf.get("connection", "heartbeat_interval", 7.5) == 7.5  # absent: the default
    assert conf.values["discovery"] == {"remote.tavrida_cli": "cf_reply"}


CASES: Dict[str, Tuple[str, str, str]] = {
    # name: (replace this, with this, expected error after "PATH: ")
    "unknown key": ("workers = 2", "workerz = 2",
                    "[server] workerz: unknown key (did you mean workers?)"),
    "key in the wrong section": ("prefetch_count = 10", "workers = 3",
                                 "[connection] workers: unknown key (did you mean [server] "
                                 "workers?)"),
    "misspelt section": ("[server]", "[sever]",
                         "[sever]: unknown section (did you mean [server]?)"),
    "unknown section": ("[logging]", "[discovry]\n[logging]",
                        "[discovry]: unknown section (did you mean [discovery]?)"),
    "far from any section": ("[logging]", "[zzz]\n[logging]",
                             "[zzz]: unknown section; sections are [connection], [server], "
                             "[discovery], [logging], [metrics], [tracing], [health]"),
    "DEFAULT is no exception": ("[logging]", "[DEFAULT]\nworkers = 1\n[logging]",
                                "[DEFAULT]: unknown section; sections are [connection], "
                                "[server], [discovery], [logging], [metrics], [tracing], [health]"),
    "misspelt discovery kind": ("remote.tavrida_cli", "remot.tavrida_cli",
                                "[discovery] remot.tavrida_cli: unknown key "
                                "(did you mean remote.tavrida_cli?)"),
    "not a boolean": ("publisher_confirms = no", "publisher_confirms = perhaps",
                      "[connection] publisher_confirms: 'perhaps' is not true or false"),
    "not a number": ("prefetch_count = 10", "heartbeat_interval = soon",
                     "[connection] heartbeat_interval: 'soon' is not a number"),
    "empty number": ("workers = 2", "workers =",
                     "[server] workers: needs a value"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_mistake_names_file_section_and_key(write, case):
    old, new, expected = CASES[case]
    assert old in GOOD
    path = write(GOOD.replace(old, new, 1))
    assert error_of(path) == f"{path}: {expected}"


def test_an_unknown_section_is_reported_before_missing_keys(write):
    """``[sever]`` is the mistake, not the ``[server] queue`` it seems to lack."""
    path = write(GOOD.replace("[server]", "[sever]"))
    message = error_of(path)
    assert "unknown section (did you mean [server]?)" in message
    assert "is required" not in message


def test_a_missing_file_says_it_does_not_exist(tmp_path):
    path = str(tmp_path / "nope.ini")
    assert error_of(path) == f"{path}: the file does not exist"


def test_a_folder_is_not_a_config_file(tmp_path):
    assert error_of(str(tmp_path)) == f"{tmp_path}: is a folder, not a config file"


def test_a_bad_url_flag_is_blamed_on_the_flag_not_the_file(write):
    path = write(GOOD)
    assert error_of(path, url="nothing", url_flag="--url") == (
        "--url: Incorrect connection config: 'nothing' is not a URL")


def test_a_bad_url_in_the_environment_is_blamed_on_the_variable(write, monkeypatch):
    path = write(GOOD)
    monkeypatch.setenv(config_file.URL_ENV, "amqp://h:bad/")
    assert error_of(path).startswith(f"{config_file.URL_ENV}: ")


def test_a_bad_url_in_the_file_is_blamed_on_the_file(write):
    path = write(GOOD.replace("url = {url}", "url = nothing"))
    assert error_of(path).startswith(f"{path}: [connection] url: ")


def test_a_key_added_to_the_schema_is_accepted_and_typed(write, monkeypatch):
    """Other features declare their keys with one line in SCHEMA."""
    path = write(GOOD.replace("workers = 2", "workers = 2\nmax_retries = 4"))
    assert "[server] max_retries: unknown key" in error_of(path)
    monkeypatch.setitem(config_file.SCHEMA, "server",
                        {**config_file.SCHEMA["server"], "max_retries": int})
    assert config_file.ServiceConfig(path).get("server", "max_retries") == 4


def test_get_refuses_keys_the_schema_does_not_declare(write):
    conf = config_file.ServiceConfig(write(GOOD))
    with pytest.raises(KeyError):
        conf.get("server", "workerz")


def test_username_and_password_complete_a_url_without_them(write):
    path = write(GOOD.replace("url = {url}", "url = amqp://rabbit:5672/\nusername = svc\n"
                              "password = s3cret"))
    conf = config_file.ServiceConfig(path).connection
    assert (conf.host, conf.credentials) == ("rabbit", config.Credentials("svc", "s3cret"))


@pytest.mark.parametrize("extra, key", [("host = other", "host"), ("username = svc", "username")])
def test_a_url_and_the_keys_it_gives_are_one_too_many(write, extra, key):
    path = write(GOOD.replace("url = {url}", f"url = amqp://u:p@rabbit/\n{extra}"))
    assert error_of(path).startswith(f"{path}: [connection] {key}: the url gives ")


def test_a_url_flag_overrides_the_host_of_the_file(write):
    path = write(GOOD.replace("url = {url}", "host = rabbit\nport = 5673\nusername = svc"))
    assert config_file.ServiceConfig(path).connection.port == 5673
    conf = config_file.ServiceConfig(path, url="amqp://other/").connection
    assert (conf.host, conf.port, conf.credentials.username) == ("other", 5672, "svc")


def test_a_cluster_in_url_in_kombus_failover_form(write):
    path = write(GOOD.replace("url = {url}", "url = amqp://u:p@r1//;amqp://r2;amqp://r3"))
    conf = config_file.ServiceConfig(path).connection
    assert [u.split("@")[1] for u in conf.urls] == ["r1:5672/%2F", "r2:5672/%2F", "r3:5672/%2F"]


def test_a_cluster_in_urls_one_per_line(write):
    path = write(GOOD.replace("url = {url}", "urls = amqp://r1:5601\n  amqp://r2:5602\n"
                              "username = svc\npassword = pw"))
    conf = config_file.ServiceConfig(path).connection
    assert conf.urls == ["amqp://svc:pw@r1:5601/%2F", "amqp://svc:pw@r2:5602/%2F"]


def test_url_and_urls_are_one_too_many(write):
    path = write(GOOD.replace("url = {url}", "url = amqp://r1\nurls = amqp://r2"))
    assert error_of(path) == (f"{path}: [connection] urls: url gives the broker too: "
                              "keep one of them")


def test_a_bad_url_in_urls_is_blamed_on_urls(write):
    path = write(GOOD.replace("url = {url}", "urls = amqp://r1\n  redis://r2"))
    assert error_of(path).startswith(f"{path}: [connection] urls: ")
    assert "every URL of a cluster must use amqp://" in error_of(path)


def test_a_cluster_in_the_environment(write, monkeypatch):
    monkeypatch.setenv(config_file.URL_ENV, "amqp://r1;amqp://r2")
    conf = config_file.ServiceConfig(write(GOOD)).connection
    assert (conf.host, conf.alternates) == ("r1", ["amqp://r2"])


def test_queue_type_is_classic_unless_the_file_says_quorum(write):
    assert config_file.ServiceConfig(write(GOOD)).queue_type == "classic"
    path = write(GOOD.replace("workers = 2", "workers = 2\nqueue_type = Quorum", 1))
    assert config_file.ServiceConfig(path).queue_type == "quorum"


def test_an_unknown_queue_type_is_named_with_the_choices(write):
    path = write(GOOD.replace("workers = 2", "workers = 2\nqueue_type = mirrored", 1))
    assert error_of(path) == (f"{path}: [server] queue_type: 'mirrored' is not one of "
                              "classic, quorum")


# -- the file checked whole ---------------------------------------------------------------------

CALLER = '''
from tavrida import dispatcher, service


@dispatcher.rpc_service("cf_caller")
class CallerController(service.ServiceController):

    @dispatcher.rpc_method(service="cf_caller", method="ask")
    def ask(self, request, proxy, text):
        proxy.cf_users.get(name=text).call()
        proxy.publish(asked=text)

    @dispatcher.rpc_response_method(service="cf_users", method="get")
    def got(self, response, proxy, user):
        pass

    @dispatcher.rpc_error_method(service="cf_orders", method="place")
    def not_placed(self, error, proxy):
        pass
'''

CALLER_CONFIG = """\
[connection]
url = {url}

[server]
queue = cf_caller_queue
exchange = cf_caller_exchange
services = cf_caller:CallerController

[discovery]
remote.cf_users = users_exchange
remote.cf_orders = orders_exchange
"""


def test_three_mistakes_are_reported_in_one_run(write, capsys):
    from tavrida import cli

    path = write(GOOD.replace("workers = 2", "workerz = 2")
                 .replace("prefetch_count = 10", "prefetch_count = lots")
                 .replace("cf_services:EchoController", "cf_services:EchoControler"))
    with pytest.raises(config_file.ConfigError) as info:
        config_file.ServiceConfig(path)
    assert [str(error) for error in info.value.errors] == [
        f"{path}: [connection] prefetch_count: 'lots' is not a whole number",
        f"{path}: [server] workerz: unknown key (did you mean workers?)",
        f"{path}: [server] services: cannot import cf_services:EchoControler: module "
        "'cf_services' has no attribute 'EchoControler' (did you mean EchoController?)",
    ]
    assert str(info.value) == "\n".join(str(error) for error in info.value.errors)
    assert cli.main(["run", path]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"tavrida: {error}" for error in info.value.errors]


def test_a_misspelt_module_gets_a_suggestion_from_beside_the_file(write):
    path = write(GOOD.replace("cf_services:EchoController", "cf_servcies:EchoController"))
    assert error_of(path) == (
        f"{path}: [server] services: cannot import cf_servcies:EchoController: No module "
        "named 'cf_servcies' (did you mean cf_services?)")


def test_a_class_that_is_no_service_names_those_the_module_has(write):
    path = write(GOOD.replace("cf_services:EchoController", "cf_services:service"))
    assert error_of(path) == (
        f"{path}: [server] services: cf_services:service is not a ServiceController declared "
        "with rpc_service (cf_services has EchoController)")


def test_mistakes_in_several_sections_and_values_all_come(write):
    path = write(GOOD.replace("[logging]", "[tracing]\nenabled = maybe\n\n[logging]\nformat = xml")
                 .replace("queue = cf_queue\n", "").replace("level = warning", "level = LOUD"))
    with pytest.raises(config_file.ConfigError) as info:
        config_file.ServiceConfig(path)
    assert [str(error)[len(path) + 2:] for error in info.value.errors] == [
        "[tracing] enabled: 'maybe' is not true or false",
        "[server] queue: is required",
        "[logging] level: unknown level 'LOUD'",
        "[logging] format: 'xml' is not one of text, json",
    ]


@pytest.fixture
def caller(tmp_path, write):
    (tmp_path / "cf_caller.py").write_text(CALLER)
    return lambda text=CALLER_CONFIG: write(text)


def test_a_config_that_gives_every_called_service_has_no_warning(caller):
    conf = config_file.ServiceConfig(caller())
    assert conf.warnings == []


def test_a_service_the_handlers_call_missing_from_discovery_is_an_error(caller):
    path = caller(CALLER_CONFIG.replace("remote.cf_users", "remote.cf_usres"))
    with pytest.raises(config_file.ConfigError) as info:
        config_file.ServiceConfig(path)
    assert [str(error) for error in info.value.errors] == [
        f"{path}: [discovery] remote.cf_users: missing: cf_caller calls cf_users, and no "
        "exchange of cf_users is known"]


def test_an_entry_no_handler_uses_is_a_warning_with_a_did_you_mean(caller, caplog):
    path = caller(CALLER_CONFIG.replace("remote.cf_orders", "remote.cf_ordres"))
    conf = config_file.ServiceConfig(path)
    assert conf.warnings == [
        f"{path}: [discovery] remote.cf_orders: missing: cf_caller handles the responses or "
        "errors of cf_orders, and no exchange of cf_orders is known",
        f"{path}: [discovery] remote.cf_ordres: no handler here calls cf_ordres (did you mean "
        "cf_orders?); without a typo, the entry only routes answers to cf_ordres's calls",
    ]
    with caplog.at_level("WARNING", logger="tavrida.config_file"):
        conf.bind_discovery()
    assert [r.getMessage() for r in caplog.records] == conf.warnings


def test_a_central_discovery_turns_a_missing_service_into_a_warning(caller, monkeypatch):
    monkeypatch.setitem(config_file.SCHEMA, "discovery",
                        {**config_file.SCHEMA["discovery"], "central": str})
    path = caller(CALLER_CONFIG.replace("remote.cf_users = users_exchange",
                                        "central = somewhere"))
    conf = config_file.ServiceConfig(path)
    assert conf.warnings == [
        f"{path}: [discovery] remote.cf_users: missing: cf_caller calls cf_users, and no "
        "exchange of cf_users is known here"]


@pytest.mark.parametrize("section", ["connection", "discovery"])
def test_a_misspelt_section_is_the_one_mistake_not_the_keys_it_seems_to_lack(caller, section):
    path = caller(CALLER_CONFIG.replace(f"[{section}]", f"[{section[:-2]}]"))
    with pytest.raises(config_file.ConfigError) as info:
        config_file.ServiceConfig(path)
    assert [str(error) for error in info.value.errors] == [
        f"{path}: [{section[:-2]}]: unknown section (did you mean [{section}]?)"]


def test_the_entry_for_the_tavrida_commands_answers_is_no_warning(caller):
    path = caller(CALLER_CONFIG + "remote.tavrida_cli = cli_replies\nremote.billing = b\n")
    assert [w.split(": ", 1)[1] for w in config_file.ServiceConfig(path).warnings] == [
        "[discovery] remote.billing: no handler here calls billing; without a typo, the entry "
        "only routes answers to billing's calls"]
