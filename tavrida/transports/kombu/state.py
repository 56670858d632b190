"""The state the parts of the kombu transport share, declared in one place.

:class:`~tavrida.transports.kombu.KombuTransport` is put together from one
mixin per concern (connections, heartbeats, declaring, consuming, draining,
confirms, publishing); each reads and writes these attributes, so they are
declared once, grouped by the lock that guards them, and set by the
facade's ``__init__`` (:mod:`.transport`).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable, Deque, List, Optional, Set, Tuple

from kombu.connection import Connection

from tavrida.config import ConnectionConfig
from tavrida.transports.base import OnMessage, Transport
from tavrida.transports.kombu.batch import Batch
from tavrida.transports.kombu.compat import Compat
from tavrida.transports.kombu.connector import Connector
from tavrida.transports.kombu.deadlines import ThreadState
from tavrida.transports.kombu.declarations import Declarations
from tavrida.transports.kombu.deliveries import Consumer, KombuDelivery
from tavrida.transports.kombu.lifecycle import Lifecycle
from tavrida.transports.kombu.polling import Readable
from tavrida.transports.kombu.reconnect import Errors, ReconnectPolicy
from tavrida.transports.kombu.unconfirmed import ConfirmTracker

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
    confirm_timeout: float
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
    #: Polls of the publishing socket, with or without the reply queue's (the reader's).
    _confirm_poll: Readable
    _pub_poll: Readable
    #: Poll of the consuming and the publishing sockets, for deferred confirms.
    _sockets_poll: Readable
    # The publishing connection (guarded by _publish_lock).
    _publish_lock: threading.Lock
    _pub_conn: Optional[Connection]
    _pub_channel: Any
    _pub_ever_connected: bool
    _pub_confirming: bool
    _unconfirmed: ConfirmTracker
    _pub_reader: bool
    _pub_idle: List[Tuple[Batch, threading.Condition, Callable[[], bool]]]
    #: Deferred publishes waiting for their confirm, oldest first (see ``deferring``).
    _deferred: Deque[Batch]
    #: Exchanges a virtual publisher channel has recorded as topic exchanges.
    _pub_exchanges: Set[str]
