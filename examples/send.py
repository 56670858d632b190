"""Send the client's two casts of ``examples/hello_world.py`` and exit.

::

    python examples/send.py amqp://guest:guest@127.0.0.1:5672//

sends ``test_hello.hello(param=123)`` and ``test_hello.hello(param="fail")``
to the services that ``examples/run_service.py`` runs. Each request is
printed as it is sent.

The URL defaults to ``memory://``. The in-memory broker lives inside this
process, where no service runs, so on ``memory://`` the script declares
Hello's exchange and queue itself (publishing to an exchange nobody declared
fails) and reports the requests left waiting in that queue.
"""

import sys

from hello_world import hello_server

from tavrida import client, config, discovery


def main(url="memory://"):
    conf = config.ConnectionConfig.from_url(url)
    disc = discovery.LocalDiscovery()
    disc.register_remote_service(service_name="test_hello", exchange_name="test_exchange")
    with client.RPCClient(config=conf, service="test_hello", discovery=disc,
                          source="client_app") as cli:
        if conf.is_memory:
            cli.transport.declare(hello_server(conf).topology())
        sent = [cli.hello(param=123).cast(correlation_id="123-456"),
                cli.hello(param="fail").cast()]
        for request in sent:
            print(f"sent {request.message_type} {request.source} -> {request.destination} "
                  f"payload={request.payload} correlation_id={request.correlation_id}")
        if conf.is_memory:
            print(f"{cli.transport.queue_size('test_service')} request(s) wait in queue "
                  f"test_service of this process's in-memory broker; nobody serves them")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
