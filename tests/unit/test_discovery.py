"""Discovery: service name to exchange maps, in memory and from ``.ds`` files."""

from __future__ import annotations

import textwrap

import pytest

from tavrida import discovery, exceptions

DS = """\
[service1]
exchange=service1_exchange
notifications=service1_notifications

[service2]
exchange=service2_exchange
notifications=service2_notifications

[service3]
exchange=service3_exchange
notifications=service3_notifications

[service4]
exchange=service4_exchange
"""


@pytest.fixture
def ds_file(tmp_path):
    path = tmp_path / "services.ds"
    path.write_text(DS, encoding="utf-8")
    return str(path)


def test_local_discovery_three_maps():
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("remote_service", "remote_service_exchange")
    disc.register_local_publisher("local_service", "local_service_exchange")
    disc.register_remote_publisher("remote_service", "remote_notifications_exchange")
    assert disc.get_remote("remote_service") == "remote_service_exchange"
    assert disc.get_local_publisher("local_service") == "local_service_exchange"
    assert disc.get_remote_publisher("remote_service") == "remote_notifications_exchange"
    assert disc.get_all_exchanges() == {
        "remote": {"remote_service": "remote_service_exchange"},
        "remote_publisher": {"remote_service": "remote_notifications_exchange"},
        "local_publisher": {"local_service": "local_service_exchange"},
    }


def test_local_discovery_is_an_abstract_discovery():
    assert isinstance(discovery.LocalDiscovery(), discovery.AbstractDiscovery)
    with pytest.raises(TypeError):
        discovery.AbstractDiscovery()


def test_unknown_names_raise_errors_naming_them():
    disc = discovery.LocalDiscovery()
    with pytest.raises(exceptions.UnableToDiscover) as info:
        disc.get_remote("ghost")
    assert "ghost" in str(info.value)
    with pytest.raises(exceptions.UnableToDiscover) as info:
        disc.get_remote_publisher("phantom")
    assert "phantom" in str(info.value)
    with pytest.raises(exceptions.PublisherEndpointNotFound) as info:
        disc.get_local_publisher("mute")
    assert "mute" in str(info.value)


def test_registration_overwrites_and_unregister_forgets():
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("svc", "old")
    disc.register_remote_service("svc", "new")
    assert disc.get_remote("svc") == "new"
    disc.unregister_remote_service("svc")
    disc.unregister_remote_service("never-registered")
    with pytest.raises(exceptions.UnableToDiscover):
        disc.get_remote("svc")
    disc.register_remote_publisher("p", "p_ex")
    disc.unregister_remote_publisher("p")
    disc.register_local_publisher("l", "l_ex")
    disc.unregister_local_publisher("l")
    assert disc.get_all_exchanges() == {"remote": {}, "remote_publisher": {},
                                        "local_publisher": {}}


def test_get_all_exchanges_is_a_copy():
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("svc", "ex")
    disc.get_all_exchanges()["remote"]["svc"] = "tampered"
    assert disc.get_remote("svc") == "ex"


@pytest.mark.parametrize("service_name, exchange_name", [("", "ex"), ("svc", ""), (None, "ex"),
                                                         ("svc", 5)])
def test_empty_names_are_refused(service_name, exchange_name):
    disc = discovery.LocalDiscovery()
    for register in (disc.register_remote_service, disc.register_remote_publisher,
                     disc.register_local_publisher):
        with pytest.raises(exceptions.IncorrectAMQPConfig):
            register(service_name, exchange_name)


def test_ds_file_every_section_is_a_remote_service(ds_file):
    disc = discovery.FileBasedDiscoveryService(ds_file, "service1")
    for n in range(1, 5):
        assert disc.get_remote(f"service{n}") == f"service{n}_exchange"
    assert disc.get_local_publisher("service1") == "service1_notifications"
    assert disc.service_exchange == "service1_exchange"
    with pytest.raises(exceptions.PublisherEndpointNotFound):
        disc.get_local_publisher("service2")
    with pytest.raises(exceptions.UnableToDiscover):
        disc.get_remote_publisher("service2")


def test_ds_file_subscriptions_become_remote_publishers(ds_file):
    disc = discovery.FileBasedDiscoveryService(ds_file, "service4",
                                               subscriptions=["service1", "service3"])
    assert disc.get_remote_publisher("service1") == "service1_notifications"
    assert disc.get_remote_publisher("service3") == "service3_notifications"
    # service4 has no notifications exchange of its own
    with pytest.raises(exceptions.PublisherEndpointNotFound):
        disc.get_local_publisher("service4")


@pytest.mark.parametrize("publisher", ["service4", "not_in_file"])
def test_cant_subscribe_to_a_publisher_without_notifications(ds_file, publisher):
    with pytest.raises(exceptions.CantRegisterRemotePublisher) as info:
        discovery.FileBasedDiscoveryService(ds_file, "service1", subscriptions=[publisher])
    text = str(info.value)
    assert "service1" in text and publisher in text and ds_file in text


def test_ds_file_service_not_in_the_file(ds_file):
    with pytest.raises(exceptions.UnknownService) as info:
        discovery.FileBasedDiscoveryService(ds_file, "service9")
    assert "service9" in str(info.value)


def test_ds_file_missing_or_undefined(tmp_path):
    with pytest.raises(exceptions.ConfigFileIsNotDefined):
        discovery.FileBasedDiscoveryService("", "service1")
    missing = str(tmp_path / "nope.ds")
    with pytest.raises(exceptions.IncorrectAMQPConfig) as info:
        discovery.FileBasedDiscoveryService(missing, "service1")
    assert missing in str(info.value)


@pytest.mark.parametrize("content, reason", [
    ("exchange=no_section\n", "not valid INI"),
    ("[svc]\nnotifications=svc_notifications\n", "section [svc] has no 'exchange'"),
])
def test_ds_file_malformed(tmp_path, content, reason):
    path = tmp_path / "bad.ds"
    path.write_text(textwrap.dedent(content), encoding="utf-8")
    with pytest.raises(exceptions.IncorrectAMQPConfig) as info:
        discovery.FileBasedDiscoveryService(str(path), "svc")
    assert reason in str(info.value)


def test_factory_without_path_gives_local_discovery():
    disc = discovery.DiscoveryFactory().get_discovery_service("service1")
    assert type(disc) is discovery.LocalDiscovery
    assert type(discovery.DiscoveryFactory(None).get_local_ds()) is discovery.LocalDiscovery


def test_factory_with_path_reads_the_ds_file(ds_file):
    factory = discovery.DiscoveryFactory(ds_file)
    disc = factory.get_discovery_service("service2", subscriptions=["service1"])
    assert isinstance(disc, discovery.FileBasedDiscoveryService)
    assert disc.get_local_publisher("service2") == "service2_notifications"
    assert disc.get_remote_publisher("service1") == "service1_notifications"
    with pytest.raises(exceptions.CantRegisterRemotePublisher):
        factory.get_file_ds("service2", ["service4"])
