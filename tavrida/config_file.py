"""Service config files: run servers from an INI file.

::

    [connection]
    url = amqp://guest:guest@127.0.0.1:5672//   ; TAVRIDA_URL overrides it
    prefetch_count = 100                         ; scalar ConnectionConfig parameters,
    heartbeat_interval = 30                      ; username, password
    publish_timeout = 30                         ; seconds, or none: wait for ever

    [server]
    queue = test_service
    exchange = test_exchange
    services = hello_world:HelloController       ; module:Class, one or more
    workers = 0

    [discovery]
    file = services.ds                           ; relative to this file
    remote.test_world = test_world_exchange      ; and/or entries inline
    remote_publisher.test_hello = test_notification_exchange
    local_publisher.test_hello = test_notification_exchange

    [logging]
    level = INFO

Every mistake raises :class:`ConfigError` naming the file, section and key.
The config file's folder is put on ``sys.path`` so its modules import.
"""

from __future__ import annotations

import configparser
import importlib
import logging
import os
import sys
from typing import Any, Dict, List, Optional

from tavrida import config as config_mod
from tavrida import discovery as discovery_mod
from tavrida import exceptions
from tavrida.service import ServiceController

#: Environment variable that overrides the broker URL of every config.
URL_ENV = "TAVRIDA_URL"

_INTS = ("port", "channel_max", "frame_max", "connection_attempts", "reconnect_attempts",
         "prefetch_count")
_FLOATS = ("heartbeat_interval", "retry_delay", "socket_timeout")
#: Floats that may also be ``none`` (no limit).
_OPTIONAL_FLOATS = ("publish_timeout",)
_BOOLS = ("ssl", "publisher_confirms", "persistent", "async_engine")
_STRS = ("host", "virtual_host", "username", "password", "scheme")
_DISCOVERY_KINDS = ("remote", "remote_publisher", "local_publisher")


class ConfigError(exceptions.TavridaError):
    """A config file is wrong; the message names the file, section and key."""

    message_template = "%(path)s: [%(section)s] %(key)s: %(reason)s"


