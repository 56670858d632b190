"""The hello/world tutorial as one process per service, with names the test chooses.

Run by tests/integration/test_processes.py as a user runs a service::

    TVT_URL=amqp://... TVT_PREFIX=tvt-xyz python -m svc_chain hello|world

Every queue and exchange is ``<TVT_PREFIX>.<what>`` (the names the test's
``unique`` fixture makes and deletes). Hello calls World and publishes a
notification; what comes back to Hello (World's response or error) and
what World hears (Hello's notification) is reported by a cast to the
``observer`` service, whose exchange the test watches. The process serves
until SIGTERM or SIGINT and exits 0; the server logs ``started`` once it
consumes.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from tavrida import discovery, dispatcher, server, service


class WorldFailure(Exception):
    code = 42


@dispatcher.rpc_service("test_hello")
class Hello(service.ServiceController):

    @dispatcher.rpc_method(service="test_hello", method="hello")
    def hello(self, request, proxy, param):
        proxy.test_world.world(param=param).call()
        proxy.publish(param=param)
        return {"accepted": param}

    @dispatcher.rpc_response_method(service="test_world", method="world")
    def world_response(self, response, proxy, **payload):
        proxy.observer.report(kind="response", payload=payload,
                              source=str(response.source)).cast()

    @dispatcher.rpc_error_method(service="test_world", method="world")
    def world_error(self, error, proxy):
        proxy.observer.report(kind="error", payload=dict(error.payload),
                              source=str(error.source)).cast()


@dispatcher.rpc_service("test_world")
class World(service.ServiceController):

    @dispatcher.rpc_method(service="test_world", method="world")
    def world(self, request, proxy, param):
        if param == "fail":
            raise WorldFailure(f"world fails (param={param})")
        return {"param": f"world response to {param}"}

    @dispatcher.rpc_method(service="test_world", method="work")
    def work(self, request, proxy, n, seconds):
        time.sleep(seconds)  # the work a request takes
        proxy.observer.report(kind="work", payload={"n": n}, source=str(request.destination)).cast()

    @dispatcher.subscription_method(service="test_hello", method="hello")
    def hello_publication(self, notification, proxy, param):
        proxy.observer.report(kind="notification", payload={"param": param},
                              source=str(notification.source)).cast()


def names(prefix: str) -> dict:
    """Queue and exchange names shared with the test."""
    return {what: f"{prefix}.{what}" for what in (
        "hello-q", "hello-ex", "world-q", "world-ex", "notif-ex", "client-ex", "observer-ex")}


def make_server(role: str, url: str, prefix: str) -> server.Server:
    n = names(prefix)
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("client_app", n["client-ex"])  # blocking calls of the test
    disc.register_remote_service("observer", n["observer-ex"])
    if role == "hello":
        disc.register_remote_service("test_world", n["world-ex"])
        disc.register_local_publisher("test_hello", n["notif-ex"])
        Hello.set_discovery(disc)
        return server.Server(url, n["hello-q"], n["hello-ex"], [Hello])
    disc.register_remote_service("test_hello", n["hello-ex"])
    disc.register_remote_publisher("test_hello", n["notif-ex"])
    World.set_discovery(disc)
    return server.Server(url, n["world-q"], n["world-ex"], [World])


def main(argv: list) -> int:
    if len(argv) != 1 or argv[0] not in ("hello", "world"):
        print("usage: python -m svc_chain hello|world (TVT_URL, TVT_PREFIX set)",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    srv = make_server(argv[0], os.environ["TVT_URL"], os.environ["TVT_PREFIX"])
    srv.run()  # logs "started" once consuming; returns on SIGTERM / SIGINT
    print(f"{argv[0]} stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
