"""Opening connections: :class:`Connector` (parameters, node failover, one connect).

kombu's public ``Connection.ensure_connection`` opens each connection (one
attempt, ``max_retries=0``); its retry loop is not used (no deadline, no
interrupt, sleeps in ``time.sleep``): :class:`.reconnect.ReconnectPolicy`
retries instead. A cluster's nodes are failed over as :mod:`.nodes` says.
"""

from __future__ import annotations

import functools
import logging
import os
import ssl as ssl_module
import time
import uuid
from typing import Any, Callable, Dict, Optional

from kombu.connection import Connection

from tavrida import exceptions
from tavrida.config import ConnectionConfig
from tavrida.transports.kombu.compat import Compat
from tavrida.transports.kombu.compat.pyamqp import (
    AMQPTransport,
    PlainAMQPTransport,
    public_raw_connection,
    raw_connection,
)
from tavrida.transports.kombu.compat.virtual import public_channel, rabbit_channel
from tavrida.transports.kombu.deadlines import ThreadState
from tavrida.transports.kombu.lifecycle import Lifecycle
from tavrida.transports.kombu.nodes import NodeRotation, node_endpoint
from tavrida.transports.kombu.reconnect import Errors

# It logs as the connections it opens always have (operators filter on that name).
LOG = logging.getLogger("tavrida.transports.kombu.connections")

AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")
REDIS_SCHEMES = ("redis", "rediss")


class SafeUrl:
    """The masked URL, turned into text only when a log line is written."""

    __slots__ = ("config",)

    def __init__(self, config: ConnectionConfig) -> None:
        self.config = config

    def __str__(self) -> str:
        return self.config.safe_url


