"""Entry points: parsing ``service.method`` header values."""

from __future__ import annotations

import pytest

from tavrida import entry_point, exceptions


@pytest.mark.parametrize("value, cls, routing_key", [
    ("", entry_point.NullEntryPoint, ""),
    ("test_hello", entry_point.ServiceEntryPoint, "test_hello"),
    ("test_hello.hello", entry_point.EntryPoint, "test_hello.hello"),
])
def test_parse_kinds(value, cls, routing_key):
    ep = entry_point.parse(value)
    assert type(ep) is cls
    assert ep.to_routing_key() == routing_key
    assert str(ep) == routing_key


def test_parse_source_and_destination_flags():
    source = entry_point.parse("svc.m", source=True)
    destination = entry_point.parse("svc.m", destination=True)
    assert type(source) is entry_point.Source
    assert type(destination) is entry_point.Destination
    assert (source.service, source.method) == ("svc", "m")
    # a bare service name stays a service, whatever the flags
    assert type(entry_point.parse("svc", source=True)) is entry_point.ServiceEntryPoint


@pytest.mark.parametrize("value", ["a.b.c", ".m", "svc.", ".", 123, None, b"svc.m", ["svc"]])
def test_parse_refuses_bad_format(value):
    with pytest.raises(exceptions.WrongEntryPointFormat) as info:
        entry_point.parse(value)
    assert repr(value) in str(info.value)


def test_equality_hash_and_truth():
    ep = entry_point.EntryPoint("svc", "m")
    assert ep == entry_point.Destination("svc", "m")
    assert ep == "svc.m"
    assert ep != "svc.other"
    assert ep != entry_point.EntryPoint("other", "m")
    assert hash(ep) == hash(entry_point.Source("svc", "m"))
    assert {ep: 1}[entry_point.Destination("svc", "m")] == 1
    assert ep
    assert entry_point.ServiceEntryPoint("svc")
    assert not entry_point.NullEntryPoint()
    assert (ep == 42) is False


def test_copy_keeps_class_and_value():
    for ep in (entry_point.Source("a", "b"), entry_point.ServiceEntryPoint("a"),
               entry_point.NullEntryPoint()):
        copied = ep.copy()
        assert copied is not ep
        assert type(copied) is type(ep)
        assert copied == ep
    assert entry_point.parse(entry_point.Source("a", "b")) == "a.b"


def test_service_entry_point_has_no_method():
    ep = entry_point.ServiceEntryPoint("svc", "ignored")
    assert ep.method == ""
    assert ep.to_routing_key() == "svc"
    assert repr(ep) == "ServiceEntryPoint('svc')"
    assert repr(entry_point.EntryPoint("a", "b")) == "EntryPoint('a.b')"
