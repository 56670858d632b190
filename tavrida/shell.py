"""``tavrida shell CONFIG``: a Python prompt with a client bound to a config file.

::

    $ tavrida shell services.ini
    >>> n.test_hello.hello(param=1)          # a blocking call: the answer is shown
    {'param': 'world response'}
    >>> n.test_hello.hello(param=1).cast()   # a cast: the request sent is shown
    >>> answer = n.test_hello.hello(param=1).call(timeout=30)

``n`` is an :class:`~tavrida.client.RPCClient` whose discovery is the config
file's (see :meth:`~tavrida.config_file.ServiceConfig.client_discovery`): the
services the file runs, on its ``[server] exchange``, and those it names in
``[discovery]``. A request left unsent at the prompt (``n.svc.method(...)``)
is sent as a blocking call with the shell's default timeout and its answer
shown; an Error answer or a timeout is shown on one line, and the prompt goes
on.
"""

from __future__ import annotations

import code
import sys
from typing import Any, Callable, Dict, List, Optional

from tavrida import client, config_file, defaults, exceptions, service_graph
from tavrida.proxies import RPCCallProxy

#: Seconds a call made at the prompt waits for its answer.
DEFAULT_TIMEOUT = defaults.CLI_TIMEOUT


class Shell:
    """The interactive console of ``tavrida shell``: a client ``n`` and a display hook."""

    def __init__(self, conf: config_file.ServiceConfig, cli: client.RPCClient,
                 timeout: float = DEFAULT_TIMEOUT, source: str = "") -> None:
        self.conf = conf
        self.source = source
        self.client = cli
        self.timeout = timeout
        self.namespace: Dict[str, Any] = {"n": cli, "__name__": "__console__"}
        self._previous_hook: Callable[[object], Any] = sys.displayhook

    def banner(self) -> str:
        """What the shell says first: the broker, the services and how to call them."""
        lines = [f"tavrida shell: {self.conf.path} on {self.conf.connection.safe_url}"]
        for cls in self.conf.service_classes:
            found = service_graph.shape(cls)
            methods = ", ".join(sorted(found.requests)) or "no requests"
            lines.append(f"  {found.name}: {methods}")
        others = sorted(set(self.client_services()) - {c.service_name()
                                                       for c in self.conf.service_classes}
                        - {self.source})
        if others:
            lines.append(f"  also known: {', '.join(others)}")
        lines += [f"n.<service>.<method>(key=value) calls and shows the answer "
                  f"(timeout {self.timeout:g} s);",
                  "add .cast() to cast, .call(timeout=T) to wait T seconds. Ctrl-D leaves."]
        return "\n".join(lines)

    def client_services(self) -> List[str]:
        """The services ``n`` knows the exchange of."""
        return sorted(self.client.sender.discovery.get_all_exchanges()["remote"])

    def display(self, value: object) -> None:
        """``sys.displayhook`` at the prompt: an unsent request is sent as a blocking call."""
        if isinstance(value, RPCCallProxy):
            try:
                value = value.call(timeout=self.timeout)
            except exceptions.RemoteError as exc:
                print(f"RemoteError: {exc.remote_name}: {exc.remote_message}"
                      + (f" (code {exc.code})" if exc.code else ""), file=sys.stderr)
                return
            except exceptions.TavridaError as exc:  # CallTimeout, Unroutable, ...
                print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
                return
        self._previous_hook(value)

    def interact(self) -> None:
        """Read and run lines until end of input (Ctrl-D)."""
        console = code.InteractiveConsole(self.namespace, filename="<tavrida shell>")
        if sys.stdin.isatty():
            try:
                import readline  # noqa: F401 - line editing and history at a terminal
            except ImportError:
                pass
        self._previous_hook = sys.displayhook
        sys.displayhook = self.display
        try:
            console.interact(banner=self.banner(), exitmsg="")
        finally:
            sys.displayhook = self._previous_hook


def run(path: str, url: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT,
        source: str = config_file.CLI_CALLER) -> int:
    """Run the shell of config file ``path``; returns the exit code (0)."""
    conf = config_file.ServiceConfig(path, url, url_flag="--url")
    with client.RPCClient(conf.connection, conf.client_discovery(), source=source) as cli:
        Shell(conf, cli, timeout, source).interact()
    return 0
