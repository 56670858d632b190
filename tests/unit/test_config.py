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


def test_publish_timeout_defaults_to_30_seconds_and_none_waits_for_ever():
    assert config.ConnectionConfig().publish_timeout == config.DEFAULT_PUBLISH_TIMEOUT == 30.0
    assert config.ConnectionConfig.from_url("memory://", publish_timeout=None).publish_timeout \
        is None
    assert config.ConnectionConfig(publish_timeout=2.5).publish_timeout == 2.5


@pytest.mark.parametrize("value", [0, -1])
def test_publish_timeout_must_be_positive(value):
    with pytest.raises(exceptions.IncorrectAMQPConfig, match="publish_timeout"):
        config.ConnectionConfig(publish_timeout=value)
