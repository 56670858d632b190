"""RPCClient: call services from a program that is not a service.

Two forms, as in 1.0::

    cli = client.RPCClient(config=conf, discovery=disc, source="client_app")
    cli.test_hello.hello(param=123).cast(correlation_id="123-456")

    cli = client.RPCClient(config=conf, discovery=disc, source="client_app",
                           service="test_hello")
    cli.hello(param=123).cast()

``.call()`` sends a request whose answer goes to the client's own service
name (``reply_to``), where a service's response handlers get it.
``.call(timeout=5)`` blocks instead and returns the response payload::

    payload = cli.test_hello.hello(param=123).call(timeout=5)

It raises :class:`~tavrida.exceptions.RemoteError` when the service answers
with an Error and :class:`~tavrida.exceptions.CallTimeout` when nothing
comes back in time; all within ``timeout``, broker up or down:
:class:`~tavrida.exceptions.ConnectionFailed` when the request could not be
sent in time, :class:`~tavrida.exceptions.Unroutable` when no queue takes
it. ``.cast()``, :meth:`RPCClient.publish` and :meth:`RPCClient.publish_event`
give up after the config's ``publish_timeout``. :meth:`RPCClient.close` also
ends reconnect attempts other threads are waiting in. Any number of threads may
call at once. Answers come back on the exchange the client's ``source``
service has in its discovery, else on ``tavrida.replies``; every call names
that exchange in a header, so a 2.0 service needs no discovery entry for the
client (a 1.0 service does); see :mod:`tavrida.replies`.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple, Union

from tavrida import config as config_mod
from tavrida import discovery as discovery_mod
from tavrida import entry_point, messages, proxies
from tavrida.proxies import RPCClientProxy, RPCProxy
from tavrida.replies import Replies, reply_exchange_of
from tavrida.sender import Sender
from tavrida.transports import create_transport
from tavrida.transports.base import Transport


def client_sender(config: config_mod.ConnectionConfig, discovery: discovery_mod.AbstractDiscovery,
                  source: str, transport: Optional[Transport]
                  ) -> Tuple[Transport, Sender, str, str]:
    """A client's transport (``transport``, else a new one), its sender, service name and
    reply exchange.

    Shared by the blocking client and :class:`tavrida.aio.RPCClient`.
    """
    service_name = entry_point.parse(source).service if source else ""
    exchange = reply_exchange_of(discovery, service_name)
    transport = transport or create_transport(config)
    sender = Sender(transport, discovery, config.persistent, source=source,
                    reply_exchange=exchange)
    return transport, sender, service_name, exchange


class RPCClient:
    """Sends requests (and notifications) on behalf of ``source``.

    ``headers`` are user headers added to every request; ``context`` is the
    context of every request. The connection opens with the client; close
    it with :meth:`close` or use the client as a context manager.
    """

    def __init__(self, config: Union[config_mod.ConnectionConfig, str],
                 discovery: discovery_mod.AbstractDiscovery, source: str = "",
                 context: Optional[Mapping[str, Any]] = None,
                 headers: Optional[Mapping[str, Any]] = None,
                 service: Optional[str] = None, *,
                 transport: Optional[Transport] = None) -> None:
        self._config = config_mod.as_config(config)
        self._service = service
        self._source = source
        self._transport, self._sender, service_name, exchange = client_sender(
            self._config, discovery, source, transport)
        self._replies = Replies(self._sender, service_name, exchange)
        self._announced = service_name
        if self._announced:  # central discovery: a service may then answer only known exchanges
            discovery.announce(self._announced, exchange, role="client")
        self._proxy = RPCProxy(self._sender, source, context, "", headers, calls=self._replies)

    @property
    def sender(self) -> Sender:
        """The sender that publishes for this client."""
        return self._sender

    @property
    def transport(self) -> Transport:
        return self._transport

    def __getattr__(self, name: str) -> RPCClientProxy:
        """``cli.<service>``, or ``cli.<method>`` for a client made for one ``service``."""
        if name.startswith("_"):
            raise AttributeError(name)
        if self._service:
            proxy = self._proxy.service(self._service, name)
        else:
            proxy = self._proxy.service(name)
        proxies.keep(self, name, proxy)  # the next cli.<name> is a plain attribute
        return proxy

    def add_headers(self, headers: Mapping[str, Any]) -> None:
        """Add user headers to every message this client sends."""
        self._proxy.add_headers(headers)

    def publish(self, correlation_id: str = "", **kwargs: Any) -> messages.Notification:
        """Publish a notification as ``source`` (its exchange must be a local publisher)."""
        return self._proxy.publish(correlation_id, **kwargs)

    def publish_event(self, event: str, /, **payload: Any) -> messages.Notification:
        """Publish event ``event`` of the ``source`` service (routing key ``<source>.<event>``).

        The service's notification exchange must be a local publisher in the
        client's discovery. See :mod:`tavrida.events`.
        """
        return self._proxy.publish_event(event, **payload)

    def close(self) -> None:
        """Stop waiting for answers and close the client's connection."""
        self._replies.close()
        if self._announced:
            self._sender.discovery.withdraw(self._announced)
            self._announced = ""
        self._transport.close()

    def __enter__(self) -> "RPCClient":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
