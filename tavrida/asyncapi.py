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
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, Union

from tavrida import contracts, dispatcher, exceptions, messages, schema
from tavrida.server import Server
from tavrida.service import ServiceController
from tavrida.transports.base import DEAD_LETTER_REASON_HEADER

VERSION = "3.0.0"
_AMQP = "0.3.0"
#: What :func:`document` takes: a config file's path or a server (not started).
Source = Union[str, "os.PathLike[str]", Server]

_HEADERS_SCHEMA: Dict[str, Any] = {
    "type": "object",
    "title": "tavrida headers",
    "description": "The headers every tavrida message carries (AMQP application headers, "
                   "text values); user headers may come beside them.",
    "properties": {
        "correlation_id": {"type": "string",
                           "description": "Shared by every message of one conversation."},
        "request_id": {"type": "string",
                       "description": "Of a request; its Response or Error carries it too."},
        "message_id": {"type": "string", "description": "Unique per message."},
        "message_type": {"type": "string", "enum": [messages.REQUEST, messages.RESPONSE,
                                                    messages.ERROR, messages.NOTIFICATION]},
        "source": {"type": "string", "description": "service.method it comes from."},
        "destination": {"type": "string", "description": "service.method (or service) "
                                                         "it goes to; empty for events."},
        "reply_to": {"type": "string", "description": "The caller's service for a call; "
                                                      "empty for a cast or an event."},
        messages.REPLY_EXCHANGE_HEADER: {"type": "string",
                                         "description": "Exchange to answer a call on."},
        messages.EXPIRES_AT_HEADER: {"type": "integer", "description": "Of a blocking call: "
                                     "when its caller gives up (ms since the epoch)."},
    },
    "required": list(messages.TAVRIDA_HEADERS),
}
_ERROR_PAYLOAD: Dict[str, Any] = {
    "type": "object", "title": "Error",
    "properties": {"class": {"type": "string"}, "name": {"type": "string"},
                   "message": {"type": "string"}, "code": {"type": "integer"}},
    "required": ["class", "name", "message", "code"],
}


def _server(source: Source) -> Server:
    if isinstance(source, Server):
        return source
    from tavrida.config_file import ServiceConfig

    conf = ServiceConfig(os.fspath(source))
    conf.bind_discovery()
    return Server(conf.connection, conf.queue, conf.exchange, conf.service_classes,
                  queue_type=conf.queue_type)


