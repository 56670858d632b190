"""Services the asyncio unit tests run."""

from __future__ import annotations

from typing import Any, Callable, List

from tavrida import discovery, dispatcher, service


def hello_service(got: List[Any], gate: Callable[[], None] = lambda: None) -> type:
    """Service ``test_hello``: ``hello(param)`` echoes, ``fail(why)`` raises, ``slow`` waits."""

    @dispatcher.rpc_service("test_hello")
    class Hello(service.ServiceController):
        @dispatcher.rpc_method(service="test_hello", method="hello")
        def hello(self, request, proxy, param):
            got.append(param)
            return {"echo": param, "correlation_id": request.correlation_id,
                    "context": dict(request.context), "headers": dict(request.headers)}

        @dispatcher.rpc_method(service="test_hello", method="fail")
        def fail(self, request, proxy, why):
            raise ValueError(f"boom: {why}")

        @dispatcher.rpc_method(service="test_hello", method="slow")
        def slow(self, request, proxy, param):
            gate()
            return {"echo": param}

    disc = discovery.LocalDiscovery()
    disc.register_remote_service("client_app", "client_exchange")
    Hello.set_discovery(disc)
    return Hello
