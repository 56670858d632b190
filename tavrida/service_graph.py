"""What a service class says about its peers, read without running it.

A :class:`ServiceShape` lists the requests a service handles, the services
whose responses and errors it handles (it calls them), the notifications it
subscribes to, and, read from its handlers' source, the calls its handlers
make through their proxy (``proxy.users.get(...)``) and the handlers that
publish (``proxy.publish(...)``). Config checks use it to tell a missing or
misspelt ``remote.<service>`` entry, and ``tavrida topology show --format``
to draw who calls whom.

The source reading is a best effort: a call made through another object
than the handler's proxy parameter, or a handler whose source cannot be
read, is not seen (:attr:`ServiceShape.complete` is False for the latter).
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from tavrida import entry_point, messages
from tavrida.class_path import did_you_mean
from tavrida.proxies import RPCProxy
from tavrida.service import ServiceController

#: What ``proxy.<name>`` is when it is not a service: the proxy's own methods.
_PROXY_ATTRIBUTES = frozenset(name for name in dir(RPCProxy) if not name.startswith("_"))


@dataclass
class ServiceShape:
    """The peers of one service class, as its handlers declare them."""

    name: str
    #: Methods of this service it handles requests for.
    requests: List[str] = field(default_factory=list)
    #: Remote entry points whose responses or errors it handles.
    answers: List[entry_point.EntryPoint] = field(default_factory=list)
    #: Remote entry points whose notifications it subscribes to.
    subscriptions: List[entry_point.EntryPoint] = field(default_factory=list)
    #: ``(service, method)`` its handlers call or cast through their proxy.
    calls: Set[Tuple[str, str]] = field(default_factory=set)
    #: Its entry points whose handlers publish notifications (``service.method``).
    publishes: Set[str] = field(default_factory=set)
    #: False when some handler's source could not be read.
    complete: bool = True

    def called_services(self) -> List[str]:
        """Services it calls: those its handlers call, or whose answers it handles."""
        return sorted({ep.service for ep in self.answers} | {svc for svc, _ in self.calls})


def _proxy_uses(func: Callable[..., Any]) -> Optional[Tuple[Set[Tuple[str, str]], bool]]:
    """The ``proxy.S.M(...)`` calls of a handler and whether it publishes; None: unreadable."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
        proxy = list(inspect.signature(func).parameters)[2]
    except (OSError, TypeError, SyntaxError, IndexError, ValueError):
        return None
    calls: Set[Tuple[str, str]] = set()
    publishes = False
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value
        if isinstance(owner, ast.Name) and owner.id == proxy:
            publishes = publishes or node.func.attr == "publish"
        elif (isinstance(owner, ast.Attribute) and isinstance(owner.value, ast.Name)
              and owner.value.id == proxy and owner.attr not in _PROXY_ATTRIBUTES
              and not owner.attr.startswith("_")):
            calls.add((owner.attr, node.func.attr))
    return calls, publishes


def shape(cls: type) -> ServiceShape:
    """The :class:`ServiceShape` of a service class declared with ``rpc_service``."""
    if not issubclass(cls, ServiceController):
        raise TypeError(f"{cls!r} is not a ServiceController")
    found = ServiceShape(cls.service_name())
    for (kind, ep), handler in cls.get_dispatcher().handlers.items():
        if kind == messages.REQUEST:
            found.requests.append(ep.method)
        elif kind in (messages.RESPONSE, messages.ERROR):
            if ep not in found.answers:
                found.answers.append(ep)
        elif kind == messages.NOTIFICATION:
            found.subscriptions.append(ep)
        uses = _proxy_uses(getattr(cls, handler.method_name))
        if uses is None:
            found.complete = False
            continue
        found.calls |= uses[0]
        if uses[1] and kind == messages.REQUEST:
            found.publishes.add(f"{ep.service}.{ep.method}")
        elif uses[1]:
            # A notification's source is the entry point of the message handled.
            found.publishes.add(f"{found.name}.{handler.method_name}")
    return found


@dataclass
class RemoteProblem:
    """A ``remote.<service>`` entry missing (``mistake``: surely) or unused."""

    service: str
    reason: str
    mistake: bool


def remote_problems(shapes: Sequence[ServiceShape], remotes: Mapping[str, Mapping[str, str]],
                    inline: Sequence[str], elsewhere: bool = False) -> List[RemoteProblem]:
    """What is wrong with the remote services of a config's discovery.

    ``remotes`` maps each service of ``shapes`` to the remote services its
    discovery knows, ``inline`` lists the config's own ``remote.<service>``
    entries, ``elsewhere`` says part of the discovery comes from outside
    the file. A service a handler calls and no discovery knows is a
    mistake (a warning when ``elsewhere``); one whose answers a handler takes
    but none calls (another service may name this one in ``reply_to``) is a
    warning, and so is an inline entry no handler calls (it may route the
    answers to that service's calls), unless a handler could not be read.
    """
    problems: List[RemoteProblem] = []
    needed: Dict[str, str] = {}
    for found in shapes:
        called = {svc for svc, _ in found.calls}
        for service in found.called_services():
            needed.setdefault(service, found.name)
            if service in remotes[found.name]:
                continue
            how = "calls" if service in called else "handles the responses or errors of"
            reason = (f"missing: {found.name} {how} {service}, and no exchange of {service} "
                      f"is known" + (" here" if elsewhere else ""))
            problems.append(RemoteProblem(service, reason, service in called and not elsewhere))
    if not all(found.complete for found in shapes):
        return problems  # some handler was not read: its calls are unknown
    missing = [name for name in needed if all(name not in known for known in remotes.values())]
    for service in inline:
        if service not in needed:
            problems.append(RemoteProblem(
                service, f"no handler here calls {service}{did_you_mean(service, missing)}; "
                         f"without a typo, the entry only routes answers to {service}'s calls",
                False))
    return problems
