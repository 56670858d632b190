"""The state the parts of the kombu transport share, declared in one place.

:class:`~tavrida.transports.kombu.KombuTransport` is put together from one
mixin per concern on the consuming side (connections, heartbeats,
declaring, consuming, draining); each reads and writes these attributes, so they are
declared once, grouped by the lock that guards them, and set by the
facade's ``__init__`` (:mod:`.transport`).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Deque, List, Optional, Set, Tuple

from kombu.connection import Connection

from tavrida.config import ConnectionConfig
from tavrida.transports.base import OnMessage, Transport
from tavrida.transports.kombu.compat import Compat
from tavrida.transports.kombu.connector import Connector
from tavrida.transports.kombu.deadlines import ThreadState
from tavrida.transports.kombu.declarations import Declarations
from tavrida.transports.kombu.deliveries import Consumer, KombuDelivery
from tavrida.transports.kombu.lifecycle import Lifecycle
from tavrida.transports.kombu.polling import Readable
from tavrida.transports.kombu.reconnect import Errors, ReconnectPolicy

if TYPE_CHECKING:  # the heartbeat module holds a mixin built on this one
    from tavrida.transports.kombu.heartbeat import Heartbeat


class KombuState(Transport):
    """The state every part of :class:`~tavrida.transports.kombu.KombuTransport` shares.

    Declared once, here, with the lock that guards each group; set by the
    facade's ``__init__``.
    """

    max_retry_interval: float
    topology_check_interval: float
    poll_interval: float
    min_poll_interval: float
    stop_step_timeout: float

    _config: ConnectionConfig
    _is_amqp: bool
    _confirms: bool
    _retry_errors: Errors
    _connection_errors: Errors
    _channel_errors: Errors
    # The consuming connection (guarded by _lock).
    _lock: threading.RLock
    _conn: Optional[Connection]
    _control: Any
    _generation: int
    _ever_connected: bool
    _broken: bool
    _declarations: Declarations
    _consumers: List[Consumer]
    _resume: List[Consumer]
    _ready: Deque[Tuple[KombuDelivery, OnMessage]]
    _unsettled: Set[KombuDelivery]
    _slice: float
    _settles: Deque[Tuple[KombuDelivery, Optional[bool]]]
    _unrestored: List[Any]
    _stop: threading.Event
    _local: ThreadState
    _lifecycle: Lifecycle
    _connector: Connector
    _compat: Compat
    _policy: ReconnectPolicy
    _heartbeat: Heartbeat
    #: Polls of the consuming socket: may acks wait (``_lock`` held), is it alive (any thread).
    _ack_poll: Readable
    _alive_poll: Readable
