"""The ``tavrida`` command: run services from a config file, call them from a shell.

::

    tavrida run services.ini [--url URL]
    tavrida call test_hello.hello param=123 --exchange test_exchange [--timeout 5]
    tavrida cast test_hello.hello param=123 --exchange test_exchange
    tavrida publish orders order_placed order_id=1 --exchange orders_events
    tavrida call test_hello.hello param=123 --config hello.ini [--context k=v]
    tavrida shell services.ini [--timeout 10]
    tavrida asyncapi services.ini [more.ini ...] [-o asyncapi.json]
    tavrida topology show services.ini... [--counts] [--format text|json|mermaid|dot]
    tavrida topology delete services.ini [--yes] [--force] [--exchanges]
    tavrida --version

``publish SERVICE EVENT`` (or ``SERVICE.EVENT``) publishes a named event
(:mod:`tavrida.events`); ``asyncapi`` writes the AsyncAPI document of the
services of config files (:mod:`tavrida.asyncapi`).
``key=value`` arguments are read as JSON when they parse (``n=1`` is a
number, ``s='"1"'`` a string) and as text otherwise. The broker URL comes
from ``--url``, then ``TAVRIDA_URL``, then the config file; ``call``,
``cast`` and ``publish`` default to RabbitMQ on localhost. ``--config``
takes the URL and the exchanges from a service's config file instead (see
:meth:`tavrida.config_file.ServiceConfig.client_discovery`). ``--header k=v``
(repeatable) adds a user header (its value is text) to what they send,
``--context k=v`` a key of the message context. ``shell`` is a Python
prompt with a client bound to a config file (:mod:`tavrida.shell`).

``topology show`` prints the queues, exchanges and bindings the server of a
config file declares, without connecting (``--counts`` also asks the broker
how many messages each queue holds); ``--format mermaid|dot`` draws the
services of all the files given (:mod:`tavrida.diagram`). ``topology delete`` deletes the
service's queues (its queue, dead-letter queue and retry delay queues) after asking (``--yes``
does not ask); it refuses while a queue holds messages unless ``--force``.
``--exchanges`` also deletes the service's own exchanges (its server
exchange and notification exchanges): other services' queues bound to them
lose those bindings until their servers declare them again. The exchanges of
other services are never deleted.

Exit codes: 0 done, 1 the remote service answered with an error or did not
answer in time (or ``topology delete`` refused or was not confirmed), 2 bad
arguments or config, or the broker refused or could not be reached (one line
on stderr says why: ``tavrida: Cannot reach the broker at URL: ...``, the
password masked; ``call``, ``cast`` and ``publish`` do not log their
reconnect attempts).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

import simplejson

import tavrida
from tavrida import (
    asyncapi,
    class_path,
    client,
    config_file,
    defaults,
    discovery,
    entry_point,
    events,
    exceptions,
    shell,
    wire,
)
from tavrida import config as config_mod
from tavrida.cli import topology
from tavrida.registry import command as registry_command
from tavrida.server import Server

DEFAULT_URL = defaults.CLI_URL
DEFAULT_SOURCE = config_file.CLI_CALLER
#: What ``topology show --format`` prints.


def _payload(pairs: List[str], what: str = "argument") -> Dict[str, Any]:
    payload: Dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} {pair!r} is not key=value")
        try:
            payload[key] = simplejson.loads(raw)
        except ValueError:
            payload[key] = raw
    return payload


DESCRIPTION = "Run tavrida services from a config file, call them from a shell."
EPILOG = f"""\
key=value arguments are read as JSON when they parse (n=1 is a number,
s='"1"' a string) and as text otherwise. The broker URL comes from --url,
then ${config_file.URL_ENV}, then the config file.

