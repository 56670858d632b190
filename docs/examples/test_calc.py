"""The pytest example of docs/testing.rst: run it with ``python -m pytest docs/examples``."""

import pytest

from tavrida import discovery, dispatcher, exceptions, service, testing


@dispatcher.rpc_service("calc")
class CalcController(service.ServiceController):

    @dispatcher.rpc_method(service="calc", method="divide")
    def divide(self, request, proxy, a, b):
        return {"quotient": a / b}


@pytest.fixture
def cluster():
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("client", "client_exchange")  # where answers go
    CalcController.set_discovery(disc)
    with testing.MemoryCluster() as cluster:
        cluster.add_server([CalcController], queue_name="calc_queue",
                           exchange_name="calc_exchange")
        yield cluster


@pytest.fixture
def cli(cluster):
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("calc", "calc_exchange")
    disc.register_remote_service("client", "client_exchange")  # for blocking calls
    return cluster.client(disc, source="client")


def test_divide_answers(cluster, cli):
    cli.calc.divide(a=6, b=3).call()
    assert cluster.deliver() == 1
    [response] = cluster.sent_by("calc").responses
    assert response.payload == {"quotient": 2.0}


def test_failure_is_an_error_answer(cluster, cli):
    cli.calc.divide(a=1, b=0).call()
    cluster.deliver()  # the caller got an Error: not a test failure
    [error] = cluster.sent_by("calc").errors
    assert error.payload["name"] == "ZeroDivisionError"
    assert error.payload["class"] == "builtins.ZeroDivisionError"
    [failure] = cluster.failures  # what the handler raised
    assert isinstance(failure.exception, ZeroDivisionError)


def test_blocking_call(cluster, cli):
    assert cli.calc.divide(a=6, b=3).call(timeout=5) == {"quotient": 2.0}
    with pytest.raises(exceptions.RemoteError) as info:
        cli.calc.divide(a=1, b=0).call(timeout=5)
    assert info.value.remote_name == "ZeroDivisionError"


def test_failed_cast_is_dead_lettered(cluster, cli):
    cli.calc.divide(a=1, b=0).cast()
    with pytest.raises(testing.HandlerFailed):  # nobody was told: a test failure...
        cluster.deliver()
    cli.calc.divide(a=2, b=0).cast()
    cluster.deliver(expect_errors=ZeroDivisionError)  # ...unless the test expects it
    reasons = [headers["x-tavrida-dead-reason"] for headers, _ in
               cluster.dead_letters("calc_queue")]
    assert len(reasons) == 2 and "ZeroDivisionError" in reasons[0]
    assert cluster.sent_by("client").requests[0].payload == {"a": 1, "b": 0}
