"""The access log: one INFO line per message on the ``tavrida.access`` logger.

::

    calc.divide request ok correlation_id=3f0c... 1.2 ms

Entry point, message type, outcome (``ok``, ``error``, ``expired``,
``retried``, ``dead-lettered`` or ``requeued``: see
:mod:`tavrida.observability.hooks`), correlation id and duration; never
headers or payloads. The same values are on the log record as
``entry_point``, ``message_type``, ``outcome``, ``correlation_id``,
``duration_ms`` and ``queue``, with ``error`` (the exception's class, or the
name of the Error sent) for failures (the JSON log format writes them as
fields).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Optional

from tavrida.observability.hooks import MessageRecord, ServerHook

if TYPE_CHECKING:
    from tavrida.server import Server

LOGGER_NAME = "tavrida.access"


class AccessLog(ServerHook):
    """Logs every message a server took, once it is settled."""

    def __init__(self, logger: Optional[logging.Logger] = None,
                 level: int = logging.INFO) -> None:
        self.logger = logger or logging.getLogger(LOGGER_NAME)
        self.level = level

    def message_finished(self, server: Server, record: MessageRecord) -> None:
        if not self.logger.isEnabledFor(self.level):
            return
        duration_ms = round((record.duration or 0.0) * 1000, 3)
        extra = {"entry_point": record.entry_point, "message_type": record.message_type,
                 "outcome": record.outcome, "correlation_id": record.correlation_id,
                 "duration_ms": duration_ms, "queue": record.queue}
        if record.exception is not None:
            extra["error"] = type(record.exception).__name__
        elif record.error_name:
            extra["error"] = record.error_name  # an Error sent with no exception raised
        self.logger.log(self.level, "%s %s %s correlation_id=%s %.1f ms",
                        record.entry_point or "-", record.message_type or "-", record.outcome,
                        record.correlation_id or "-", duration_ms, extra=extra)


__all__ = ["LOGGER_NAME", "AccessLog"]