def _ref(*parts: str) -> Dict[str, str]:
    return {"$ref": "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)}


def _summary(func: Any) -> str:
    return (getattr(func, "__doc__", None) or "").strip().split("\n\n")[0].replace("\n", " ")


class _Document:
    """The document being built: channels, operations and components, keyed once."""

    def __init__(self, title: str, version: str) -> None:
        self.schemas = schema.SchemaBuilder()
        self.doc: Dict[str, Any] = {
            "asyncapi": VERSION,
            "info": {"title": title, "version": version},
            "defaultContentType": "application/json",
            "servers": {}, "channels": {}, "operations": {},
            "components": {"messages": {}, "schemas": self.schemas.definitions,
                           "correlationIds": {"request_id": {
                               "location": "$message.header#/request_id",
                               "description": "A Response or Error carries the request_id "
                                              "of the request it answers."}}},
        }
        self.schemas.definitions["tavrida_headers"] = _HEADERS_SCHEMA
        self.messages: Dict[str, Any] = self.doc["components"]["messages"]
        self.messages["error"] = self._message(
            messages.ERROR, "error", _ERROR_PAYLOAD, "An Error answering a call",
            correlated=True)
        self._server_ids: Dict[str, str] = {}

    # -- parts ----------------------------------------------------------------

    def add_server(self, srv: Server) -> str:
        conf = srv.config
        url = conf.safe_url
        if url not in self._server_ids:
            key = "broker" if not self._server_ids else f"broker{len(self._server_ids) + 1}"
            self._server_ids[url] = key
            entry = {"host": f"{conf.host}:{conf.port}" if not conf.is_memory else "memory",
                     "protocol": conf.scheme, "description": f"{url}"}
            if not conf.is_memory:
                entry["pathname"] = conf.virtual_host
            self.doc["servers"][key] = entry
        return self._server_ids[url]

    def _message(self, kind: str, name: str, payload: Dict[str, Any], summary: str,
                 correlated: bool = False) -> Dict[str, Any]:
        message: Dict[str, Any] = {
            "name": name, "title": f"{kind} {name}" if kind != messages.ERROR else "Error",
            "contentType": "application/json",
            "headers": {"allOf": [{"$ref": schema.COMPONENTS + "tavrida_headers"},
                                  {"properties": {"message_type": {"const": kind}}}]},
            "payload": {"type": "object", "properties": {
                "context": {"type": "object",
                            "description": "Travels with the whole conversation."},
                "payload": payload}, "required": ["payload"]},
            "bindings": {"amqp": {"messageType": kind, "bindingVersion": _AMQP}},
        }
        if summary:
            message["summary"] = summary
        if correlated:
            message["correlationId"] = _ref("components", "correlationIds", "request_id")
        return message

    def message(self, key: str, kind: str, name: str, payload: Dict[str, Any],
                summary: str = "", correlated: bool = False) -> Dict[str, str]:
        """A reference to message ``key`` of components, added on first use."""
        if key not in self.messages:
            self.messages[key] = self._message(kind, name, payload, summary, correlated)
        return _ref("components", "messages", key)

    def channel(self, key: str, address: Optional[str], exchange: Optional[str],
                vhost: str, description: str, server: str) -> Dict[str, Any]:
        channels = self.doc["channels"]
        if key not in channels:
            channel: Dict[str, Any] = {"address": address, "messages": {},
                                       "description": description,
                                       "servers": [_ref("servers", server)]}
            if exchange:
                channel["bindings"] = {"amqp": {
                    "is": "routingKey", "bindingVersion": _AMQP,
                    "exchange": {"name": exchange, "type": "topic", "durable": True,
                                 "autoDelete": False, "vhost": vhost}}}
            channels[key] = channel
        result: Dict[str, Any] = channels[key]
        return result

    def queue(self, key: str, name: str, vhost: str, description: str, server: str) -> None:
        self.doc["channels"][key] = {
            "address": name, "messages": {}, "description": description,
            "servers": [_ref("servers", server)],
            "bindings": {"amqp": {"is": "queue", "bindingVersion": _AMQP, "queue": {
                "name": name, "durable": True, "exclusive": False, "autoDelete": False,
                "vhost": vhost}}}}

    def operation(self, key: str, action: str, channel: str, message_keys: Sequence[str],
                  service: str, summary: str, description: str,
                  reply: Optional[Dict[str, Any]] = None, persistent: bool = True) -> None:
        channel_messages = self.doc["channels"][channel]["messages"]
        refs = []
        for message_key in message_keys:
            channel_messages[message_key] = _ref("components", "messages", message_key)
            refs.append(_ref("channels", channel, "messages", message_key))
        operation: Dict[str, Any] = {"action": action, "channel": _ref("channels", channel),
                                     "messages": refs, "summary": summary,
                                     "tags": [{"name": service}]}
        if description:
            operation["description"] = description
        if action == "send":
            operation["bindings"] = {"amqp": {"deliveryMode": 2 if persistent else 1,
                                              "bindingVersion": _AMQP}}
        else:
            operation["bindings"] = {"amqp": {"ack": True, "bindingVersion": _AMQP}}
        if reply is not None:
            operation["reply"] = reply
        self.doc["operations"][key] = operation


class _Builder:
    """Adds the services of servers to a :class:`_Document`."""

    def __init__(self, doc: _Document) -> None:
        self.doc = doc
        #: Request handlers of every documented service: entry point -> (handler, service).
        self.handlers: Dict[str, Tuple[dispatcher.Handler, str]] = {}

    def add(self, servers: List[Server]) -> None:
        for srv in servers:
            for cls in srv.service_classes:
                for (kind, ep), handler in cls.get_dispatcher().handlers.items():
                    if kind == messages.REQUEST:
                        self.handlers[str(ep)] = (handler, cls.service_name())
        for srv in servers:
            self._server(srv)

    def _payload(self, handler: Optional[dispatcher.Handler], title: str) -> Dict[str, Any]:
        if handler is None:
            return {"type": "object", "description": "Not described: its handler is not in "
                                                     "this document."}
        self.doc.schemas.localns = handler.localns
        fields = contracts.payload_fields(handler.func, handler.payload_params, handler.localns)
        return self.doc.schemas.record(title, fields)

    def _response(self, handler: Optional[dispatcher.Handler],
                  answered: Optional[dispatcher.Handler] = None) -> Dict[str, Any]:
        """The Response payload schema: the callee's return annotation, else what the
        caller's response handler (``answered``) takes."""
        if handler is None:
            if answered is not None:
                return self._payload(answered, f"answer of {answered.entry_point}")
            return {"type": "object"}
        self.doc.schemas.localns = handler.localns
        returns = contracts.return_type(handler.func, handler.localns)
        if returns is None or returns is type(None):
            return {"type": "object", "description": "Empty."}
        described = self.doc.schemas.schema(returns)
        return described if described else {"type": "object"}

    def _request_message(self, ep: str) -> str:
        handler = self.handlers.get(ep, (None, ""))[0]
        self.doc.message(f"request.{ep}", messages.REQUEST, ep, self._payload(handler, ep),
                         _summary(handler.func) if handler else "")
        return f"request.{ep}"

    def _reply(self, ep: str, server: str,
               answered: Optional[dispatcher.Handler] = None) -> Dict[str, Any]:
        handler = self.handlers.get(ep, (None, ""))[0]
        key = f"reply.{ep}"
        self.doc.channel(key, None, None, "/", "The caller's exchange (its x-tavrida-reply-"
                         "exchange header, else its discovery entry), routing key the caller's "
                         "service (reply_to).", server)
        self.doc.message(f"response.{ep}", messages.RESPONSE, ep,
                         self._response(handler, answered), correlated=True)
        refs = []
        for message_key in (f"response.{ep}", "error"):
            self.doc.doc["channels"][key]["messages"][message_key] = _ref(
                "components", "messages", message_key)
            refs.append(_ref("channels", key, "messages", message_key))
        return {"address": {"location": "$message.header#/reply_to",
                            "description": "The caller's service name (routing key)."},
                "channel": _ref("channels", key), "messages": refs}

    def _server(self, srv: Server) -> None:
        doc = self.doc
        server = doc.add_server(srv)
        vhost = srv.config.virtual_host or "/"
        persistent = srv.config.persistent
        bindings = [f"{b.exchange} ({b.routing_key})" for b in srv.topology().bindings]
        queue_key = f"queue.{srv.queue_name}"
        doc.queue(queue_key, srv.queue_name, vhost,
                  f"Queue of {', '.join(c.service_name() for c in srv.service_classes)}, "
                  f"bound to {', '.join(bindings) or 'nothing'}.", server)
        doc.queue(f"queue.{srv.dead_letter_queue}", srv.dead_letter_queue, vhost,
                  f"Dead letters of {srv.queue_name}: messages that could not be handled "
                  f"nor answered, with the reason in {DEAD_LETTER_REASON_HEADER}.", server)
        for cls in srv.service_classes:
            self._service(srv, cls, server, vhost, persistent, queue_key)

    def _service(self, srv: Server, cls: Type[ServiceController], server: str, vhost: str,
                 persistent: bool, queue_key: str) -> None:
        doc = self.doc
        name = cls.service_name()
        disc = cls.get_discovery()
        queue_messages = doc.doc["channels"][queue_key]["messages"]
        for (kind, ep), handler in sorted(cls.get_dispatcher().handlers.items(),
                                          key=lambda item: (item[0][0], str(item[0][1]))):
            key = str(ep)
            summary = _summary(handler.func)
            if kind == messages.REQUEST:
                channel = f"request.{key}"
                doc.channel(channel, key, srv.exchange_name, vhost,
                            f"Requests to {key}.", server)
                message = self._request_message(key)
                queue_messages[message] = _ref("components", "messages", message)
                doc.operation(f"{key}.call", "receive", channel, [message], name,
                              summary or f"{key} answers a call",
                              "A call (reply_to set): answered with a Response, or an Error "
                              "when the payload does not match or the handler raises.",
                              reply=self._reply(key, server))
                doc.operation(f"{key}.cast", "receive", channel, [message], name,
                              summary or f"{key} takes a cast",
                              "A cast (no reply_to): no answer.")
            elif kind == dispatcher.SUBSCRIPTION:
                channel = f"event.{key}"
                doc.channel(channel, key, _exchange(disc.get_remote_publisher, ep.service),
                            vhost, f"Events {key} of {ep.service}.", server)
                queue_messages[f"event.{key}"] = doc.message(
                    f"event.{key}", messages.NOTIFICATION, key, self._payload(handler, key),
                    summary)
                doc.operation(f"{name}.on.{key}", "receive", channel, [f"event.{key}"], name,
                              summary or f"{name} subscribes to {key}", "")
            elif f"{name}.calls.{key}" not in doc.doc["operations"]:  # response, error
                self._call(srv, cls, key, server, vhost, persistent,
                           cls.get_dispatcher().find(ep, messages.RESPONSE))
            for published, tp in handler.publishes.items():
                self._event(cls, published, tp, server, vhost, persistent)

    def _call(self, srv: Server, cls: Type[ServiceController], ep: str, server: str,
              vhost: str, persistent: bool, answered: Optional[dispatcher.Handler]) -> None:
        name = cls.service_name()
        remote = ep.partition(".")[0]
        channel = f"request.{ep}"
        self.doc.channel(channel, ep, _exchange(cls.get_discovery().get_remote, remote), vhost,
                         f"Requests to {ep}.", server)
        message = self._request_message(ep)
        reply = self._reply(ep, server, answered)
        self.doc.operation(f"{name}.calls.{ep}", "send", channel, [message], name,
                           f"{name} calls {ep}",
                           f"The answer comes back to {name} on {srv.exchange_name}.",
                           reply=reply, persistent=persistent)

    def _event(self, cls: Type[ServiceController], event: str, tp: Any, server: str,
               vhost: str, persistent: bool) -> None:
        name = cls.service_name()
        key = f"{name}.{event}"
        channel = f"event.{key}"
        self.doc.channel(channel, key, _exchange(cls.get_discovery().get_local_publisher, name),
                         vhost, f"Events {key} of {name}.", server)
        payload = self.doc.schemas.schema(tp) or {"type": "object"}
        if "$ref" not in payload and payload.get("type") != "object":
            payload = {"type": "object"}
        message = f"event.{key}"
        if message in self.doc.messages and tp is not Any:
            self.doc.messages[message]["payload"]["properties"]["payload"] = payload
        self.doc.message(message, messages.NOTIFICATION, key, payload)
        self.doc.operation(f"{name}.publishes.{event}", "send", channel, [message], name,
                           f"{name} publishes {event}", "", persistent=persistent)


def _exchange(lookup: Any, service: str) -> Optional[str]:
    try:
        exchange: str = lookup(service)
    except exceptions.TavridaError:
        return None
    return exchange


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
    doc = _Document(title or f"tavrida services {', '.join(names)}", version)
    _Builder(doc).add(servers)
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
