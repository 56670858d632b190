"""The ``tavrida`` command: run services from a config file, call them from a shell.

::

    tavrida run services.ini [--url URL]
    tavrida call test_hello.hello param=123 --exchange test_exchange [--timeout 5]
    tavrida cast test_hello.hello param=123 --exchange test_exchange
    tavrida publish test_hello.hello param=1 --exchange test_notification_exchange

``key=value`` arguments are read as JSON when they parse (``n=1`` is a
number, ``s='"1"'`` a string) and as text otherwise. The broker URL comes
from ``--url``, then ``TAVRIDA_URL``, then the config file; ``call``,
``cast`` and ``publish`` default to RabbitMQ on localhost.

Exit codes: 0 done, 1 the remote service answered with an error or did not
answer in time, 2 bad arguments or config, or the broker refused or could not
be reached (one line on stderr says why: ``tavrida: Cannot reach the broker at
URL: ...``, the password masked; ``call``, ``cast`` and ``publish`` do not
log their reconnect attempts).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Dict, List, Optional

import simplejson

from tavrida import client, config_file, discovery, entry_point, exceptions, wire
from tavrida.server import Server

DEFAULT_URL = "amqp://guest:guest@localhost:5672//"
DEFAULT_SOURCE = "tavrida_cli"


def _payload(pairs: List[str]) -> Dict[str, Any]:
    payload: Dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"argument {pair!r} is not key=value")
        try:
            payload[key] = simplejson.loads(raw)
        except ValueError:
            payload[key] = raw
    return payload


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tavrida", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the services a config file names")
    run.add_argument("config", help="INI config file")
    run.add_argument("--url", help="broker URL (overrides the config file)")
    for name, text in (("call", "call a method and print the answer"),
                       ("cast", "send a request without waiting"),
                       ("publish", "publish a notification as SERVICE.EVENT")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("target", metavar="SERVICE.METHOD")
        sub.add_argument("params", nargs="*", metavar="key=value")
        sub.add_argument("--url", help=f"broker URL (default: $TAVRIDA_URL or {DEFAULT_URL})")
        sub.add_argument("--exchange", help="exchange of the service (or its notifications)")
        sub.add_argument("--discovery", metavar="DS_FILE", help=".ds file to find exchanges in")
        if name != "publish":
            sub.add_argument("--source", default=DEFAULT_SOURCE,
                             help=f"caller service name (default {DEFAULT_SOURCE})")
            sub.add_argument("--correlation-id", default="")
        if name == "call":
            sub.add_argument("--timeout", type=float, default=10.0, help="seconds to wait")
            sub.add_argument("--reply-exchange",
                             help="exchange the service answers the caller on "
                                  "(default: the caller's in --discovery, else --exchange)")
    return parser


def _discovery(args: argparse.Namespace, service: str) -> discovery.LocalDiscovery:
    if args.discovery:
        disc: discovery.LocalDiscovery = discovery.FileBasedDiscoveryService(args.discovery, "")
    else:
        disc = discovery.LocalDiscovery()
    if args.exchange:
        if args.command == "publish":
            disc.register_local_publisher(service, args.exchange)
        else:
            disc.register_remote_service(service, args.exchange)
    if args.command == "call":
        reply = args.reply_exchange or (None if args.discovery else args.exchange)
        if reply:
            disc.register_remote_service(entry_point.parse(args.source).service, reply)
    return disc


def _send(args: argparse.Namespace) -> int:
    target = entry_point.parse(args.target)
    if not target.method:
        raise ValueError(f"{args.target!r} is not SERVICE.METHOD")
    payload = _payload(args.params)
    # One line on failure: the retries' warnings would repeat what it says.
    logging.basicConfig(level=logging.ERROR, format="tavrida: %(message)s")
    url = args.url or os.environ.get(config_file.URL_ENV) or DEFAULT_URL
    disc = _discovery(args, target.service)
    source = args.target if args.command == "publish" else args.source
    with client.RPCClient(url, disc, source=source) as cli:
        if args.command == "publish":
            cli.publish(**payload)
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


def _run(args: argparse.Namespace) -> int:
    conf = config_file.ServiceConfig(args.config, args.url)
    logging.basicConfig(level=conf.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    conf.bind_discovery()
    server = Server(conf.connection, conf.queue, conf.exchange, conf.service_classes,
                    workers=conf.workers)
    server.run()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``tavrida`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        return _send(args)
    except (config_file.ConfigError, ValueError) as exc:
        print(f"tavrida: {exc}", file=sys.stderr)
        return 2
    except exceptions.TavridaError as exc:  # ConnectionFailed among them
        print(f"tavrida: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the broker library's errors (refused, bad login)
        print(f"tavrida: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
