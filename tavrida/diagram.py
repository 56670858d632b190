"""A picture of a system: the services of config files, drawn as Mermaid or DOT.

``tavrida topology show CONFIG... --format mermaid|dot`` draws, without
connecting to the broker:

* each config file's server as a box holding its queue, dead-letter queue
  and services (the queue feeds the services; refused messages go to the
  dead-letter queue);
* the exchanges, and the bindings from an exchange to a queue (labelled
  with their routing key; a subscription's binding with the event);
* who calls whom: an edge from a service to the exchange of each service
  its handlers call or whose answers it handles (``calls svc.method``, read
  from the handlers, see :mod:`tavrida.service_graph`); dashed for a
  ``remote.<service>`` entry no handler is seen to use (``answers svc`` when
  that service calls this one, ``remote.svc`` otherwise);
* who publishes: an edge from a service to its notification exchange,
  labelled with the events its handlers publish;
* services no config here runs, reached through a known exchange, as
  dashed boxes.

:class:`Diagram` holds the nodes and edges; :meth:`Diagram.mermaid` and
:meth:`Diagram.dot` write them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Set, Tuple, Type

from tavrida import config_file, service_graph
from tavrida.server import Server
from tavrida.service import ServiceController

SERVICE, EXTERNAL, EXCHANGE, QUEUE = "service", "external", "exchange", "queue"
_PREFIX = {SERVICE: "s", EXTERNAL: "e", EXCHANGE: "x", QUEUE: "q"}


@dataclass
class Node:
    kind: str
    name: str
    label: str
    group: int = -1  # index of the config file's box, -1: none


@dataclass
class Edge:
    source: str  # node keys
    target: str
    label: str = ""
    dashed: bool = False


@dataclass
class Diagram:
    """Nodes (keyed by kind and name) and edges of the services of some config files."""

    groups: List[str] = field(default_factory=list)
    nodes: Dict[str, Node] = field(default_factory=dict)
    edges: List[Edge] = field(default_factory=list)
    #: service -> the services of these configs that call it.
    callers: Dict[str, Set[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, configs: Sequence[config_file.ServiceConfig]) -> "Diagram":
        """The diagram of the servers these config files describe."""
        diagram = cls()
        run_by_us = {c.service_name() for conf in configs for c in conf.service_classes}
        for conf in configs:
            for service_class in conf.service_classes:
                found = service_graph.shape(service_class)
                for called in found.called_services():
                    diagram.callers.setdefault(called, set()).add(found.name)
        for conf in configs:
            diagram._add_config(conf, run_by_us)
        return diagram

    def node(self, kind: str, name: str, label: str = "", group: int = -1) -> str:
        key = f"{kind}:{name}"
        if key not in self.nodes:
            self.nodes[key] = Node(kind, name, label or name, group)
        return key

    def edge(self, source: str, target: str, label: str = "", dashed: bool = False) -> None:
        if not any((e.source, e.target, e.label) == (source, target, label)
                   for e in self.edges):
            self.edges.append(Edge(source, target, label, dashed))

    def _add_config(self, conf: config_file.ServiceConfig, run_by_us: Set[str]) -> None:
        group = len(self.groups)
        names = ", ".join(c.service_name() for c in conf.service_classes)
        self.groups.append(f"{os.path.basename(conf.path)}: {names}")
        conf.bind_discovery()
        server = Server(conf.connection, conf.queue, conf.exchange, conf.service_classes,
                        queue_type=conf.queue_type,
                        max_attempts=conf.retry_policy.max_attempts)
        topology = server.topology()
        queue = self.node(QUEUE, conf.queue, group=group)
        dead = self.node(QUEUE, server.dead_letter_queue, group=group)
        self.edge(queue, dead, "dead letters", dashed=True)
        for exchange in topology.exchanges:
            self.node(EXCHANGE, exchange)
        subscribed: Dict[str, str] = {}
        for cls in conf.service_classes:
            found = service_graph.shape(cls)
            for ep in found.subscriptions:
                subscribed[f"{ep.service}.{ep.method}.#"] = f"event {ep.service}.{ep.method}"
        for binding in topology.bindings:
            self.edge(self.node(EXCHANGE, binding.exchange), self.node(QUEUE, binding.queue),
                      subscribed.get(binding.routing_key, binding.routing_key))
        for cls in conf.service_classes:
            service = self.node(SERVICE, cls.service_name(), group=group)
            self.edge(queue, service)
            self._add_peers(cls, service, run_by_us)

    def _add_peers(self, cls: Type[ServiceController], service: str, run_by_us: Set[str]) -> None:
        found = service_graph.shape(cls)
        exchanges = cls.get_discovery().get_all_exchanges()
        remote = exchanges["remote"]
        methods: Dict[str, List[str]] = {}
        for svc, method in sorted(found.calls | {(ep.service, ep.method)
                                                for ep in found.answers}):
            methods.setdefault(svc, []).append(method)
        for svc in sorted(set(methods) | set(remote)):
            called = svc in methods
            if called:
                label = f"calls {', '.join(f'{svc}.{m}' for m in methods[svc])}"
            elif svc in self.callers.get(found.name, ()):
                label = f"answers {svc}"
            else:
                label = f"remote.{svc}"
            if svc in remote:
                exchange = self.node(EXCHANGE, remote[svc])
                self.edge(service, exchange, label, dashed=not called)
                if svc not in run_by_us:
                    self.edge(exchange, self.node(EXTERNAL, svc), dashed=True)
            else:
                self.edge(service, self.node(EXTERNAL, svc, f"{svc} (exchange unknown)"),
                          label, dashed=True)
        own = found.name
        if own in exchanges["local_publisher"]:
            events = sorted(found.publishes)
            label = f"publishes {', '.join(events)}" if events else "publishes"
            self.edge(service, self.node(EXCHANGE, exchanges["local_publisher"][own]), label)

    # -- writing --------------------------------------------------------------------------------

    def _ids(self) -> Dict[str, str]:
        """A Mermaid-safe id per node key, unique."""
        ids: Dict[str, str] = {}
        for key, node in self.nodes.items():
            base = f"{_PREFIX[node.kind]}_{re.sub(r'[^0-9A-Za-z_]', '_', node.name)}"
            candidate, n = base, 1
            while candidate in ids.values():
                n += 1
                candidate = f"{base}_{n}"
            ids[key] = candidate
        return ids

    def mermaid(self) -> str:
        """A Mermaid flowchart (``flowchart LR``)."""
        ids = self._ids()
        shapes = {SERVICE: ('["', '"]'), EXTERNAL: ('(["', '"])'), EXCHANGE: ('{{"', '"}}'),
                  QUEUE: ('[("', '")]')}

        def node_line(key: str) -> str:
            node = self.nodes[key]
            opening, closing = shapes[node.kind]
            return f"{ids[key]}{opening}{_mermaid_text(node.label)}{closing}"

        lines = ["flowchart LR"]
        for index, title in enumerate(self.groups):
            lines.append(f'  subgraph server_{index}["{_mermaid_text(title)}"]')
            lines += [f"    {node_line(k)}" for k, n in self.nodes.items() if n.group == index]
            lines.append("  end")
        lines += [f"  {node_line(k)}" for k, n in self.nodes.items() if n.group < 0]
        for edge in self.edges:
            arrow = "-.->" if edge.dashed else "-->"
            label = f'|"{_mermaid_text(edge.label)}"|' if edge.label else ""
            lines.append(f"  {ids[edge.source]} {arrow}{label} {ids[edge.target]}")
        for kind, style in (("exchange", "fill:#fff3d6,stroke:#c90"),
                            ("queue", "fill:#e3f0ff,stroke:#36c"),
                            ("external", "stroke-dasharray:4 3")):
            members = [ids[k] for k, n in self.nodes.items() if n.kind == kind]
            if members:
                lines.append(f"  classDef {kind} {style}")
                lines.append(f"  class {','.join(members)} {kind}")
        return "\n".join(lines) + "\n"

    def dot(self) -> str:
        """A Graphviz DOT digraph."""
        attributes = {SERVICE: 'shape=box, style="rounded"',
                      EXTERNAL: 'shape=box, style="rounded,dashed"',
                      EXCHANGE: 'shape=hexagon, style=filled, fillcolor="#fff3d6"',
                      QUEUE: 'shape=cylinder, style=filled, fillcolor="#e3f0ff"'}

        def node_line(key: str) -> str:
            node = self.nodes[key]
            return f"{_dot_id(key)} [label={_dot_id(node.label)}, {attributes[node.kind]}];"

        lines = ["digraph tavrida {", "  rankdir=LR;", '  node [fontname="Helvetica"];',
                 '  edge [fontname="Helvetica", fontsize=10];']
        for index, title in enumerate(self.groups):
            lines.append(f"  subgraph cluster_{index} {{")
            lines.append(f"    label={_dot_id(title)}; style=dashed;")
            lines += [f"    {node_line(k)}" for k, n in self.nodes.items() if n.group == index]
            lines.append("  }")
        lines += [f"  {node_line(k)}" for k, n in self.nodes.items() if n.group < 0]
        for edge in self.edges:
            extra: List[Tuple[str, str]] = []
            if edge.label:
                extra.append(("label", _dot_id(edge.label)))
            if edge.dashed:
                extra.append(("style", "dashed"))
            attrs = f" [{', '.join(f'{k}={v}' for k, v in extra)}]" if extra else ""
            lines.append(f"  {_dot_id(edge.source)} -> {_dot_id(edge.target)}{attrs};")
        lines.append("}")
        return "\n".join(lines) + "\n"


def _mermaid_text(text: str) -> str:
    return text.replace('"', "#quot;")


def _dot_id(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
