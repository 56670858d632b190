"""Every default value of tavrida's settings, in one place.

The modules that take these settings (:mod:`tavrida.config`,
:mod:`tavrida.retries`, :mod:`tavrida.wire`, :mod:`tavrida.config_file`,
:mod:`tavrida.cli`, :mod:`tavrida.shell`, the client) import them from here,
and keep their old names where they documented one
(:data:`tavrida.config.DEFAULT_PUBLISH_TIMEOUT`, ...).
"""

from __future__ import annotations

from typing import Dict

# -- connection (ConnectionConfig) ------------------------------------------

#: Seconds a publish may take, connecting and confirming included.
PUBLISH_TIMEOUT = 30.0
#: Default port of each URL scheme.
PORTS: Dict[str, int] = {"amqp": 5672, "amqps": 5671, "pyamqp": 5672, "redis": 6379,
                         "rediss": 6379}
#: Connection attempts before giving up (first connect and each reconnect).
CONNECTION_ATTEMPTS = 3
#: Seconds between connection attempts.
RETRY_DELAY = 1.0
#: Seconds a socket read or write may block.
SOCKET_TIMEOUT = 3.0
#: Un-acked messages a consumer holds.
PREFETCH_COUNT = 100

# -- server ---------------------------------------------------------------------

#: Grace period of a server's stop, in seconds.
STOP_TIMEOUT = 30.0
#: Largest message body a server reads, in bytes.
MAX_BODY_SIZE = 16 * 1024 * 1024
#: Runs of a message whose handler asks for a retry (the first one included).
MAX_ATTEMPTS = 5
#: Seconds before the first retry; doubles at each attempt...
RETRY_BACKOFF = 0.5
#: ... up to this many seconds.
RETRY_BACKOFF_MAX = 30.0

#: Code of an Error whose exception has no ``code`` attribute (tavrida 1.0's).
ERROR_CODE = 1000

# -- client -------------------------------------------------------------------

#: Exchange the answers to a client's blocking calls come back on.
REPLY_EXCHANGE = "tavrida.replies"

# -- command line -------------------------------------------------------------

#: Broker of ``tavrida call``/``cast``/... without --url or $TAVRIDA_URL.
CLI_URL = "amqp://guest:guest@localhost:5672//"
#: Seconds ``tavrida call`` and ``tavrida shell`` wait for an answer.
CLI_TIMEOUT = 10.0
