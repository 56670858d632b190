"""``tavrida topology show|delete``: what the server of a config file declares, on the broker."""


import argparse
import dataclasses
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from tavrida import (
    config_file,
    diagram,
    wire,
)
from tavrida.server import Server
from tavrida.transports import Topology, create_transport

FORMATS = ("text", "json", "mermaid", "dot")
TOPOLOGY_EPILOG = """\
delete deletes the service's queue and dead-letter queue. It asks first
(--yes: do not ask) and refuses while a queue holds messages (--force: delete
them with their messages). Stop the service first. --exchanges also deletes
the service's own exchanges (server and notification exchanges); other
services' queues bound to them lose those bindings until their servers
declare them again. Other services' exchanges are never deleted."""


def add_parser(commands: Any) -> None:
    topology = commands.add_parser(
        "topology", help="show or delete what the server of a config file declares",
        description="Show or delete the queues, exchanges and bindings the server of a\n"
                    "config file declares.",
        epilog=TOPOLOGY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = topology.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="print them (without connecting unless --counts)")
    delete = actions.add_parser("delete", help="delete the service's queues on the broker",
                                epilog=TOPOLOGY_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    show.add_argument("config", metavar="CONFIG", nargs="+",
                      help="INI config file (several: the services of each, together)")
    delete.add_argument("config", metavar="CONFIG", help="INI config file")
    for sub in (show, delete):
        sub.add_argument("--url", help="broker URL (overrides the config file)")
    show.add_argument("--counts", action="store_true",
                      help="also ask the broker how many messages each queue holds")
    show.add_argument("--format", choices=FORMATS, default="text",
                      help="text (default), json, or a diagram of the services: who calls "
                           "and who hears whom (mermaid, dot)")
    show.add_argument("--json", action="store_const", const="json", dest="format",
                      help="print JSON (--format json)")
    delete.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    delete.add_argument("--force", action="store_true",
                        help="delete queues that hold messages, with their messages")
    delete.add_argument("--exchanges", action="store_true",
                        help="also delete the service's own exchanges")



def _declared(path: str, url: Optional[str]) -> Tuple[config_file.ServiceConfig, Topology,
                                                      Dict[str, str], List[str]]:
    """The config, the topology its server declares, a role per name, the own exchanges."""
    conf = config_file.ServiceConfig(path, url, url_flag="--url")
    conf.bind_discovery()
    server = Server(conf.connection, conf.queue, conf.exchange, conf.service_classes,
                    workers=conf.workers, queue_type=conf.queue_type,
                    max_attempts=conf.retry_policy.max_attempts,
                    retry_backoff=conf.retry_policy.backoff,
                    retry_backoff_max=conf.retry_policy.backoff_max)
    topology = server.topology()
    # Delay queues are listed, counted and deleted with the others.
    topology = dataclasses.replace(
        topology, queues=topology.queues + tuple(d.name for d in topology.delays))
    services = ", ".join(cls.service_name() for cls in conf.service_classes)
    roles = {conf.queue: f"queue of {services}",
             server.dead_letter_queue: f"dead letters of {conf.queue}"}
    for delay in topology.delays:
        roles[delay.name] = f"retries of {conf.queue} waiting {delay.delay_ms / 1000:g} s"
    own = [conf.exchange]
    for cls in conf.service_classes:
        exchanges = cls.get_discovery().get_all_exchanges()
        for kind, what in (("remote_publisher", "notifications of"), ("remote", "exchange of"),
                           ("local_publisher", "notifications of")):
            for service, exchange in exchanges[kind].items():
                roles[exchange] = f"{what} {service}"
        own.extend(exchanges["local_publisher"].values())
    roles[conf.exchange] = f"server exchange of {services}"
    own = list(dict.fromkeys(own))
    for exchange in own:
        roles[exchange] += " (own)"
    return conf, topology, roles, own


def _table(rows: Sequence[Tuple[str, ...]]) -> List[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  " + "  ".join([cell.ljust(width) for cell, width in zip(row, widths)]
                             + [row[-1]]).rstrip() for row in rows]


def _messages(size: Optional[int]) -> str:
    return "missing" if size is None else f"{size} message{'' if size == 1 else 's'}"


