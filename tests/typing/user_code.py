"""User code as README.md and docs/ spell it, checked by ``mypy --strict``.

tests/unit/test_typing.py runs the check.

Not a test and never run: it only has to type-check the way a service
author's code would, so every documented form the public API offers is here,
annotated as a strict user would annotate it.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from tavrida import (
    client,
    config,
    discovery,
    dispatcher,
    exceptions,
    messages,
    middleware,
    proxies,
    server,
    service,
    testing,
)


class PrintMiddleware(middleware.Middleware):
    def process(self, message: Any) -> Any:
        print("middleware call")
        return message


@dispatcher.rpc_service("test_hello")
class HelloController(service.ServiceController):

    def __init__(self, postprocessor: Any) -> None:
        super().__init__(postprocessor)
        self.add_incoming_middleware(PrintMiddleware())
        self.add_outgoing_middleware(PrintMiddleware())

    @dispatcher.rpc_method(service="test_hello", method="hello")
    def handler(self, request: messages.IncomingRequest, proxy: proxies.RPCProxy,
                param: int) -> Dict[str, Any]:
        proxy.test_world.world(param=param).call()
        proxy.test_world.world(param=param).cast(correlation_id="123-456")
        proxy.publish(value="notification")
        return {"answer": param * 2}

    @dispatcher.rpc_response_method(service="test_world", method="world")
    def world_resp(self, response: messages.IncomingResponse, proxy: proxies.RPCProxy,
                   answer: int) -> None:
        print(response.correlation_id, answer)

    @dispatcher.rpc_error_method(service="test_world", method="world")
    def world_error(self, error: messages.IncomingError, proxy: proxies.RPCProxy) -> None:
        print(error.payload["name"], error.payload["message"])

    @dispatcher.subscription_method(service="test_world", method="event")
    def world_event(self, notification: messages.IncomingNotification,
                    proxy: proxies.RPCProxy, value: str) -> None:
        print(value)


def make_discovery() -> discovery.LocalDiscovery:
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("test_hello", "test_exchange")
    disc.register_remote_service("test_world", "test_world_exchange")
    disc.register_remote_service("client_app", "client_app_exchange")
    disc.register_remote_publisher("test_world", "test_world_notifications")
    disc.register_local_publisher("test_hello", "test_notification_exchange")
    return disc


def run_server() -> None:
    HelloController.set_discovery(make_discovery())
    srv = server.Server("amqp://guest:guest@127.0.0.1:5672//", queue_name="test_service",
                        exchange_name="test_exchange", service_list=[HelloController])
    srv.run()
    server.Server.from_config("services.ini").run()


def call_from_a_script() -> None:
    conf = config.ConnectionConfig(host="127.0.0.1", port=5672)
    with client.RPCClient("amqp://guest:guest@127.0.0.1:5672//", make_discovery(),
                          source="client_app") as cli:
        cli.test_hello.hello(param=123).cast()
        cli.test_hello.hello(param=123).cast(correlation_id="123-456")
        request: messages.Request = cli.test_hello.hello(param=123).call()
        print(request.request_id)
        try:
            answer: Dict[str, Any] = cli.test_hello.hello(param=123).call(timeout=5)
            print(answer)
        except exceptions.RemoteError as exc:
            print(exc)
        except exceptions.CallTimeout:
            pass
        cli.add_headers({"tenant": "acme"})
        notification: messages.Notification = cli.publish(value="event")
        print(notification.correlation_id)

    one = client.RPCClient(config=conf, discovery=make_discovery(), source="client_app",
                           service="test_hello")
    one.hello(param=1).cast()
    print(one.hello(param=1).call(timeout=5)["answer"])
    deadline: Optional[float] = None
    sent_or_answer = one.hello(param=1).call(timeout=deadline)
    if isinstance(sent_or_answer, messages.Request):
        print(sent_or_answer.request_id)
    one.close()


def misuse_is_caught() -> None:
    """What mypy must reject: strict mode's ``warn_unused_ignores`` makes each
    ``type: ignore`` below an error of its own if the line ever type-checks."""
    cli = client.RPCClient("memory://", make_discovery(), source="client_app")
    print(cli.test_hello.hello.extra)  # type: ignore[attr-defined]
    cli.test_hello.hello(param=1).call().keys()  # type: ignore[attr-defined]
    request: messages.Request = cli.test_hello.hello(  # type: ignore[assignment]
        param=1).call(timeout=5)
    print(request, cli.test_hello.hello(param=1).call(5))  # type: ignore[call-overload]


def unit_test_on_the_memory_transport() -> None:
    HelloController.set_discovery(make_discovery())
    with testing.MemoryCluster() as cluster:
        cluster.add_server([HelloController])
        cli = cluster.client(make_discovery(), source="client_app")
        cli.test_hello.hello(param=1).call()
        handled: int = cluster.deliver()
        print(handled, cluster.sent_by("test_hello").responses[0].payload)
        answer = cli.test_hello.hello(param=2).call(timeout=5)
        print(answer, cluster.dead_letters("test_hello_queue"))

    result = testing.call_handler(HelloController, "hello", param=1)
    assert result.response == {"answer": 2}
    assert result.sent.requests
    failed = testing.call_handler(HelloController, "world_event", value="x",
                                  expect_errors=ValueError)
    print(failed.error, failed.exception)
