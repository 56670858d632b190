"""Connection config: the 1.0 parameters, URLs, and passwords kept out of sight."""

from __future__ import annotations

import pytest

from tavrida import config, exceptions

SECRET = "s3cr:et@/pw"


def test_1_0_parameters_and_defaults():
    creds = config.Credentials("guest", "guest")
    conf = config.ConnectionConfig("localhost", credentials=creds, port=5672,
                                   reconnect_attempts=3, async_engine=True)
    assert conf.host == "localhost"
    assert conf.port == 5672
    assert conf.credentials == config.Credentials("guest", "guest")
    assert conf.virtual_host == "/"
    assert conf.reconnect_attempts == 3
    assert conf.async_engine is True
    assert conf.connection_attempts == 3
    assert conf.retry_delay == 1.0
    assert conf.socket_timeout == 3.0
    assert conf.scheme == "amqp"
    assert not conf.is_memory
    assert conf.persistent and conf.publisher_confirms
    assert conf.prefetch_count > 0
    default = config.ConnectionConfig("localhost", creds)
    assert default.async_engine is False
    assert default.reconnect_attempts == -1


def test_async_engine_is_accepted_everywhere():
    conf = config.ConnectionConfig.from_url("amqp://h", async_engine=True)
    assert conf.async_engine is True
    assert config.ConnectionConfig.from_url("memory://", async_engine=True).is_memory


def test_from_url_amqp():
    conf = config.ConnectionConfig.from_url("amqp://user:pa%40ss@rabbit.local:5673/my%2Fvhost")
    assert conf.scheme == "amqp"
    assert conf.host == "rabbit.local"
    assert conf.port == 5673
    assert conf.credentials == config.Credentials("user", "pa@ss")
    assert conf.virtual_host == "my/vhost"


@pytest.mark.parametrize("url, vhost, port", [
    ("amqp://guest:guest@127.0.0.1:5672//", "/", 5672),
    ("amqp://host", "/", 5672),
    ("amqp://host/", "/", 5672),
    ("amqps://host/prod", "prod", 5671),
])
def test_from_url_amqp_vhosts_and_default_ports(url, vhost, port):
    conf = config.ConnectionConfig.from_url(url)
    assert conf.virtual_host == vhost
    assert conf.port == port


def test_amqps_turns_on_ssl():
    assert config.ConnectionConfig.from_url("amqps://host").ssl is True
    assert config.ConnectionConfig.from_url("amqp://host").ssl is False


def test_from_url_redis():
    conf = config.ConnectionConfig.from_url("redis://:secret@cache:6380/2")
    assert conf.scheme == "redis"
    assert (conf.host, conf.port, conf.virtual_host) == ("cache", 6380, "2")
    assert conf.credentials.password == "secret"
    default = config.ConnectionConfig.from_url("redis://cache")
    assert (default.port, default.virtual_host) == (6379, "0")


@pytest.mark.parametrize("url, vhost, safe", [
    ("memory://", "/", "memory://"),
    ("memory://cluster-a", "cluster-a", "memory://cluster-a"),
])
def test_from_url_memory(url, vhost, safe):
    conf = config.ConnectionConfig.from_url(url)
    assert conf.is_memory
    assert conf.virtual_host == vhost
    assert conf.safe_url == conf.url == safe


def test_from_url_keyword_arguments_set_other_parameters():
    conf = config.ConnectionConfig.from_url("amqp://h", prefetch_count=7, persistent=False)
    assert conf.prefetch_count == 7
    assert conf.persistent is False


@pytest.mark.parametrize("url", ["localhost", "ftp://host", "amqp://host:notaport/"])
def test_from_url_refuses_what_it_cannot_use(url):
    with pytest.raises(exceptions.IncorrectAMQPConfig):
        config.ConnectionConfig.from_url(url)


def test_bad_url_error_does_not_show_the_password():
    with pytest.raises(exceptions.IncorrectAMQPConfig) as info:
        config.ConnectionConfig.from_url("amqp://user:topsecret@host:bad/")
    assert "topsecret" not in str(info.value)


def test_safe_url_masks_the_password_and_url_keeps_it():
    conf = config.ConnectionConfig("rabbit", config.Credentials("user", SECRET), port=5672)
    assert conf.safe_url == "amqp://user:***@rabbit:5672/%2F"
    assert SECRET not in conf.safe_url
    # url is the real thing (never logged); it round-trips through from_url
    again = config.ConnectionConfig.from_url(conf.url)
    assert again.credentials == config.Credentials("user", SECRET)
    assert again.virtual_host == "/"


@pytest.mark.parametrize("conf", [
    config.ConnectionConfig("rabbit", config.Credentials("user", SECRET)),
    config.ConnectionConfig.from_url("amqp://user:hunter2@rabbit/"),
    config.ConnectionConfig.from_url("redis://:hunter2@cache/1"),
])
def test_password_never_in_repr_or_to_dict(conf):
    password = conf.credentials.password
    assert password not in repr(conf)
    assert password not in str(conf)
    assert password not in repr(conf.credentials)
    assert password not in str(conf.to_dict())
    assert "***" in repr(conf)


def test_to_dict_lists_the_parameters():
    conf = config.ConnectionConfig("h", config.Credentials("u", "p"), heartbeat_interval=5)
    params = conf.to_dict()
    assert params["host"] == "h"
    assert params["heartbeat_interval"] == 5
    assert params["credentials"] == "Credentials('u', '***')"


@pytest.mark.parametrize("kwargs", [{"scheme": "carrier-pigeon"}, {"prefetch_count": -1}])
def test_bad_parameters_are_refused(kwargs):
    with pytest.raises(exceptions.IncorrectAMQPConfig):
        config.ConnectionConfig("h", **kwargs)


