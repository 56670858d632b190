"""Declarations: the exchanges, queues and bindings a server declares at start.

Its queue, bound to its exchange for its services' requests and answers and
to each exchange of the notifications it subscribes to; its dead-letter
queue; the delay queues of its retries (one per backoff step); the
exchanges its services' discovery names. Deleted again by ``tavrida
topology delete`` (:mod:`tavrida.cli.topology`).
"""

from __future__ import annotations

from typing import Iterable, List, Tuple, Type

from tavrida.retries import RetryPolicy
from tavrida.service import ServiceController
from tavrida.transports.base import Binding, DelayQueue, Topology, dead_letter_queue_name


def retry_delays(queue: str, policy: RetryPolicy) -> Tuple[DelayQueue, ...]:
    """The delay queues of ``queue``'s retries, one per backoff step of ``policy``."""
    return tuple(DelayQueue(queue, delay_ms) for delay_ms in policy.delays_ms())


def of_server(queue: str, exchange: str, service_classes: Iterable[Type[ServiceController]],
              queue_type: str, policy: RetryPolicy) -> Topology:
    """What a server of ``service_classes`` on ``queue``, bound to ``exchange``, declares."""
    exchanges = [exchange]
    bindings: List[Binding] = []
    for cls in service_classes:
        discovery = cls.get_discovery()
        for group in discovery.get_all_exchanges().values():
            exchanges.extend(group.values())
        dispatcher = cls.get_dispatcher()
        name = cls.service_name()
        if any(True for _ in dispatcher.get_request_entry_services()) or \
                dispatcher.handles_answers():
            bindings.append(Binding(queue, exchange, f"{name}.#"))
        for ep in dispatcher.get_publishers():
            publisher = discovery.get_remote_publisher(ep.service)
            exchanges.append(publisher)
            bindings.append(Binding(queue, publisher, f"{ep.service}.{ep.method}.#"))
    return Topology.build(exchanges, [queue, dead_letter_queue_name(queue)], bindings,
                          queue_type, policy.max_attempts, retry_delays(queue, policy))
