"""Central discovery: services find each other with no hand-written map.

Each server registers its services (exchange, notification exchange, queue)
in the broker it already uses; callers look names up there. Nothing below
says which exchange serves which service, except each service's own
notification exchange. Runs on the in-memory transport by default; the same
code runs on RabbitMQ or Redis::

    python examples/central_discovery.py                          # memory://
    python examples/central_discovery.py amqp://guest:guest@127.0.0.1:5672//
    python examples/central_discovery.py redis://127.0.0.1:6379/0
"""

import sys
import threading

from tavrida import client, discovery, dispatcher, server, service

#: The world service reports each notification here.
NOTIFIED = threading.Event()


@dispatcher.rpc_service("central_hello")
class HelloController(service.ServiceController):

    @dispatcher.rpc_method(service="central_hello", method="hello")
    def hello(self, request, proxy, param):
        proxy.publish(param=param)
        return {"answer": param * 2}


@dispatcher.rpc_service("central_world")
class WorldController(service.ServiceController):

    @dispatcher.subscription_method(service="central_hello", method="hello")
    def on_hello(self, notification, proxy, param):
        print(f"world  <- notification from {notification.source}: param={param!r}")
        NOTIFIED.set()


def main(url):
    #: The one discovery: the records live on the broker at ``url``.
    disc = discovery.CentralDiscovery(url)
    disc.register_local_publisher("central_hello", "central_hello_events")  # its own
    HelloController.set_discovery(disc)
    WorldController.set_discovery(disc)
    hello = server.Server(url, queue_name="central_hello", exchange_name="central_hello_exchange",
                          service_list=[HelloController])
    hello.start()  # registers central_hello
    disc.wait_for("central_hello")  # world subscribes to it: wait until the store says where
    world = server.Server(url, queue_name="central_world", exchange_name="central_world_exchange",
                          service_list=[WorldController])  # finds central_hello's notifications
    threads = [threading.Thread(target=srv.run, daemon=True) for srv in (hello, world)]
    for thread in threads:
        thread.start()
    # A client with no registrations of its own: it asks the store.
    caller = discovery.CentralDiscovery(url)
    try:
        with client.RPCClient(url, caller, source="central_client") as cli:
            answer = cli.central_hello.hello(param=21).call(timeout=10)
        NOTIFIED.wait(10)
        print("client <- response", answer)
        for name, (entry, record) in sorted(caller.directory.snapshot().items()):
            print(f"registered: {name} -> {entry.exchange} ({entry.role}, {record.owner})")
    finally:
        for srv in (hello, world):
            srv.stop()
        for thread in threads:
            thread.join(10)
        caller.close()
        disc.close()
    print("done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "memory://"))
