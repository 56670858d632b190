"""The config file's schema: its sections, keys and value types, and reading a file against it.

:data:`SCHEMA` declares every section and key; :class:`CheckedFile` reads a
file, checks each key against it and converts each value, noting every
mistake (:class:`ConfigError`) so that all are reported at once. What the
values mean is :class:`tavrida.config_file.ServiceConfig`'s.
"""

from __future__ import annotations

import configparser
import difflib
from typing import Any, Dict, List, Optional, Tuple

from tavrida import exceptions


class SecondsOrNone:
    """:data:`SCHEMA` type of a positive number of seconds, or ``none`` (no limit)."""


#: Every section a config file may have, the keys it takes and the type of
#: each value (``str``, ``int``, ``float``, ``bool`` or :class:`SecondsOrNone`). A key ending in
#: ``.*`` takes any name after the dot (``remote.*`` matches
#: ``remote.users``). Anything not declared here is an error. To add a key,
#: add one line here and read it with :meth:`ServiceConfig.get`; every
#: ``[connection]`` key but ``url``, ``urls``, ``username`` and ``password``
#: is passed to :class:`~tavrida.config.ConnectionConfig` as is. ``urls``
#: lists a cluster's nodes, one URL per (indented) line.
#:
#: :meta hide-value:
SCHEMA: Dict[str, Dict[str, type]] = {
    "connection": {
        "url": str,
        "urls": str,
        "host": str,
        "port": int,
        "virtual_host": str,
        "username": str,
        "password": str,
        "scheme": str,
        "ssl": bool,
        "channel_max": int,
        "frame_max": int,
        "heartbeat_interval": float,
        "connection_attempts": int,
        "retry_delay": float,
        "socket_timeout": float,
        "reconnect_attempts": int,
        "async_engine": bool,
        "publisher_confirms": bool,
        "persistent": bool,
        "prefetch_count": int,
        "publish_timeout": SecondsOrNone,
    },
    "server": {
        "queue": str,
        "exchange": str,
        "services": str,
        "workers": int,
        "max_attempts": str,  # a whole number >= 1, or "none"
        "retry_backoff": float,
        "retry_backoff_max": float,
        "queue_type": str,  # classic or quorum (see tavrida.transports.base.QUEUE_TYPES)
        "stop_timeout": float,
        "reply_exchanges": str,  # any or known (see tavrida.answers.REPLY_EXCHANGES)
        "pipelined_answers": bool,  # see tavrida.server.Server.pipelined_answers
    },
    "discovery": {
        "file": str,
        "remote.*": str,
        "remote_publisher.*": str,
        "local_publisher.*": str,
        "central": bool,  # tavrida.discovery.CentralDiscovery, the entries above overriding it
        "central_url": str,  # its store, when not the connection's broker
    },
    "logging": {
        "level": str,
        "format": str,
        "access": bool,
        "amqp_debug": bool,
    },
    "metrics": {
        "port": int,
        "host": str,
    },
    "tracing": {
        "enabled": bool,
    },
    "health": {
        "file": str,
        "interval": float,
        "port": int,
    },
}

_BOOLEANS = configparser.ConfigParser.BOOLEAN_STATES
#: No [DEFAULT] magic: a section of that name is just an unknown section.
_NO_DEFAULT_SECTION = "\0tavrida-no-default"


