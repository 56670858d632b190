"""Run ONE service of ``examples/hello_world.py`` as a process of its own.

::

    python examples/run_service.py hello amqp://guest:guest@127.0.0.1:5672//
    python examples/run_service.py world amqp://guest:guest@127.0.0.1:5672//
    python examples/send.py amqp://guest:guest@127.0.0.1:5672//

Start both services (in two terminals), then send the client's requests
with ``examples/send.py``. Each service serves until SIGTERM or Ctrl-C
(``Server.run`` stops on either, finishing and acking the messages in hand).

The URL defaults to ``memory://``, which only checks that a service starts:
the in-memory broker lives inside one process, so services run as separate
processes on ``memory://`` cannot talk to each other (run
``examples/hello_world.py`` to see both services in one process).
"""

import sys

# hello_world.py sits beside this script, so it imports as a module.
from hello_world import HelloController, WorldController, hello_server, world_server

SERVICES = {
    "hello": (HelloController, hello_server),
    "world": (WorldController, world_server),
}


def main(name="", url="memory://"):
    if name not in SERVICES:
        print(f"usage: {sys.argv[0]} hello|world [URL]", file=sys.stderr)
        return 2
    controller, make_server = SERVICES[name]
    srv = make_server(url)
    print(f"serving {controller.service_name()} on queue {srv.queue_name} "
          f"({srv.config.safe_url}); stop with Ctrl-C or SIGTERM")
    srv.run()  # blocks until SIGTERM / SIGINT
    print(f"{controller.service_name()} stopped")
    return 0


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # show each message as it comes, even in a log
    sys.exit(main(*sys.argv[1:3]))
