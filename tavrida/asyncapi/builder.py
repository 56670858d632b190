"""What goes in an AsyncAPI document: the channels and operations of each server's services."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Type

from tavrida import contracts, dispatcher, exceptions, messages
from tavrida.asyncapi.model import Document, ref, summary_of
from tavrida.server import Server
from tavrida.service import ServiceController
from tavrida.transports.base import DEAD_LETTER_REASON_HEADER


class Builder:
    """Adds the services of servers to a :class:`Document`."""

    def __init__(self, doc: Document) -> None:
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
                         summary_of(handler.func) if handler else "")
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
            self.doc.doc["channels"][key]["messages"][message_key] = ref(
                "components", "messages", message_key)
            refs.append(ref("channels", key, "messages", message_key))
        return {"address": {"location": "$message.header#/reply_to",
                            "description": "The caller's service name (routing key)."},
                "channel": ref("channels", key), "messages": refs}

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
            summary = summary_of(handler.func)
            if kind == messages.REQUEST:
                channel = f"request.{key}"
                doc.channel(channel, key, srv.exchange_name, vhost,
                            f"Requests to {key}.", server)
                message = self._request_message(key)
                queue_messages[message] = ref("components", "messages", message)
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