class ConfigError(exceptions.TavridaError):
    """A config file is wrong; the message names the file, section and key.

    A bad value from a command-line flag or the environment names the flag
    or the variable instead.
    """

    message_template = "%(path)s: [%(section)s] %(key)s: %(reason)s"

    def __init__(self, message: str = "", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        #: Every mistake found, each a ConfigError of its own (this one alone, or several).
        self.errors: List[ConfigError] = [self]

    @classmethod
    def several(cls, errors: List["ConfigError"]) -> "ConfigError":
        """One error reporting all of ``errors``, one per line of its message."""
        if len(errors) == 1:
            return errors[0]
        joined = cls("\n".join(error.message for error in errors))
        joined.errors = list(errors)
        return joined


def spelled(key: str) -> str:
    """A schema key as users write it: ``remote.*`` is ``remote.<service>``."""
    return key[:-1] + "<service>" if key.endswith(".*") else key


def schema_key(section: str, key: str) -> Optional[str]:
    """The :data:`SCHEMA` entry ``key`` of ``section`` matches, if any."""
    keys = SCHEMA.get(section, {})
    if key in keys:
        return key
    prefix, dot, rest = key.partition(".")
    if dot and rest and f"{prefix}.*" in keys:
        return f"{prefix}.*"
    return None


def did_you_mean(word: str, choices: List[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def unknown_key_reason(section: str, key: str) -> str:
    """``unknown key`` and the nearest known key, here or in another section."""
    keys = SCHEMA[section]
    prefix, dot, rest = key.partition(".")
    if dot and rest:
        patterns = [k[:-2] for k in keys if k.endswith(".*")]
        close = difflib.get_close_matches(prefix, patterns, n=1, cutoff=0.6)
        if close:
            return f"unknown key (did you mean {close[0]}.{rest}?)"
    hint = did_you_mean(key, [k for k in keys if not k.endswith(".*")])
    if hint:
        return f"unknown key{hint}"
    for other, other_keys in SCHEMA.items():
        if other != section and key in other_keys:
            return f"unknown key (did you mean [{other}] {key}?)"
    return f"unknown key; [{section}] takes {', '.join(spelled(k) for k in keys)}"


class CheckedFile:
    """A config file read and checked against :data:`SCHEMA`: its values and its mistakes."""

    def __init__(self, path: str) -> None:
        self.path = path
        parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";",),
                                           default_section=_NO_DEFAULT_SECTION)
        try:
            with open(path, encoding="utf-8") as handle:
                parser.read_file(handle)
        except FileNotFoundError:
            raise ConfigError(f"{path}: the file does not exist") from None
        except IsADirectoryError:
            raise ConfigError(f"{path}: is a folder, not a config file") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the file: {exc.strerror}") from None
        except configparser.Error as exc:
            raise ConfigError(f"{path}: not valid INI: {exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text: {exc}") from None
        self._parser = parser
        #: Every mistake found.
        self.errors: List[ConfigError] = []
        #: Sections a misspelt section name stands for: their missing keys are not mistakes.
        self.misspelt: List[str] = []
        #: section -> key -> value, converted to its :data:`SCHEMA` type.
        self.values = self._checked()

    def _error(self, section: str, key: str, reason: str) -> ConfigError:
        return ConfigError(path=self.path, section=section, key=key, reason=reason)

    def _checked(self) -> Dict[str, Dict[str, Any]]:
        """Every section and key checked against :data:`SCHEMA`, values converted."""
        values: Dict[str, Dict[str, Any]] = {}
        for section in self._parser.sections():
            if section not in SCHEMA:
                close = difflib.get_close_matches(section, list(SCHEMA), n=1, cutoff=0.6)
                hint = (f" (did you mean [{close[0]}]?)" if close
                        else f"; sections are {', '.join(f'[{s}]' for s in SCHEMA)}")
                self.errors.append(
                    ConfigError(f"{self.path}: [{section}]: unknown section{hint}"))
                if close and not self._parser.has_section(close[0]):
                    self.misspelt.append(close[0])
                continue
            values[section] = {}
            for key, raw in self._parser.items(section):
                entry = schema_key(section, key)
                if entry is None:
                    self.errors.append(
                        self._error(section, key, unknown_key_reason(section, key)))
                    continue
                try:
                    values[section][key] = self._convert(section, key, SCHEMA[section][entry],
                                                         raw.strip())
                except ConfigError as exc:  # noted; the key counts as absent
                    self.errors.append(exc)
        return values

    def _convert(self, section: str, key: str, kind: type, raw: str) -> Any:
        if kind is str:
            return raw
        if not raw:
            raise self._error(section, key, "needs a value")
        if kind is SecondsOrNone:
            if raw.lower() == "none":
                return None
            try:
                seconds = float(raw)
            except ValueError:
                seconds = 0.0
            if not seconds > 0:
                raise self._error(section, key,
                                  f"{raw!r} is not a positive number of seconds or none")
            return seconds
        if kind is bool:
            if raw.lower() not in _BOOLEANS:
                raise self._error(section, key, f"{raw!r} is not true or false")
            return _BOOLEANS[raw.lower()]
        try:
            return kind(raw)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise self._error(section, key, f"{raw!r} is not {what}") from None

    def get(self, section: str, key: str, default: Any = None) -> Any:
        """The value of ``[section] key``, of its :data:`SCHEMA` type, or ``default``."""
        if schema_key(section, key) is None:
            raise KeyError(f"[{section}] {key} is not declared in config_file.SCHEMA")
        return self.values.get(section, {}).get(key, default)

    def required(self, section: str, key: str) -> str:
        value = self.get(section, key, "")
        if not value:
            raise self._error(section, key, "is required")
        return str(value)

    def choice(self, section: str, key: str, choices: Tuple[str, ...], default: str) -> str:
        raw = str(self.get(section, key, "")).lower() or default
        if raw not in choices:
            raise self._error(section, key, f"{raw!r} is not one of {', '.join(choices)}")
        return raw

    def port(self, section: str, key: str) -> Optional[int]:
        port: Optional[int] = self.get(section, key)
        if port is not None and not 0 <= port <= 65535:
            raise self._error(section, key, f"{port} is not a port number")
        return port

    def positive(self, section: str, key: str, default: float) -> float:
        value: float = self.get(section, key, default)
        if not value > 0:
            raise self._error(section, key, f"{value!r} is not a positive number of seconds")
        return value

    def non_negative(self, section: str, key: str, default: float) -> float:
        value: float = self.get(section, key, default)
        if not value >= 0:
            raise self._error(section, key, f"{value!r} is not >= 0 seconds")
        return value
