"""tavrida: services that talk over a message broker.

The public API, module by module (``from tavrida import dispatcher, ...``):

* :mod:`~tavrida.dispatcher` -- ``rpc_service``, ``rpc_method``,
  ``rpc_response_method``, ``rpc_error_method``, ``subscription_method``;
* :mod:`~tavrida.service` -- ``ServiceController``, the base of services;
* :mod:`~tavrida.server` -- ``Server``, consumes a queue and runs handlers;
* :mod:`~tavrida.retries` -- ``RetryPolicy``: how often a retried message runs;
* :mod:`~tavrida.client` -- ``RPCClient``, calls services from any program;
* :mod:`~tavrida.proxies` -- what handlers call remote services with;
* :mod:`~tavrida.events` -- named events (``proxy.publish_event``);
* :mod:`~tavrida.contracts` -- typed handler parameters, checked before a
  handler runs (the types: :mod:`~tavrida.schema`);
* :mod:`~tavrida.asyncapi` -- AsyncAPI 3.0 documents of services;
* :mod:`~tavrida.discovery` -- service name to exchange maps, ``.ds`` files;
* :mod:`~tavrida.messages` -- requests, responses, errors, notifications;
* :mod:`~tavrida.entry_point` -- ``service.method`` addresses;
* :mod:`~tavrida.middleware` -- ``Middleware``, around every handler;
* :mod:`~tavrida.config` -- ``ConnectionConfig``, ``Credentials``;
* :mod:`~tavrida.exceptions` -- every error, rooted at ``TavridaError``;
* :mod:`~tavrida.testing` -- run services in-process for tests;
* :mod:`~tavrida.transports` -- the broker seam (memory, kombu).
"""

from tavrida import (
                     client,
                     config,
                     discovery,
                     dispatcher,
                     entry_point,
                     exceptions,
                     messages,
                     middleware,
                     proxies,
                     server,
                     service,
)
from tavrida._version import __version__

__all__ = [
    "__version__", "client", "config", "discovery", "dispatcher", "entry_point", "exceptions",
    "messages", "middleware", "proxies", "server", "service",
]