class Connector:
    """Opens the transport's connections: one per role (``consume``, ``publish``).

    Owns the config, the connection name, kombu's error tuples and a
    :class:`~.nodes.NodeRotation` per role; reads this thread's deadline
    (``local``) and the transport's :class:`~.lifecycle.Lifecycle`. One call
    of :meth:`open` tries each node once; retrying is the caller's.
    """

    def __init__(self, config: ConnectionConfig, local: ThreadState,
                 lifecycle: Lifecycle, compat: Compat) -> None:
        self.config = config
        self.compat = compat
        #: The transport connection of a kombu one, without kombu's implicit reconnect.
        self.raw: Callable[[Optional[Connection]], Any] = (
            raw_connection if compat.private else public_raw_connection)
        self.local = local
        self.lifecycle = lifecycle
        self.is_amqp = config.scheme in AMQP_SCHEMES
        options = config.transport_options
        properties = dict(options.get("client_properties") or {})
        #: Base of the names the connections give the broker: ``<name>:consume`` and
        #: ``<name>:publish`` (RabbitMQ ``connection_name``, Redis ``CLIENT SETNAME``).
        self.connection_name: str = (properties.get("connection_name")
                                     or options.get("client_name")
                                     or f"tavrida-{os.getpid()}-{uuid.uuid4().hex[:12]}")
        errors = Connection(**self.params("probe"))
        self.retry_errors: Errors = tuple(errors.recoverable_connection_errors)
        self.connection_errors: Errors = tuple(errors.connection_errors)
        self.channel_errors: Errors = tuple(errors.channel_errors)
        self._rotations: Dict[str, NodeRotation] = {}

    @functools.cached_property
    def safe_url(self) -> SafeUrl:
        """The masked URL for log lines, made once (see :class:`SafeUrl`)."""
        return SafeUrl(self.config)

    def params(self, role: str, heartbeat: float = 0, node: int = 0) -> Dict[str, Any]:
        """Connection arguments for one connection (``role`` names it on the broker).

        ``node`` indexes :attr:`~tavrida.config.ConnectionConfig.urls` (0: the first).
        """
        config = self.config
        options: Dict[str, Any] = {}
        ssl: Any = False
        if self.is_amqp:
            transport: Any = AMQPTransport if self.compat.private else PlainAMQPTransport
            if config.channel_max:
                options["channel_max"] = config.channel_max
            if config.frame_max:
                options["frame_max"] = config.frame_max
            if config.locale:
                options["locale"] = config.locale
            if config.ssl:
                ssl = config.ssl_options or True
        elif config.scheme in REDIS_SCHEMES:
            transport = config.scheme
            options["socket_connect_timeout"] = config.socket_timeout
            # Bounds every read (kombu's default has none: a broker that stops answering
            # would hang a publish for ever); longer than the 1 s BRPOP wait.
            options["socket_timeout"] = config.socket_timeout
            if config.ssl:
                # kombu silently ignores a non-dict, and warns into CERT_NONE without one.
                ssl = config.ssl_options or {"ssl_cert_reqs": ssl_module.CERT_REQUIRED}
        else:
            transport = "memory"
            options["polling_interval"] = 0.005
        options.update(config.transport_options)
        if self.is_amqp:
            properties = dict(options.get("client_properties") or {})
            properties["connection_name"] = f"{self.connection_name}:{role}"
            options["client_properties"] = properties
        elif config.scheme in REDIS_SCHEMES:
            options["client_name"] = f"{self.connection_name}:{role}"
        credentials = config.credentials
        hostname, port = config.host or "localhost", config.port
        userid = credentials.username if credentials else None
        password = credentials.password if credentials else None
        if node:
            hostname, node_port, userid, password = node_endpoint(config.urls[node])
            port = node_port or port
        return {
            "hostname": hostname,
            "port": port,
            "userid": userid,
            "password": password,
            "virtual_host": config.virtual_host,
            "ssl": ssl,
            "transport": transport,
            "connect_timeout": config.socket_timeout,
            "heartbeat": heartbeat,
            "transport_options": options,
        }

    def failed(self, cause: Optional[BaseException],
               reason: str = "") -> exceptions.ConnectionFailed:
        """A ConnectionFailed naming the masked URL and the cause (no password in it)."""
        text = f"{type(cause).__name__}: {cause}" if cause is not None else ""
        text = f"{reason} ({text})" if reason and text else reason or text
        credentials = self.config.credentials
        passwords = {credentials.password} if credentials is not None else set()
        if self.config.alternates:
            passwords.update(node_endpoint(url)[3] or "" for url in self.config.urls)
        for password in sorted(filter(None, passwords), key=len, reverse=True):
            text = text.replace(password, "***")
        return exceptions.ConnectionFailed(safe_url=self.config.safe_url, cause=cause,
                                           reason=text)

    def check(self) -> None:
        """Raise ConnectionFailed if the transport was closed or interrupted."""
        self.lifecycle.check(self.failed)

    def rotation(self, role: str) -> NodeRotation:
        """The node rotation of the ``role`` connection (made on first use)."""
        rotation = self._rotations.get(role)
        if rotation is None:
            rotation = self._rotations[role] = NodeRotation(len(self.config.alternates) + 1)
        return rotation

    def open(self, role: str, heartbeat: float = 0) -> Connection:
        """Connect once to each node at most (retries belong to the caller).

        The node the ``role`` connection last had comes first, then the
        others in order; the first that answers is kept. Errors retrying
        cannot mend (login refused, no such virtual host) raise
        ConnectionFailed; when no node answers, the last node's error is
        raised (the caller's retry loop pauses, then tries the next node first).
        """
        rotation = self.rotation(role)
        order = rotation.order()
        last: Optional[BaseException] = None
        for index in order:
            if last is not None:
                self.check()
                deadline = self.local.deadline
                if deadline is not None and time.monotonic() >= deadline:
                    break
            try:
                conn = self.open_node(role, heartbeat, index)
            except self.retry_errors as exc:
                last = exc
                if len(order) > 1:
                    LOG.warning("cannot connect to node %s (%s: %s)",
                                self.config.safe_urls[index], type(exc).__name__, exc)
                continue
            if index != rotation.current:
                LOG.warning("the %s connection moved to node %s", role,
                            self.config.safe_urls[index])
            rotation.connected(index)
            return conn
        rotation.failed_round()
        assert last is not None
        raise last

    def open_node(self, role: str, heartbeat: float, node: int) -> Connection:
        """Connect once to node ``node``, before this thread's deadline."""
        params = self.params(role, heartbeat, node)
        deadline = self.local.deadline
        if deadline is not None:
            remaining = max(deadline - time.monotonic(), 0.1)
            for owner, key in ((params, "connect_timeout"),
                               (params["transport_options"], "socket_connect_timeout")):
                if key in owner:
                    owner[key] = min(owner[key] or remaining, remaining)
        conn = Connection(**params)
        try:
            conn.ensure_connection(max_retries=0, reraise_as_library_errors=False)
        except self.retry_errors:
            raise
        except Exception as exc:
            try:
                conn.collect()
            except Exception:  # noqa: BLE001 - never connected: nothing to report
                LOG.debug("ignoring error while dropping a connection", exc_info=True)
            raise self.failed(exc) from exc
        return conn

    def channel(self, conn: Connection) -> Any:
        """A new channel on ``conn``, made to behave as RabbitMQ's on a virtual broker."""
        channel = conn.channel()
        if not self.is_amqp:
            (rabbit_channel if self.compat.private else public_channel)(channel)
        return channel
