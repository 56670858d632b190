"""The AsyncAPI document being built: its channels, operations and components."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence, Union

from tavrida import json_schema, messages
from tavrida.server import Server

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




def ref(*parts: str) -> Dict[str, str]:
    return {"$ref": "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)}


def summary_of(func: Any) -> str:
    return (getattr(func, "__doc__", None) or "").strip().split("\n\n")[0].replace("\n", " ")



class Document:
    """The document being built: channels, operations and components, keyed once."""

    def __init__(self, title: str, version: str) -> None:
        self.schemas = json_schema.SchemaBuilder()
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
            "headers": {"allOf": [{"$ref": json_schema.COMPONENTS + "tavrida_headers"},
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
            message["correlationId"] = ref("components", "correlationIds", "request_id")
        return message

    def message(self, key: str, kind: str, name: str, payload: Dict[str, Any],
                summary: str = "", correlated: bool = False) -> Dict[str, str]:
        """A reference to message ``key`` of components, added on first use."""
        if key not in self.messages:
            self.messages[key] = self._message(kind, name, payload, summary, correlated)
        return ref("components", "messages", key)

    def channel(self, key: str, address: Optional[str], exchange: Optional[str],
                vhost: str, description: str, server: str) -> Dict[str, Any]:
        channels = self.doc["channels"]
        if key not in channels:
            channel: Dict[str, Any] = {"address": address, "messages": {},
                                       "description": description,
                                       "servers": [ref("servers", server)]}
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
            "servers": [ref("servers", server)],
            "bindings": {"amqp": {"is": "queue", "bindingVersion": _AMQP, "queue": {
                "name": name, "durable": True, "exclusive": False, "autoDelete": False,
                "vhost": vhost}}}}

    def operation(self, key: str, action: str, channel: str, message_keys: Sequence[str],
                  service: str, summary: str, description: str,
                  reply: Optional[Dict[str, Any]] = None, persistent: bool = True) -> None:
        channel_messages = self.doc["channels"][channel]["messages"]
        refs = []
        for message_key in message_keys:
            channel_messages[message_key] = ref("components", "messages", message_key)
            refs.append(ref("channels", channel, "messages", message_key))
        operation: Dict[str, Any] = {"action": action, "channel": ref("channels", channel),
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
