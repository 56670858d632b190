"""Discovery from a ``.ds`` file: two services share ``examples/discovery.ds``.

* ``service1`` handles ``service1.hello``: it calls ``service2.world`` and
  publishes a notification on its ``notifications`` exchange;
* ``service2`` answers ``service2.world`` and subscribes to ``service1``
  (``subscriptions=["service1"]``).

Each service loads its own view of the file with
:class:`~tavrida.discovery.FileBasedDiscoveryService`; the client gets one
from :class:`~tavrida.discovery.DiscoveryFactory`. The servers' exchanges
come from the file too (``service_exchange``).

Runs on the in-memory transport by default; the same code runs on a broker::

    python examples/ds_discovery.py                          # memory://
    python examples/ds_discovery.py amqp://guest:guest@127.0.0.1:5672//
"""

import os
import sys
import threading

from tavrida import client, config, discovery, dispatcher, server, service

#: The .ds file lives beside this script, wherever it is run from.
DS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "discovery.ds")
#: service1's response handler and service2's subscription handler report here.
ARRIVED = threading.Semaphore(0)


@dispatcher.rpc_service("service1")
class Service1Controller(service.ServiceController):

    @dispatcher.rpc_method(service="service1", method="hello")
    def hello(self, request, proxy, param):
        print(f"service1 <- request      {request.source}: param={param!r}")
        proxy.service2.world(param=param).call()
        proxy.publish(event="hello handled")

    @dispatcher.rpc_response_method(service="service2", method="world")
    def world_resp(self, response, proxy, param):
        print(f"service1 <- response     {response.source}: param={param!r}")
        ARRIVED.release()


@dispatcher.rpc_service("service2")
class Service2Controller(service.ServiceController):

    @dispatcher.rpc_method(service="service2", method="world")
    def world(self, request, proxy, param):
        print(f"service2 <- request      {request.source}: param={param!r}")
        return {"param": "world response"}

    @dispatcher.subscription_method(service="service1", method="hello")
    def on_hello(self, notification, proxy, event):
        print(f"service2 <- notification {notification.source}: event={event!r}")
        ARRIVED.release()


def service1_server(conf):
    # service1 publishes on service1_notifications (its local publisher);
    # every section of the file is a remote service it can call.
    disc = discovery.FileBasedDiscoveryService(DS_FILE, "service1")
    Service1Controller.set_discovery(disc)
    return server.Server(conf, queue_name="service1_queue",
                         exchange_name=disc.service_exchange,
                         service_list=[Service1Controller])


def service2_server(conf):
    # service2 subscribes to service1: its queue is bound to service1_notifications.
    disc = discovery.FileBasedDiscoveryService(DS_FILE, "service2", subscriptions=["service1"])
    Service2Controller.set_discovery(disc)
    return server.Server(conf, queue_name="service2_queue",
                         exchange_name=disc.service_exchange,
                         service_list=[Service2Controller])


def main(url="memory://"):
    conf = config.ConnectionConfig.from_url(url)
    servers = [service1_server(conf), service2_server(conf)]
    for srv in servers:
        srv.start()  # declare exchanges, queues and bindings before anything is sent
    threads = [threading.Thread(target=srv.run) for srv in servers]
    for thread in threads:
        thread.start()

    # With a path, the factory reads the file; with none it gives a LocalDiscovery.
    disc = discovery.DiscoveryFactory(DS_FILE).get_discovery_service()
    with client.RPCClient(config=conf, discovery=disc, source="client_app") as cli:
        cli.service1.hello(param=1).cast()

    # a response to service1 and a notification to service2
    ok = all(ARRIVED.acquire(timeout=10) for _ in range(2))
    for srv in servers:
        srv.stop()
    for thread in threads:
        thread.join()
    print("done" if ok else "timed out waiting for messages")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
