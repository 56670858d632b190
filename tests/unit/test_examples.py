"""The examples run as documented, on the in-memory transport."""

from __future__ import annotations

import importlib.util
import pathlib
import uuid

import pytest

from tavrida.transports.memory import MemoryBroker

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def load(name):
    """Import an example file as a fresh module (its classes and discovery are its own)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}_{uuid.uuid4().hex}",
                                                  EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fresh_default_broker():
    """The example uses ``memory://`` (the shared broker "/"): start and end it empty."""
    MemoryBroker.reset("/")
    yield
    MemoryBroker.reset("/")


def test_hello_world_runs_and_prints_every_kind_of_message(capsys, fresh_default_broker):
    hello_world = load("hello_world")
    assert hello_world.main("memory://") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "done"
    expected = [
        "hello  <- request  client_app: param=123",
        "hello  <- request  client_app: param='fail'",
        "world  <- request  test_hello.hello: param=123",
        "world  <- request  test_hello.hello: param='fail'",
        "hello  <- response test_world.world: param='world response' "
        "context={'param': 'world response'}",
        "hello  <- error    test_world.world: {'class': '" + hello_world.__name__
        + ".WorldFailure', 'name': 'WorldFailure', 'message': 'world fails (param=fail)', "
        "'code': 42}",
    ]
    for line in expected:
        assert line in lines, line
    notifications = [line for line in lines if line.startswith("world  <- notification")]
    assert notifications == [
        "world  <- notification test_hello.hello: param='hello publication'"] * 2
    assert len(lines) == len(expected) + len(notifications) + 1


@pytest.mark.parametrize("name", ["pubsub", "middleware", "ds_discovery", "orders"])
def test_other_examples_run_to_done(capsys, fresh_default_broker, name):
    example = load(name)
    assert example.main("memory://") == 0
    assert capsys.readouterr().out.splitlines()[-1] == "done"


def test_orders_converts_typed_parameters_and_refuses_a_wrong_type(capsys, fresh_default_broker):
    orders = load("orders")
    assert orders.main("memory://") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "orders   <- place    ada: 2 line(s), express, by 2030-01-31"
    # The event and the answer travel on their own: either may be printed first.
    assert sorted(lines[1:3]) == ["client   <- answer   {'order_id': 1, 'lines': 2}",
                                  "shipping <- event    orders.order_placed: order 1, express"]
    assert lines[3:] == [
        "client   <- error    InvalidPayload: Invalid payload for orders.place: "
        "order.lines[0].sku: missing (expected str); order.lines[0].quantity: expected int, "
        "got str 'two'",
        "done",
    ]


@pytest.mark.parametrize("name, make_server", [("hello", "hello_server"),
                                               ("world", "world_server")])
def test_the_example_configs_run_the_servers_of_hello_world(monkeypatch, name, make_server):
    """examples/hello.ini and world.ini declare what hello_world.py's servers declare."""
    import importlib

    from tavrida import config_file
    from tavrida.server import Server

    monkeypatch.setenv(config_file.URL_ENV, "memory://")
    conf = config_file.ServiceConfig(str(EXAMPLES / f"{name}.ini"))
    assert conf.connection.is_memory
    from_config = Server.from_config(str(EXAMPLES / f"{name}.ini")).topology()
    hello_world = importlib.import_module("hello_world")  # the module the config imported
    assert from_config == getattr(hello_world, make_server)("memory://").topology()