def test_as_config_takes_a_config_or_a_url():
    conf = config.ConnectionConfig("h")
    assert config.as_config(conf) is conf
    assert config.as_config("memory://x").virtual_host == "x"
    with pytest.raises(exceptions.IncorrectAMQPConfig):
        config.as_config(42)


def test_ssl_selects_amqps_and_its_port():
    conf = config.ConnectionConfig("h", ssl=True)
    assert (conf.scheme, conf.port, conf.ssl) == ("amqps", 5671, True)
    assert config.ConnectionConfig("h", ssl=True, port=5999).port == 5999


# -- several URLs: the nodes of a cluster ------------------------------------------------------

QUOTED = SECRET.replace(":", "%3A").replace("@", "%40").replace("/", "%2F")
CLUSTER = f"amqp://user:{QUOTED}@r1:5673/prod"


@pytest.mark.parametrize("given", [
    f"{CLUSTER};amqp://r2/prod;amqp://other:pw@r3:5674",
    [CLUSTER, "amqp://r2/prod", "amqp://other:pw@r3:5674"],
    f" {CLUSTER} ; amqp://r2/prod;;amqp://other:pw@r3:5674; ",
])
def test_several_urls_give_the_first_node_and_alternates(given):
    conf = config.ConnectionConfig.from_url(given)
    assert (conf.host, conf.port, conf.virtual_host) == ("r1", 5673, "prod")
    assert conf.credentials == config.Credentials("user", SECRET)
    assert conf.alternates == ["amqp://r2/prod", "amqp://other:pw@r3:5674"]
    assert [u.split("@")[-1] for u in conf.urls] == ["r1:5673/prod", "r2:5672/prod",
                                                      "r3:5674/prod"]


def test_an_alternate_without_a_user_takes_the_configs_credentials():
    """kombu's failover would take a URL without a user as guest: each URL is complete."""
    conf = config.ConnectionConfig.from_url("amqp://r1;amqp://r2;amqp://u:p@r3")
    conf.credentials = config.Credentials("svc", "pw")
    assert conf.urls == ["amqp://svc:pw@r1:5672/%2F", "amqp://svc:pw@r2:5672/%2F",
                         "amqp://u:p@r3:5672/%2F"]


def test_url_is_kombus_failover_form_and_reads_back():
    conf = config.ConnectionConfig.from_url(f"{CLUSTER};amqp://r2")
    assert conf.url == ";".join(conf.urls)
    again = config.ConnectionConfig.from_url(conf.url)
    assert again.urls == conf.urls
    assert again.credentials == config.Credentials("user", SECRET)


def test_every_password_is_masked_in_logs():
    conf = config.ConnectionConfig.from_url(f"{CLUSTER};amqp://r2;amqp://u:{QUOTED}x@r3")
    shown = [conf.safe_url, repr(conf), str(conf.to_dict()), *conf.safe_urls]
    assert all("s3cr" not in text for text in shown)
    assert conf.safe_url.count(":***@") == 3
    assert conf.to_dict()["alternates"] == conf.safe_urls[1:]


def test_one_url_behaves_as_before():
    conf = config.ConnectionConfig.from_url("amqp://guest:guest@127.0.0.1:5672//")
    assert conf.alternates == []
    assert conf.url == "amqp://guest:guest@127.0.0.1:5672/%2F"
    assert conf.urls == [conf.url]


def test_alternates_in_the_constructor():
    conf = config.ConnectionConfig("r1", config.Credentials("u", "p"),
                                   alternates=["amqp://r2:5680"])
    assert conf.urls == ["amqp://u:p@r1:5672/%2F", "amqp://u:p@r2:5680/%2F"]


def test_ssl_makes_every_url_amqps():
    conf = config.ConnectionConfig.from_url("amqp://r1;amqp://r2", ssl=True)
    assert [u.split("://")[0] for u in conf.urls] == ["amqps", "amqps"]


@pytest.mark.parametrize("given, reason", [
    ("amqp://r1;redis://r2", "every URL of a cluster must use amqp://"),
    ("amqp://r1/prod;amqp://r2/test", "must name the same virtual host ('prod')"),
    ("amqp://r1;amqp://r2:bad", "bad port in 'amqp://r2:bad'"),
    ("amqp://r1;amqp://", "'amqp://' names no host"),
    ("memory://a;memory://b", "memory:// is one in-process broker"),
    (" ; ", "no broker URL given"),
    ([], "no broker URL given"),
    (["amqp://r1", 5], "broker URLs must be strings"),
])
def test_bad_url_lists_are_refused_with_the_reason(given, reason):
    with pytest.raises(exceptions.IncorrectAMQPConfig) as info:
        config.ConnectionConfig.from_url(given)
    assert reason in str(info.value)


def test_a_bad_alternate_never_shows_its_password():
    with pytest.raises(exceptions.IncorrectAMQPConfig) as info:
        config.ConnectionConfig.from_url(f"amqp://r1;redis://u:{QUOTED}x@r2")
    assert "s3cr" not in str(info.value)


def test_publish_timeout_defaults_to_30_seconds_and_none_waits_for_ever():
    assert config.ConnectionConfig().publish_timeout == config.DEFAULT_PUBLISH_TIMEOUT == 30.0
    assert config.ConnectionConfig.from_url("memory://", publish_timeout=None).publish_timeout \
        is None
    assert config.ConnectionConfig(publish_timeout=2.5).publish_timeout == 2.5


@pytest.mark.parametrize("value", [0, -1])
def test_publish_timeout_must_be_positive(value):
    with pytest.raises(exceptions.IncorrectAMQPConfig, match="publish_timeout"):
        config.ConnectionConfig(publish_timeout=value)