def show(args: argparse.Namespace) -> int:
    if args.format in ("mermaid", "dot"):
        configs = [config_file.ServiceConfig(path, args.url, url_flag="--url")
                   for path in args.config]
        picture = diagram.Diagram.of(configs)
        print(picture.mermaid() if args.format == "mermaid" else picture.dot(), end="")
        return 0
    shown = [_shown(path, args) for path in args.config]
    if args.format == "json":
        print(wire.dumps(shown[0] if len(shown) == 1 else shown))
    else:
        print("\n\n".join(str(text) for text in shown))
    return 0


def _shown(path: str, args: argparse.Namespace) -> Any:
    """What ``topology show`` prints of one config file: text, or a dict for JSON."""
    conf, topology, roles, own = _declared(path, args.url)
    sizes: Dict[str, Optional[int]] = {}
    if args.counts:
        transport = create_transport(conf.connection)
        try:
            sizes = {queue: transport.queue_size(queue) for queue in topology.queues}
        finally:
            transport.close()
    if args.format == "json":
        return {
            "url": conf.connection.safe_url,
            "queues": [dict({"name": q, "role": roles[q]},
                            **({"messages": sizes[q]} if args.counts else {}))
                       for q in topology.queues],
            "exchanges": [{"name": e, "role": roles.get(e, ""), "own": e in own}
                          for e in topology.exchanges],
            "bindings": [{"exchange": b.exchange, "queue": b.queue, "routing_key": b.routing_key}
                         for b in topology.bindings]}
    lines = [f"{conf.path}: the server on {conf.connection.safe_url} declares",
             "queues (durable):"]
    lines += _table([(q, roles[q], _messages(sizes[q]) if args.counts else "")
                     for q in topology.queues])
    lines.append("exchanges (durable, topic):")
    lines += _table([(e, roles.get(e, "")) for e in topology.exchanges])
    if topology.bindings:
        lines.append("bindings:")
        lines += _table([(f"{b.exchange} -> {b.queue}", f"routing key {b.routing_key}")
                         for b in topology.bindings])
    return "\n".join(lines)


def _confirmed(question: str) -> bool:
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        print()
        return False
    return answer.strip().lower() in ("y", "yes")


def delete(args: argparse.Namespace) -> int:
    conf, topology, roles, own = _declared(args.config, args.url)
    transport = create_transport(conf.connection)
    try:
        sizes = {queue: transport.queue_size(queue) for queue in topology.queues}
        full = {queue: size for queue, size in sizes.items() if size}
        if full and not args.force:
            for queue, size in full.items():
                print(f"tavrida: queue {queue} holds {_messages(size)}", file=sys.stderr)
            print("tavrida: deleted nothing: handle or move those messages first, or pass "
                  "--force to delete them with the queues", file=sys.stderr)
            return 1
        queues = [queue for queue in topology.queues if sizes[queue] is not None]
        exchanges = [e for e in topology.exchanges if e in own] if args.exchanges else []
        kept = [e for e in topology.exchanges if e not in exchanges]
        if not queues and not exchanges:
            print(f"nothing to delete on {conf.connection.safe_url}: "
                  f"no queue {' or '.join(topology.queues)}")
            return 0
        print(f"to delete on {conf.connection.safe_url}:")
        print("\n".join(_table([(f"queue {q}", _messages(sizes[q])) for q in queues]
                               + [(f"exchange {e}", roles.get(e, "")) for e in exchanges])))
        if kept:
            print(f"kept: exchange{'s' if len(kept) > 1 else ''} {', '.join(kept)}"
                  + ("" if args.exchanges else " (--exchanges deletes the service's own)"))
        if not args.yes and not _confirmed(
                "Delete them? Stop the service's servers first: messages a running server "
                "holds are not counted."):
            print("tavrida: not confirmed: deleted nothing", file=sys.stderr)
            return 1
        transport.delete(exchanges=exchanges, queues=queues)
    finally:
        transport.close()
    print(f"deleted {len(queues)} queue{'' if len(queues) == 1 else 's'}"
          + (f" and {len(exchanges)} exchange{'' if len(exchanges) == 1 else 's'}"
             if exchanges else ""))
    return 0
