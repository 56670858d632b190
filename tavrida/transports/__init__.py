"""Transports: how tavrida reaches a broker.

:func:`create_transport` picks the transport a config names:
``memory://`` is tavrida's in-memory transport, anything else goes to kombu.
"""

from __future__ import annotations

from tavrida.config import ConnectionConfig
from tavrida.transports.base import (
    Binding,
    DelayQueue,
    Delivery,
    OutgoingEnvelope,
    Topology,
    Transport,
)

__all__ = ["Binding", "DelayQueue", "Delivery", "OutgoingEnvelope", "Topology", "Transport",
           "create_transport"]


def create_transport(config: ConnectionConfig) -> Transport:
    """Open the transport that serves ``config``."""
    if config.is_memory:
        from tavrida.transports.memory import MemoryTransport

        return MemoryTransport(config)
    from tavrida.transports.kombu import KombuTransport

    return KombuTransport(config)
