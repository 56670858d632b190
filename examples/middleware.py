"""Middlewares: code that runs around every handler of a service.

World guards its handler with three middlewares, added in its controller's
``__init__``:

* ``LogIncoming`` (incoming) prints every message that arrives;
* ``RequireToken`` (incoming) answers a request that lacks the
  ``x-auth-token`` header with an Error, so the handler never runs;
* ``AddServedBy`` (outgoing) adds a ``served_by`` field to every Response.

Hello is World's caller: a client casts to ``test_hello.hello``, Hello calls
``test_world.world`` and handles the response or the error. User headers
travel along: the client's ``headers=`` go with its request to Hello, and the
proxy Hello's handler gets carries them on into the call to World.

Runs on the in-memory transport by default; the same code runs on a broker::

    python examples/middleware.py                          # memory://
    python examples/middleware.py amqp://guest:guest@127.0.0.1:5672//
"""

import sys
import threading

from tavrida import client, config, discovery, dispatcher, messages, middleware, server, service

TOKEN = "s3cret"
#: Hello's response and error handlers report here.
ARRIVED = threading.Semaphore(0)


class Unauthorized(Exception):
    code = 401


class LogIncoming(middleware.Middleware):
    def process(self, message):
        print(f"world  [log]  {message.message_type} {message.source} -> "
              f"{message.destination} payload={message.payload}")
        return message  # go on to the next middleware, then the handler


class RequireToken(middleware.Middleware):
    def process(self, message):
        # Incoming middlewares see every message the service takes (requests,
        # responses, errors, notifications): guard the requests only.
        if not isinstance(message, messages.IncomingRequest):
            return message
        if message.headers.get("x-auth-token") == TOKEN:
            return message
        print(f"world  [auth] refused {message.source}: no valid x-auth-token")
        # A Response or Error stops the chain: it is the answer to a call
        # (it skips the outgoing middlewares; a cast gets no answer).
        return messages.Error.create_by_request(
            message, Unauthorized("a valid x-auth-token header is required"))


class AddServedBy(middleware.Middleware):
    def process(self, message):
        if isinstance(message, messages.Response):
            message.payload["served_by"] = "test_world"
        return message  # an outgoing middleware returns a message of the same class


@dispatcher.rpc_service("test_world")
class WorldController(service.ServiceController):

    def __init__(self, postprocessor):
        super().__init__(postprocessor)
        self.add_incoming_middleware(LogIncoming())
        self.add_incoming_middleware(RequireToken())
        self.add_outgoing_middleware(AddServedBy())

    @dispatcher.rpc_method(service="test_world", method="world")
    def world(self, request, proxy, param):
        print(f"world  <- request  {request.source}: param={param!r}")
        return {"param": "world response"}


@dispatcher.rpc_service("test_hello")
class HelloController(service.ServiceController):

    @dispatcher.rpc_method(service="test_hello", method="hello")
    def handler(self, request, proxy, param):
        print(f"hello  <- request  {request.source}: param={param!r} "
              f"x-auth-token={request.headers.get('x-auth-token')!r}")
        proxy.test_world.world(param=param).call()

    @dispatcher.rpc_response_method(service="test_world", method="world")
    def world_resp(self, response, proxy, param, served_by):
        print(f"hello  <- response {response.source}: param={param!r} "
              f"served_by={served_by!r}")
        ARRIVED.release()

    @dispatcher.rpc_error_method(service="test_world", method="world")
    def world_error(self, error, proxy):
        print(f"hello  <- error    {error.source}: {error.payload}")
        ARRIVED.release()


def hello_server(conf):
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("test_world", "test_world_exchange")
    HelloController.set_discovery(disc)
    return server.Server(conf, queue_name="test_service", exchange_name="test_exchange",
                         service_list=[HelloController])


def world_server(conf):
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("test_hello", "test_exchange")  # where answers go
    WorldController.set_discovery(disc)
    return server.Server(conf, queue_name="test_world_service",
                         exchange_name="test_world_exchange", service_list=[WorldController])


def send_requests(conf):
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("test_hello", "test_exchange")
    # With the token: every request of this client carries the header.
    with client.RPCClient(config=conf, discovery=disc, source="client_app",
                          headers={"x-auth-token": TOKEN}) as cli:
        cli.test_hello.hello(param="with token").cast()
    # Without it (cli.add_headers({"x-auth-token": TOKEN}) would add it later).
    with client.RPCClient(config=conf, discovery=disc, source="client_app") as cli:
        cli.test_hello.hello(param="without token").cast()


def main(url="memory://"):
    conf = config.ConnectionConfig.from_url(url)
    servers = [hello_server(conf), world_server(conf)]
    for srv in servers:
        srv.start()  # declare queues and bindings before anything is sent
    threads = [threading.Thread(target=srv.run) for srv in servers]
    for thread in threads:
        thread.start()
    send_requests(conf)
    # two calls to World: one response and one error come back
    ok = all(ARRIVED.acquire(timeout=10) for _ in range(2))
    for srv in servers:
        srv.stop()
    for thread in threads:
        thread.join()
    print("done" if ok else "timed out waiting for messages")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