exit codes: 0 done; 1 the service answered with an error or not in time,
or topology delete refused; 2 bad arguments or config, or broker trouble."""


def _headers(pairs: Sequence[str]) -> Dict[str, str]:
    headers: Dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--header {pair!r} is not key=value")
        headers[key.strip()] = value
    return headers


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tavrida", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"tavrida {tavrida.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run the services a config file names")
    run.add_argument("config", help="INI config file")
    run.add_argument("--url", help="broker URL (overrides the config file)")
    for name, text in (("call", "call a method and print the answer"),
                       ("cast", "send a request without waiting"),
                       ("publish", "publish event EVENT of SERVICE (SERVICE EVENT k=v ...)")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("target", metavar="SERVICE.METHOD" if name != "publish" else "SERVICE",
                         help="where it goes (publish: SERVICE EVENT, or SERVICE.EVENT)")
        sub.add_argument("params", nargs="*", metavar="key=value",
                         help="the payload; values are JSON when they parse, else text")
        sub.add_argument("--url", help=f"broker URL (default: $TAVRIDA_URL or {DEFAULT_URL})")
        sub.add_argument("--exchange", help="exchange of the service (or its notifications)")
        where = sub.add_mutually_exclusive_group()
        where.add_argument("--config", metavar="CONFIG",
                           help="a service's config file: its broker URL, its own [server] "
                                "exchange and its [discovery] entries")
        where.add_argument("--discovery", metavar="DS_FILE",
                           help=".ds file to find exchanges in")
        sub.add_argument("--header", action="append", default=[], metavar="KEY=VALUE",
                         help="add a user header (text value); repeatable")
        sub.add_argument("--context", action="append", default=[], metavar="KEY=VALUE",
                         help="set a key of the message context (JSON when it parses, else "
                              "text); repeatable")
        if name != "publish":
            sub.add_argument("--source", default=DEFAULT_SOURCE,
                             help=f"caller service name (default {DEFAULT_SOURCE})")
            sub.add_argument("--correlation-id", default="",
                             help="correlation id to send (default: a new one)")
        if name == "call":
            sub.add_argument("--timeout", type=float, default=defaults.CLI_TIMEOUT,
                             help="seconds to wait")
            sub.add_argument("--reply-exchange",
                             help="exchange the service answers the caller on (default: the "
                                  "caller's in --discovery, else --exchange, else "
                                  "tavrida.replies); a 2.0 service needs no entry for the "
                                  "caller in its discovery")
    shell_parser = commands.add_parser(
        "shell", help="a Python prompt with a client n bound to a config file",
        description="A Python prompt with a client n bound to CONFIG: n.SERVICE.METHOD(k=v)\n"
                    "calls and shows the answer; add .cast() to cast.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    shell_parser.add_argument("config", metavar="CONFIG", help="INI config file of a service")
    shell_parser.add_argument("--url", help="broker URL (overrides the config file)")
    shell_parser.add_argument("--timeout", type=float, default=shell.DEFAULT_TIMEOUT,
                              help="seconds a call waits (default %(default)g)")
    shell_parser.add_argument("--source", default=DEFAULT_SOURCE,
                              help=f"caller service name (default {DEFAULT_SOURCE})")
    topology.add_parser(commands)
    registry_command.add_parser(commands)
    asyncapi.add_command(commands)
    return parser



def _discovery(args: argparse.Namespace, service: str,
               conf: Optional[config_file.ServiceConfig]) -> discovery.LocalDiscovery:
    disc: discovery.LocalDiscovery
    if conf is not None:
        disc = conf.client_discovery()
    elif args.discovery:
        try:
            disc = discovery.FileBasedDiscoveryService(
                args.discovery, "")
        except exceptions.TavridaError as exc:
            raise ValueError(f"--discovery: {exc.message}") from None
    else:
        disc = discovery.LocalDiscovery()
    if args.exchange:
        if args.command == "publish":
            disc.register_local_publisher(service, args.exchange)
        else:
            disc.register_remote_service(service, args.exchange)
    if args.command == "call":
        reply = args.reply_exchange or (None if args.discovery or conf else args.exchange)
        if reply:
            disc.register_remote_service(entry_point.parse(args.source).service, reply)
    if args.command != "publish":
        _check_known(disc, service, conf)
    return disc


def _check_known(disc: discovery.LocalDiscovery, service: str,
                 conf: Optional[config_file.ServiceConfig]) -> None:
    """A clear error, saying how to name it, for a service whose exchange is unknown."""
    known = disc.get_all_exchanges()["remote"]
    if service in known:
        return
    where = f" in {conf.path}" if conf else ""
    hint = class_path.did_you_mean(service, known)
    raise ValueError(f"Unable to discover the exchange of service {service}{where}{hint}: "
                     f"name it with --exchange EXCHANGE, or --config CONFIG (a config file "
                     f"that runs {service} or names it in remote.{service})")


def _send(args: argparse.Namespace) -> int:
    if args.command == "publish":  # SERVICE EVENT k=v, or SERVICE.EVENT k=v
        service, event, args.params = events.cli_target(args.target, args.params)
        args.target = f"{service}.{event}"
    target = entry_point.parse(args.target)
    if not target.method:
        raise ValueError(f"{args.target!r} is not SERVICE.METHOD")
    payload = _payload(args.params)
    # One line on failure: the retries' warnings would repeat what it says.
    logging.basicConfig(level=logging.ERROR, format="tavrida: %(message)s")
    conf = (config_file.ServiceConfig(args.config, args.url, url_flag="--url")
            if args.config else None)
    url = conf.connection if conf else _url_config(args.url)
    headers = _headers(args.header)
    context = _payload(args.context, "--context")
    disc = _discovery(args, target.service, conf)
    source = target.service if args.command == "publish" else args.source
    with client.RPCClient(url, disc, source=source, headers=headers,
                          context=context or None) as cli:
        if args.command == "publish":
            cli.publish_event(target.method, **payload)
            return 0
        call = getattr(getattr(cli, target.service), target.method)(**payload)
        if args.command == "cast":
            call.cast(correlation_id=args.correlation_id)
            return 0
        try:
            answer = call.call(correlation_id=args.correlation_id, timeout=args.timeout)
        except exceptions.RemoteError as exc:
            print(wire.dumps({"error": {"class": exc.remote_class, "name": exc.remote_name,
                                        "message": exc.remote_message, "code": exc.code}}))
            return 1
        except exceptions.CallTimeout as exc:
            print(f"tavrida: {exc}", file=sys.stderr)
            return 1
        print(wire.dumps(answer))
        return 0


def _url_config(url: Optional[str]) -> config_mod.ConnectionConfig:
    """The broker config of ``--url``, else ``$TAVRIDA_URL``, else localhost; errors name them."""
    origin = "--url" if url else config_file.URL_ENV
    url = url or os.environ.get(config_file.URL_ENV)
    try:
        return config_mod.ConnectionConfig.from_url(url or DEFAULT_URL)
    except exceptions.IncorrectAMQPConfig as exc:
        raise ValueError(f"{origin}: {exc.message}") from None


def _run(args: argparse.Namespace) -> int:
    conf = config_file.ServiceConfig(args.config, args.url, url_flag="--url")
    conf.configure_logging()
    conf.bind_discovery()
    server = Server(conf.connection, conf.queue, conf.exchange, conf.service_classes,
                    workers=conf.workers, hooks=conf.hooks(), queue_type=conf.queue_type,
                    max_attempts=conf.retry_policy.max_attempts,
                    retry_backoff=conf.retry_policy.backoff,
                    retry_backoff_max=conf.retry_policy.backoff_max,
                    reply_exchanges=conf.reply_exchanges, stop_timeout=conf.stop_timeout,
                    pipelined_answers=conf.pipelined_answers)
    server.run()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``tavrida`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "discovery":
            return registry_command.run(args)
        if args.command == "shell":
            # Errors on one line; the retries' warnings would interleave with the prompt.
            logging.basicConfig(level=logging.ERROR, format="tavrida: %(message)s")
            return shell.run(args.config, args.url, args.timeout, args.source)
        if args.command == "topology":
            return topology.show(args) if args.action == "show" else topology.delete(args)
        if args.command == "asyncapi":
            return asyncapi.run_command(args)
        return _send(args)
    except config_file.ConfigError as exc:  # each mistake of a config file on a line
        for error in exc.errors:
            print(f"tavrida: {error}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"tavrida: {exc}", file=sys.stderr)
        return 2
    except exceptions.TavridaError as exc:  # ConnectionFailed among them
        print(f"tavrida: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the broker library's errors (refused, bad login)
        print(f"tavrida: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