class ServiceConfig:
    """A parsed service config file: connection, server and discovery settings."""

    def __init__(self, path: str, url: Optional[str] = None) -> None:
        self.path = path
        parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";",))
        try:
            with open(path, encoding="utf-8") as handle:
                parser.read_file(handle)
        except OSError as exc:
            raise ConfigError(path=path, section="-", key="-",
                              reason=f"cannot read: {exc.strerror}") from None
        except configparser.Error as exc:
            raise ConfigError(path=path, section="-", key="-",
                              reason=f"not valid INI: {exc}") from None
        self._parser = parser
        self.connection = self._connection(url)
        self.queue = self._required("server", "queue")
        self.exchange = self._required("server", "exchange")
        self.workers = self._int("server", "workers", 0)
        self.service_classes = self._services()
        self.log_level = self._log_level()

    def _error(self, section: str, key: str, reason: str) -> ConfigError:
        return ConfigError(path=self.path, section=section, key=key, reason=reason)

    def _required(self, section: str, key: str) -> str:
        value = self._parser.get(section, key, fallback="").strip()
        if not value:
            raise self._error(section, key, "is required")
        return value

    def _int(self, section: str, key: str, default: int) -> int:
        raw = self._parser.get(section, key, fallback="").strip()
        if not raw:
            return default
        try:
            return int(raw)
        except ValueError:
            raise self._error(section, key, f"{raw!r} is not a whole number") from None

    def _connection(self, url: Optional[str]) -> config_mod.ConnectionConfig:
        section = "connection"
        values: Dict[str, Any] = {}
        if self._parser.has_section(section):
            for key, raw in self._parser.items(section):
                if key == "url":
                    continue
                values[key] = self._typed(section, key, raw.strip())
        url = url or os.environ.get(URL_ENV) or self._parser.get(section, "url", fallback="")
        username = values.pop("username", None)
        password = values.pop("password", None)
        try:
            if url:
                return config_mod.ConnectionConfig.from_url(url.strip(), **values)
            if "host" not in values:
                raise self._error(section, "url", f"is required (or set {URL_ENV}, or host)")
            if username is not None:
                values["credentials"] = config_mod.Credentials(username, password or "")
            return config_mod.ConnectionConfig(**values)
        except exceptions.IncorrectAMQPConfig as exc:
            raise self._error(section, "url", exc.message) from None
        except TypeError as exc:
            raise self._error(section, "-", str(exc)) from None

    def _typed(self, section: str, key: str, raw: str) -> Any:
        try:
            if key in _INTS:
                return int(raw)
            if key in _FLOATS:
                return float(raw)
            if key in _OPTIONAL_FLOATS:
                if raw.lower() == "none":
                    return None
                if not float(raw) > 0:
                    raise ValueError(raw)
                return float(raw)
            if key in _BOOLS:
                return self._parser.BOOLEAN_STATES[raw.lower()]
        except (ValueError, KeyError):
            raise self._error(section, key, f"{raw!r} is not a valid value") from None
        if key in _STRS:
            return raw
        raise self._error(section, key, "unknown key")

    def _services(self) -> List[type]:
        names = self._required("server", "services").replace(",", " ").split()
        folder = os.path.dirname(os.path.abspath(self.path))
        if folder not in sys.path:
            sys.path.insert(0, folder)
        classes = []
        for name in names:
            module_name, _, class_name = name.partition(":")
            if not class_name:
                raise self._error("server", "services", f"{name!r} is not module:Class")
            try:
                cls = getattr(importlib.import_module(module_name), class_name)
            except (ImportError, AttributeError) as exc:
                raise self._error("server", "services", f"cannot import {name}: {exc}") from None
            if not (isinstance(cls, type) and issubclass(cls, ServiceController)
                    and cls.service_name()):
                raise self._error("server", "services",
                                  f"{name} is not a ServiceController declared with rpc_service")
            classes.append(cls)
        return classes

    def _log_level(self) -> int:
        raw = self._parser.get("logging", "level", fallback="INFO").strip().upper()
        level = logging.getLevelName(raw)
        if not isinstance(level, int):
            raise self._error("logging", "level", f"unknown level {raw!r}")
        return level

    def discovery_for(self, service_name: str,
                      subscriptions: List[str]) -> discovery_mod.AbstractDiscovery:
        """The discovery of one service: the ``.ds`` file, then the inline entries."""
        section = "discovery"
        ds_file = self._parser.get(section, "file", fallback="").strip()
        try:
            if ds_file:
                path = os.path.join(os.path.dirname(os.path.abspath(self.path)), ds_file)
                disc: discovery_mod.LocalDiscovery = discovery_mod.FileBasedDiscoveryService(
                    path, service_name, subscriptions)
            else:
                disc = discovery_mod.LocalDiscovery()
        except exceptions.TavridaError as exc:
            raise self._error(section, "file", exc.message) from None
        if self._parser.has_section(section):
            for key, value in self._parser.items(section):
                if key == "file":
                    continue
                kind, _, service = key.partition(".")
                if kind not in _DISCOVERY_KINDS or not service:
                    raise self._error(section, key, "expected remote.<service>, "
                                      "remote_publisher.<service> or local_publisher.<service>")
                getattr(disc, f"register_{'remote_service' if kind == 'remote' else kind}")(
                    service, value.strip())
        return disc

    def bind_discovery(self) -> None:
        """Give every configured service class its discovery."""
        for cls in self.service_classes:
            subscriptions = sorted({ep.service for ep in cls.get_dispatcher().get_publishers()})
            disc = self.discovery_for(cls.service_name(), subscriptions)
            for publisher in subscriptions:
                try:
                    disc.get_remote_publisher(publisher)
                except exceptions.TavridaError:
                    raise self._error("discovery", f"remote_publisher.{publisher}",
                                      f"is required: {cls.service_name()} subscribes to "
                                      f"{publisher}'s notifications") from None
            cls.set_discovery(disc)
