"""Log set-up for ``tavrida run``: level, text or JSON lines, amqp kept quiet.

:func:`configure_logging` is what the command line calls with the
``[logging]`` section; a program of its own may call it too, or use
:class:`JsonFormatter` with its own handlers.
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any, Dict, Optional, TextIO

#: ``[logging] format`` values.
TEXT = "text"
JSON = "json"
FORMATS = (TEXT, JSON)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Loggers of the broker library that are chatty at DEBUG (heartbeats, frames).
QUIET_LOGGERS = ("amqp",)

_HANDLER_NAME = "tavrida"
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message",
                                                                             "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: Dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: int = logging.INFO, fmt: str = TEXT, amqp_debug: bool = False,
                      stream: Optional[TextIO] = None) -> logging.Handler:
    """Log to ``stream`` (stderr) at ``level`` in ``fmt``; returns the root handler added.

    The ``amqp`` logger stays at WARNING (its DEBUG lines are heartbeats and
    frames) unless ``amqp_debug`` is set.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == JSON else logging.Formatter(TEXT_FORMAT))
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)  # called again: replace, do not log twice
    root.addHandler(handler)
    root.setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if amqp_debug else logging.WARNING)
    return handler


__all__ = ["FORMATS", "JSON", "TEXT", "JsonFormatter", "configure_logging"]
