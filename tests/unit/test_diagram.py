"""``tavrida topology show --format mermaid|dot``: the picture of examples/ and of odd cases."""

from __future__ import annotations

import pathlib
import re
import textwrap

import pydot
import pytest

from tavrida import cli, config_file
from tavrida.diagram import Diagram

# pydot's parser still calls pyparsing's old camelCase names.
pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated:DeprecationWarning")

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"
CONFIGS = [str(EXAMPLES / "hello.ini"), str(EXAMPLES / "world.ini")]


@pytest.fixture
def examples(monkeypatch):
    """The example configs, as they are (their URL is never used: nothing connects)."""
    monkeypatch.delenv(config_file.URL_ENV, raising=False)
    return [config_file.ServiceConfig(path) for path in CONFIGS]


def declared(configs):
    """Every queue and exchange the servers of ``configs`` declare."""
    from tavrida.server import Server

    names = set()
    for conf in configs:
        conf.bind_discovery()
        topology = Server(conf.connection, conf.queue, conf.exchange,
                          conf.service_classes).topology()
        names |= set(topology.queues) | set(topology.exchanges)
    return names


def dot_graph(text):
    [graph] = pydot.graph_from_dot_data(text)
    return graph


def dot_nodes(graph):
    nodes = {n.get_name().strip('"'): n.get("label").strip('"') for n in graph.get_nodes()
             if n.get_name() not in ("node", "edge", "graph")}
    for sub in graph.get_subgraphs():
        nodes.update(dot_nodes(sub))
    return nodes


def test_the_dot_of_the_examples_parses_and_names_every_queue_and_exchange(examples, capsys):
    assert cli.main(["topology", "show", *CONFIGS, "--format", "dot"]) == 0
    graph = dot_graph(capsys.readouterr().out)
    nodes = dot_nodes(graph)
    labels = set(nodes.values())
    assert declared(examples) <= labels
    assert declared(examples) == {"test_service", "test_service.dead", "test_world_service",
                                  "test_world_service.dead", "test_exchange",
                                  "test_world_exchange", "test_notification_exchange"}
    edges = {(e.get_source().strip('"'), e.get_destination().strip('"'),
              (e.get("label") or "").strip('"')) for e in graph.get_edges()}
    assert ("service:test_hello", "exchange:test_world_exchange",
            "calls test_world.world") in edges
    assert ("exchange:test_notification_exchange", "queue:test_world_service",
            "event test_hello.hello") in edges
    assert [g.get_label().strip('"') for g in graph.get_subgraphs()] == [
        "hello.ini: test_hello", "world.ini: test_world"]


def test_the_mermaid_of_the_examples_has_the_expected_nodes_and_edges(examples, capsys):
    assert cli.main(["topology", "show", *CONFIGS, "--format", "mermaid"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "flowchart LR"
    expected = [
        '    q_test_service[("test_service")]',
        '    s_test_hello["test_hello"]',
        '  x_test_notification_exchange{{"test_notification_exchange"}}',
        '  x_test_exchange -->|"test_hello.#"| q_test_service',
        "  q_test_service --> s_test_hello",
        '  s_test_hello -->|"calls test_world.world"| x_test_world_exchange',
        '  s_test_hello -->|"publishes test_hello.hello"| x_test_notification_exchange',
        '  x_test_notification_exchange -->|"event test_hello.hello"| q_test_world_service',
        '  s_test_world -.->|"answers test_hello"| x_test_exchange',
        '  q_test_world_service -.->|"dead letters"| q_test_world_service_dead',
    ]
    for line in expected:
        assert line in lines, line
    # Every edge joins declared nodes.
    ids = {re.match(r"\s+(\w+)[\[\{(]", line).group(1) for line in lines
           if re.match(r"\s+\w+[\[\{(]", line) and "subgraph" not in line}
    for line in lines:
        edge = re.match(r"\s+(\w+) -\.?->(?:\|[^|]*\|)? (\w+)$", line)
        if edge:
            assert {edge.group(1), edge.group(2)} <= ids, line


def test_the_docs_show_the_diagram_of_the_examples(examples):
    """docs/topology.rst holds the mermaid text the command writes today."""
    page = (EXAMPLES.parent / "docs" / "topology.rst").read_text()
    text = Diagram.of(examples).mermaid()
    assert textwrap.indent(text, "   ") in page


SERVICES = '''
from tavrida import dispatcher, service


@dispatcher.rpc_service("dg_orders")
class Orders(service.ServiceController):

    @dispatcher.rpc_method(service="dg_orders", method="place")
    def place(self, request, proxy, item):
        proxy.dg_stock.reserve(item=item).cast()
        proxy.dg_mail.send(to="x").call()

    @dispatcher.rpc_response_method(service="dg_mail", method="send")
    def sent(self, response, proxy):
        pass
'''


def test_services_no_config_runs_are_dashed_boxes(tmp_path, monkeypatch):
    monkeypatch.delenv(config_file.URL_ENV, raising=False)
    (tmp_path / "dg_services.py").write_text(SERVICES)
    path = tmp_path / "orders.ini"
    path.write_text(textwrap.dedent("""
        [connection]
        url = memory://dg
        [server]
        queue = dg_orders
        exchange = dg_orders_exchange
        services = dg_services:Orders
        [discovery]
        remote.dg_mail = dg_mail_exchange
        remote.dg_stock = dg_stock_exchange
    """))
    text = Diagram.of([config_file.ServiceConfig(str(path))]).dot()
    graph = dot_graph(text)
    nodes = dot_nodes(graph)
    assert nodes["external:dg_mail"] == "dg_mail"
    assert nodes["external:dg_stock"] == "dg_stock"
    edges = {(e.get_source().strip('"'), e.get_destination().strip('"'),
              (e.get("label") or "").strip('"')) for e in graph.get_edges()}
    assert ("service:dg_orders", "exchange:dg_stock_exchange", "calls dg_stock.reserve") in edges
    assert ("service:dg_orders", "exchange:dg_mail_exchange", "calls dg_mail.send") in edges
    assert ("exchange:dg_mail_exchange", "external:dg_mail", "") in edges
