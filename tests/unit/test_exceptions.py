"""Exceptions: the 1.0 names and bases, and messages that name the culprit."""

from __future__ import annotations

import pytest

from tavrida import exceptions

#: Exceptions the 1.0 docs list as BaseAckableException subclasses.
ACKABLE_1_0 = ["DuplicatedEntryPointRegistration", "DuplicatedServiceRegistration",
               "FieldMustExist", "FieldMustFullyDefined", "HandlerNotFound",
               "PublisherEndpointNotFound", "ServiceIsNotRegister", "ServiceNotFound",
               "SubscriptionHandlerNotFound", "UnableToDiscover", "UnknownService",
               "UnsuitableFieldValue", "WrongEntryPointFormat"]
#: The other exceptions of the 1.0 docs (BaseException subclasses).
OTHERS_1_0 = ["CantRegisterRemotePublisher", "ConfigFileIsNotDefined",
              "DuplicatedMethodRegistration", "ForbiddenHeaders", "IncorrectAMQPConfig",
              "IncorrectAMQPLibrary", "IncorrectMessage", "IncorrectOutgoingMessage",
              "NeedToBeController", "WrongResponse"]


@pytest.mark.parametrize("name", ACKABLE_1_0 + OTHERS_1_0)
def test_1_0_exceptions_exist_under_the_root(name):
    cls = getattr(exceptions, name)
    assert issubclass(cls, exceptions.TavridaError)
    assert issubclass(cls, exceptions.BaseException)
    assert not issubclass(cls, exceptions.NackableException)


@pytest.mark.parametrize("name", ACKABLE_1_0)
def test_1_0_ackable_exceptions_stay_ackable(name):
    assert issubclass(getattr(exceptions, name), exceptions.BaseAckableException)
    assert issubclass(getattr(exceptions, name), exceptions.AckableException)


def test_base_classes():
    assert exceptions.BaseException is exceptions.TavridaError
    assert issubclass(exceptions.TavridaError, Exception)
    assert issubclass(exceptions.BaseNackableException, exceptions.NackableException)
    assert issubclass(exceptions.BaseNackableException, exceptions.TavridaError)


def test_message_is_rendered_from_keyword_arguments():
    exc = exceptions.UnableToDiscover(service="test_world")
    assert str(exc) == exc.message == "Unable to discover the exchange of service test_world"
    assert exc.kwargs == {"service": "test_world"}
    assert exc.code == 1000


def test_missing_keyword_falls_back_to_the_template():
    exc = exceptions.UnableToDiscover()
    assert str(exc) == exceptions.UnableToDiscover.message_template


def test_explicit_message_wins():
    assert str(exceptions.TavridaError("plain words")) == "plain words"
    assert str(exceptions.TavridaError()) == "An unknown tavrida error occurred"


def test_remote_error_carries_the_error_payload_fields():
    exc = exceptions.RemoteError(remote_class="app.Failure", remote_name="Failure",
                                 remote_message="went wrong", code=42)
    assert (exc.remote_class, exc.remote_name, exc.remote_message, exc.code) == (
        "app.Failure", "Failure", "went wrong", 42)
    assert str(exc) == "app.Failure: went wrong"


def test_unroutable_is_a_publish_failure_naming_exchange_and_routing_key():
    exc = exceptions.Unroutable(exchange="ex", routing_key="svc.m", reason="nobody")
    assert isinstance(exc, exceptions.PublishFailed)
    assert (exc.exchange, exc.routing_key) == ("ex", "svc.m")
    assert "'ex'" in str(exc) and "'svc.m'" in str(exc)


def test_connection_failed_carries_the_masked_url_and_the_cause():
    cause = ConnectionRefusedError(111, "Connection refused")
    exc = exceptions.ConnectionFailed(safe_url="amqp://guest:***@h:5672/%2F", cause=cause,
                                      reason="timed out")
    assert isinstance(exc, exceptions.TavridaError)
    assert not isinstance(exc, exceptions.PublishFailed)
    assert exc.safe_url == "amqp://guest:***@h:5672/%2F" and exc.cause is cause
    assert str(exc) == "Cannot reach the broker at amqp://guest:***@h:5672/%2F: timed out"


def test_a_publish_that_gives_up_is_both_connection_failed_and_publish_failed():
    exc = exceptions.PublishConnectionFailed(safe_url="redis://h:6379/0", reason="down",
                                             failed={0: "down"}, envelopes=["e"])
    assert isinstance(exc, exceptions.ConnectionFailed)
    assert isinstance(exc, exceptions.PublishFailed)
    assert exc.failed == {0: "down"} and exc.envelopes == ["e"]
    assert exc.safe_url == "redis://h:6379/0"
