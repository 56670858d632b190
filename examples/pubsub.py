"""Publication and subscription: Hello publishes, World subscribes.

A client casts a request to ``test_hello.hello``; Hello's handler publishes
a notification on its own notification exchange (its *local publisher*);
World, which registered that exchange as a *remote publisher* of
``test_hello``, receives it in its subscription handler.

Runs on the in-memory transport by default; the same code runs on a broker::

    python examples/pubsub.py                          # memory://
    python examples/pubsub.py amqp://guest:guest@127.0.0.1:5672//
"""

import sys
import threading

from tavrida import client, config, discovery, dispatcher, server, service

#: World's subscription handler reports here, so the demo knows when to stop.
ARRIVED = threading.Semaphore(0)


@dispatcher.rpc_service("test_hello")
class HelloController(service.ServiceController):

    @dispatcher.rpc_method(service="test_hello", method="hello")
    def handler(self, request, proxy, param):
        print(f"hello  <- request      {request.source}: param={param!r}")
        # Published with source test_hello.hello (this handler's entry point),
        # on the exchange registered with register_local_publisher.
        proxy.publish(param="hello publication")


@dispatcher.rpc_service("test_world")
class WorldController(service.ServiceController):

    @dispatcher.subscription_method(service="test_hello", method="hello")
    def hello_subscription(self, notification, proxy, param):
        print(f"world  <- notification {notification.source}: param={param!r} "
              f"correlation_id={notification.correlation_id}")
        ARRIVED.release()


def hello_server(conf):
    # Service 'test_hello' publishes notifications to its exchange
    # 'test_notification_exchange'.
    disc = discovery.LocalDiscovery()
    disc.register_local_publisher("test_hello", "test_notification_exchange")
    HelloController.set_discovery(disc)
    return server.Server(conf, queue_name="test_service", exchange_name="test_exchange",
                         service_list=[HelloController])


def world_server(conf):
    # Service 'test_world' gets the notifications of 'test_hello' in its own
    # queue: the server binds it to 'test_notification_exchange'.
    disc = discovery.LocalDiscovery()
    disc.register_remote_publisher("test_hello", "test_notification_exchange")
    WorldController.set_discovery(disc)
    return server.Server(conf, queue_name="test_world_service",
                         exchange_name="test_world_exchange", service_list=[WorldController])


def main(url="memory://"):
    conf = config.ConnectionConfig.from_url(url)
    servers = [hello_server(conf), world_server(conf)]
    for srv in servers:
        srv.start()  # declare exchanges, queues and bindings before anything is sent
    threads = [threading.Thread(target=srv.run) for srv in servers]
    for thread in threads:
        thread.start()

    disc = discovery.LocalDiscovery()
    disc.register_remote_service("test_hello", "test_exchange")
    with client.RPCClient(config=conf, discovery=disc, source="client_app") as cli:
        for param in (1, 2):
            cli.test_hello.hello(param=param).cast(correlation_id=f"pubsub-{param}")

    ok = all(ARRIVED.acquire(timeout=10) for _ in range(2))
    for srv in servers:
        srv.stop()
    for thread in threads:
        thread.join()
    print("done" if ok else "timed out waiting for notifications")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
