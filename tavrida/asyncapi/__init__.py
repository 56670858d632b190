"""AsyncAPI 3.0 documents of the services a config file (or a server) runs.

::

    tavrida asyncapi services.ini [more.ini ...] [-o asyncapi.json]

    from tavrida import asyncapi
    doc = asyncapi.document("services.ini")          # a dict, JSON-ready
    doc = asyncapi.document(server_a, server_b)      # or servers built in Python

The document says what travels, without connecting to the broker:

* **channels**: one per routing key a service takes or sends on (with its
  exchange, an AMQP channel binding), one per queue (with its bindings in
  the description) and dead-letter queue, and one per reply (its address is
  the caller's: the ``reply_to`` header);
* **operations**: each request handler received as a call (with its reply:
  the Response or an Error) and as a cast (no reply), each subscription,
  each call a service makes (it has a response or error handler for it),
  and each named event a handler declares it publishes
  (``publishes=``, see :mod:`tavrida.events`);
* **messages**: the body ``{"context": {...}, "payload": {...}}`` whose
  payload schema comes from the handler's annotations (see
  :mod:`tavrida.contracts`; an unannotated parameter may be anything), a
  Response's from the handler's return annotation (or, for a service not
  documented, from the caller's response handler); the tavrida headers as
  message headers; ``request_id`` as the correlation id of a reply.

Dataclasses, TypedDicts, enums and pydantic models become named schemas
under ``components/schemas``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict

from tavrida import schema
from tavrida.asyncapi.builder import Builder
from tavrida.asyncapi.model import VERSION as VERSION
from tavrida.asyncapi.model import Document, Source
from tavrida.server import Server


def _server(source: Source) -> Server:
    if isinstance(source, Server):
        return source
    from tavrida.config_file import ServiceConfig

    conf = ServiceConfig(os.fspath(source))
    conf.bind_discovery()
    return Server(conf.connection, conf.queue, conf.exchange, conf.service_classes,
                  queue_type=conf.queue_type)


def document(*sources: Source, title: str = "", version: str = "1.0.0") -> Dict[str, Any]:
    """The AsyncAPI 3.0 document (a JSON-ready dict) of the services of ``sources``.

    Each source is a config file's path (see :mod:`tavrida.config_file`;
    nothing connects to the broker) or a :class:`~tavrida.server.Server`.
    Raises :class:`tavrida.config_file.ConfigError` for a bad config file.
    """
    if not sources:
        raise ValueError("document() needs a config file or a server")
    servers = [_server(source) for source in sources]
    names = [cls.service_name() for srv in servers for cls in srv.service_classes]
    doc = Document(title or f"tavrida services {', '.join(names)}", version)
    Builder(doc).add(servers)
    return doc.doc


def dumps(doc: Dict[str, Any]) -> str:
    """The document as indented JSON text."""
    return json.dumps(doc, indent=2, ensure_ascii=False, default=schema.jsonable)


def add_command(commands: Any) -> None:
    """Add ``tavrida asyncapi`` to the command line's subcommands (see :mod:`tavrida.cli`)."""
    sub = commands.add_parser(
        "asyncapi", help="write the AsyncAPI 3.0 document of the services of config files",
        description="Write the AsyncAPI 3.0 document (JSON) of the services the config "
                    "files run: channels, operations, message schemas. Does not connect.")
    sub.add_argument("configs", nargs="+", metavar="CONFIG", help="INI config file(s)")
    sub.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    sub.add_argument("--title", default="", help="the document's title")
    sub.add_argument("--api-version", default="1.0.0", help="the document's info.version")


def run_command(args: Any) -> int:
    """Run ``tavrida asyncapi``: the document to ``--output`` or standard output."""
    text = dumps(document(*args.configs, title=args.title, version=args.api_version)) + "\n"
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)
    return 0
