"""The pytest example of docs/testing.rst: run it with ``python -m pytest docs/examples``."""

import pytest

from tavrida import discovery, dispatcher, service, testing


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
    return cluster.client(disc, source="client")


def test_divide_answers(cluster, cli):
    cli.calc.divide(a=6, b=3).call()
    assert cluster.deliver() == 1
    [response] = cluster.sent_by("calc").responses
    assert response.payload == {"quotient": 2.0}


def test_failure_is_an_error_answer(cluster, cli):
    cli.calc.divide(a=1, b=0).call()
    with pytest.raises(testing.HandlerFailed) as failed:
        cluster.deliver()
    assert isinstance(failed.value.__cause__, ZeroDivisionError)
    [error] = cluster.sent_by("calc").errors
    assert error.payload["name"] == "ZeroDivisionError"
    assert error.payload["class"] == "builtins.ZeroDivisionError"


def test_failed_cast_is_dead_lettered(cluster, cli):
    cli.calc.divide(a=1, b=0).cast()
    cluster.deliver(raise_errors=False)
    [(headers, body)] = cluster.dead_letters("calc_queue")
    assert "ZeroDivisionError" in headers["x-tavrida-dead-reason"]
    assert cluster.sent_by("client").requests[0].payload == {"a": 1, "b": 0}
