"""Hello and World: the tutorial of the tavrida docs, in one process.

Hello handles requests from a client, calls World and handles World's
response and error; World answers, or fails when asked to; World also
subscribes to the notifications Hello publishes.

Runs on the in-memory transport by default; the same code runs on a broker::

    python examples/hello_world.py                          # memory://
    python examples/hello_world.py amqp://guest:guest@127.0.0.1:5672//

``examples/run_service.py`` runs each service as a process of its own.
"""

import sys
import threading

from tavrida import client, config, discovery, dispatcher, server, service

#: Each handler reports here, so the demo knows when everything has flowed.
ARRIVED = threading.Semaphore(0)


class WorldFailure(Exception):
    code = 42


@dispatcher.rpc_service("test_hello")
class HelloController(service.ServiceController):

    @dispatcher.rpc_method(service="test_hello", method="hello")
    def handler(self, request, proxy, param):
        print(f"hello  <- request  {request.source}: param={param!r}")
        proxy.test_world.world(param=param).call()
        proxy.publish(param="hello publication")

    @dispatcher.rpc_response_method(service="test_world", method="world")
    def world_resp(self, response, proxy, param):
        print(f"hello  <- response {response.source}: param={param!r} "
              f"context={response.context}")
        ARRIVED.release()

    @dispatcher.rpc_error_method(service="test_world", method="world")
    def world_error(self, error, proxy):
        print(f"hello  <- error    {error.source}: {error.payload}")
        ARRIVED.release()


@dispatcher.rpc_service("test_world")
class WorldController(service.ServiceController):

    @dispatcher.rpc_method(service="test_world", method="world")
    def world(self, request, proxy, param):
        print(f"world  <- request  {request.source}: param={param!r}")
        if param == "fail":
            raise WorldFailure(f"world fails (param={param})")
        return {"param": "world response"}

    @dispatcher.subscription_method(service="test_hello", method="hello")
    def hello_subscription(self, notification, proxy, param):
        print(f"world  <- notification {notification.source}: param={param!r}")
        ARRIVED.release()


def hello_server(url):
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("test_world", "test_world_exchange")
    disc.register_local_publisher("test_hello", "test_notification_exchange")
    HelloController.set_discovery(disc)
    return server.Server(url, queue_name="test_service", exchange_name="test_exchange",
                         service_list=[HelloController])


def world_server(url):
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("test_hello", "test_exchange")
    disc.register_remote_publisher("test_hello", "test_notification_exchange")
    WorldController.set_discovery(disc)
    return server.Server(url, queue_name="test_world_service",
                         exchange_name="test_world_exchange", service_list=[WorldController])


def send_requests(url):
    disc = discovery.LocalDiscovery()
    disc.register_remote_service(service_name="test_hello", exchange_name="test_exchange")
    with client.RPCClient(config=url, service="test_hello", discovery=disc,
                          source="client_app") as cli:
        cli.hello(param=123).cast(correlation_id="123-456")
        cli.hello(param="fail").cast()


def main(url="memory://"):
    conf = config.ConnectionConfig.from_url(url)
    servers = [hello_server(conf), world_server(conf)]
    for srv in servers:
        srv.start()  # declare queues and bindings before anything is sent
    threads = [threading.Thread(target=srv.run) for srv in servers]
    for thread in threads:
        thread.start()
    send_requests(conf)
    # two requests: a response, an error and two notifications come back
    ok = all(ARRIVED.acquire(timeout=10) for _ in range(4))
    for srv in servers:
        srv.stop()
    for thread in threads:
        thread.join()
    print("done" if ok else "timed out waiting for messages")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
