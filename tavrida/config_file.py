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
    max_attempts = 5                             ; runs of a message whose handler asks
    retry_backoff = 0.5                          ; for a retry (none: no limit), first
    retry_backoff_max = 30                       ; delay in seconds, doubling up to this
    queue_type = classic                         ; or quorum (RabbitMQ 3.8+): new names only
    stop_timeout = 30                            ; seconds a stop waits for the messages in hand
    reply_exchanges = any                        ; or known: answer only exchanges discovery knows

    [discovery]
    file = services.ds                           ; relative to this file
    remote.test_world = test_world_exchange      ; and/or entries inline
    remote_publisher.test_hello = test_notification_exchange
    local_publisher.test_hello = test_notification_exchange
    central = false                              ; true: services register in, and look up
    central_url = redis://127.0.0.1:6379/0       ; the broker's store (or this one's)

    [logging]
    level = INFO
    format = text                                ; or json: one JSON object per line
    access = false                               ; true: one INFO line per message
    amqp_debug = false                           ; true: the amqp library's DEBUG lines too

    [metrics]                                    ; needs pip install 'tavrida[metrics]'
    port = 9100                                  ; Prometheus /metrics (and /healthz)
    host = 0.0.0.0

    [tracing]                                    ; needs pip install 'tavrida[otel]'
    enabled = false                              ; OpenTelemetry spans, traceparent headers

    [health]
    file = /run/svc.alive                        ; touched while the consumer loop runs
    interval = 5                                 ; seconds between touches
    port = 9100                                  ; GET /healthz (may share the metrics port)

For a RabbitMQ cluster, ``url`` takes kombu's failover form
(``amqp://u:p@rabbit1//;amqp://rabbit2``, no spaces around ``;``, which
starts a comment), or ``urls`` lists one URL per indented line.

The sections and keys a file may hold are declared in :data:`SCHEMA`; any
other section or key is an error with a "did you mean" hint. The file is
checked whole: :class:`ConfigError` reports every mistake (in ``errors``),
each naming the file, section and key (or the command-line flag or
environment variable the bad value came from). The discovery is checked
against what the handlers call (:mod:`tavrida.service_graph`): a called
service with no exchange is a mistake, an entry no handler uses a warning
(:attr:`ServiceConfig.warnings`, logged by :meth:`ServiceConfig.bind_discovery`).
The config file's folder is put on ``sys.path`` so its modules import.

Why one module of over 400 lines: the :data:`SCHEMA` table and the reading
of what it declares (each section's conversions and checks, the errors
naming the culprit) are one concept; apart, a key's declaration and its
meaning would sit in two files and drift.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Type, TypeVar

from tavrida import class_path, defaults, exceptions, service_graph
from tavrida import config as config_mod
from tavrida import discovery as discovery_mod
from tavrida.answers import REPLY_EXCHANGES
from tavrida.config_schema import SCHEMA as SCHEMA
from tavrida.config_schema import CheckedFile
from tavrida.config_schema import ConfigError as ConfigError
from tavrida.config_schema import SecondsOrNone as SecondsOrNone
from tavrida.retries import RetryPolicy
from tavrida.service import ServiceController
from tavrida.transports.base import QUEUE_TYPES

if TYPE_CHECKING:
    from tavrida.observability.hooks import ServerHook

#: Environment variable that overrides the broker URL of every config.
URL_ENV = "TAVRIDA_URL"
#: The caller name of the ``tavrida`` command: ``remote.tavrida_cli`` routes its answers.
CLI_CALLER = "tavrida_cli"
LOG = logging.getLogger(__name__)
T = TypeVar("T")

_NOT_CONNECTION_PARAMETERS = ("url", "urls", "username", "password")
#: What a URL says; a URL from a flag or the environment overrides them.
_URL_PARTS = ("host", "port", "virtual_host", "scheme")
class ServiceConfig:
    """A parsed service config file: connection, server and discovery settings.

    ``url`` overrides the file's broker URL; ``url_flag`` is how errors in it
    name it (the ``tavrida`` command passes ``"--url"``).
    """

    def __init__(self, path: str, url: Optional[str] = None, *, url_flag: str = "url") -> None:
        self.path = path
        checked = self._file = CheckedFile(path)
        #: Every mistake found so far: all are reported at once, at the end.
        self._errors: List[ConfigError] = checked.errors
        #: Sections a misspelt section name stands for: their missing keys are not mistakes.
        self._misspelt: List[str] = checked.misspelt
        #: What is odd but may be right (an unused ``remote.<service>``), logged at start.
        self.warnings: List[str] = []
        #: section -> key -> value, converted to its :data:`SCHEMA` type.
        self.values: Dict[str, Dict[str, Any]] = checked.values
        fallback = config_mod.ConnectionConfig()
        self.connection = self._collect(lambda: self._connection(url, url_flag), fallback)
        self.queue = self._collect(lambda: self._file.required("server", "queue"), "")
        self.exchange = self._collect(lambda: self._file.required("server", "exchange"), "")
        self.workers = self.get("server", "workers", 0)
        self.retry_policy = self._collect(self._retry_policy, RetryPolicy())
        #: ``classic`` (tavrida 1.0's, the default) or ``quorum`` (see ``Server``).
        self.queue_type = self._collect(
            lambda: self._file.choice("server", "queue_type", QUEUE_TYPES, "classic"), "classic")
        #: Grace period of a stop, in seconds (see ``Server``).
        self.stop_timeout = self._collect(
            lambda: self._file.non_negative("server", "stop_timeout",
                                       defaults.STOP_TIMEOUT),
            defaults.STOP_TIMEOUT)
        #: ``any`` (the default) or ``known`` (see ``Server``'s ``reply_exchanges``).
        self.reply_exchanges = self._collect(
            lambda: self._file.choice("server", "reply_exchanges", REPLY_EXCHANGES, "any"), "any")
        #: Answers pipelined with the next messages (see ``Server.pipelined_answers``).
        self.pipelined_answers: bool = self.get("server", "pipelined_answers", True)
        self.service_classes = self._services()
        self.log_level = self._collect(self._log_level, logging.INFO)
        self.log_format = self._collect(
            lambda: self._file.choice("logging", "format", ("text", "json"), "text"), "text")
        self.log_access: bool = self.get("logging", "access", False)
        self.amqp_debug: bool = self.get("logging", "amqp_debug", False)
        self.metrics_port = self._collect(lambda: self._file.port("metrics", "port"), None)
        self.metrics_host: str = self.get("metrics", "host", "") or "0.0.0.0"
        self.tracing: bool = self.get("tracing", "enabled", False)
        health_file: str = self.get("health", "file", "")
        self.health_file = (os.path.join(os.path.dirname(os.path.abspath(self.path)),
                                         health_file) if health_file else None)
        self.health_interval = self._collect(
            lambda: self._file.positive("health", "interval", 5.0), 5.0)
        self.health_port = self._collect(lambda: self._file.port("health", "port"), None)
        self._discoveries = self._checked_discoveries()
        errors = [error for error in self._errors if not self._follows_misspelt(error)]
        if errors:
            raise ConfigError.several(errors)

    def _follows_misspelt(self, error: ConfigError) -> bool:
        """True for a key found missing from a section whose name is misspelt in the file."""
        reason = str(error.kwargs.get("reason", ""))
        return (error.kwargs.get("section") in self._misspelt
                and reason.startswith(("is required", "missing:")))

    def _collect(self, read: Callable[[], T], fallback: T) -> T:
        """What ``read`` returns; if it finds a mistake, note it and go on with ``fallback``."""
        try:
            return read()
        except ConfigError as exc:
            self._errors.extend(exc.errors)
            return fallback

    def _error(self, section: str, key: str, reason: str) -> ConfigError:
        return ConfigError(path=self.path, section=section, key=key, reason=reason)

    def get(self, section: str, key: str, default: Any = None) -> Any:
        """The value of ``[section] key``, of its :data:`SCHEMA` type, or ``default``."""
        return self._file.get(section, key, default)

    def _retry_policy(self) -> RetryPolicy:
        """``max_attempts``, ``retry_backoff``, ``retry_backoff_max`` of ``[server]``."""
        section = "server"
        raw = str(self.get(section, "max_attempts", "")).strip()
        max_attempts: Optional[int] = RetryPolicy.max_attempts
        if raw.lower() == "none":
            max_attempts = None
        elif raw:
            try:
                max_attempts = int(raw)
            except ValueError:
                max_attempts = 0
            if max_attempts < 1:
                raise self._error(section, "max_attempts",
                                  f"{raw!r} is not a whole number >= 1 (or none)")
        delays = []
        for key, default in (("retry_backoff", RetryPolicy.backoff),
                             ("retry_backoff_max", RetryPolicy.backoff_max)):
            value: float = self.get(section, key, default)
            if not value >= 0:
                raise self._error(section, key, f"{value!r} is not >= 0 seconds")
            delays.append(value)
        return RetryPolicy(max_attempts, delays[0], delays[1])

    def hooks(self) -> List[ServerHook]:
        """The server hooks (access log, metrics, tracing, health) this file asks for."""
        from tavrida.observability import build_hooks

        return build_hooks(access=self.log_access, metrics_port=self.metrics_port,
                           metrics_host=self.metrics_host, tracing=self.tracing,
                           health_file=self.health_file, health_interval=self.health_interval,
                           health_port=self.health_port)

    def configure_logging(self) -> None:
        """Set up logging as ``[logging]`` says (what ``tavrida run`` does)."""
        from tavrida.observability.logs import configure_logging

        configure_logging(self.log_level, self.log_format, self.amqp_debug)

    def _connection(self, url: Optional[str], url_flag: str) -> config_mod.ConnectionConfig:
        section = "connection"
        values = {key: value for key, value in self.values.get(section, {}).items()
                  if key not in _NOT_CONNECTION_PARAMETERS}
        username = self.get(section, "username")
        password = self.get(section, "password")
        if url:
            origin = url_flag
        elif os.environ.get(URL_ENV):
            url, origin = os.environ[URL_ENV], URL_ENV
        else:
            url, origin = self._file_url(), ""
            clash = [key for key in _URL_PARTS if url and key in values]
            if clash:
                raise self._error(section, clash[0], "the url gives it too: keep one of them")
        try:
            if url:
                conf = config_mod.ConnectionConfig.from_url(
                    url.strip(), **{k: v for k, v in values.items() if k not in _URL_PARTS})
                if username is not None and conf.credentials is None:
                    conf.credentials = config_mod.Credentials(username, password or "")
                elif username is not None and not origin:
                    raise self._error(section, "username", "the url gives a user too: keep one")
                return conf
            if "host" not in values:
                raise self._error(section, "url", f"is required (or set {URL_ENV}, or host)")
            if username is not None:
                values["credentials"] = config_mod.Credentials(username, password or "")
            return config_mod.ConnectionConfig(**values)
        except exceptions.IncorrectAMQPConfig as exc:
            if origin:
                raise ConfigError(f"{origin}: {exc.message}") from None
            key = ("urls" if self.get(section, "urls") else "url") if url else "-"
            raise self._error(section, key, exc.message) from None

    def _file_url(self) -> str:
        """``[connection] url``, or ``urls`` (one per line) in kombu's ``a;b`` form."""
        url = self.get("connection", "url", "")
        urls = self.get("connection", "urls", "")
        if url and urls:
            raise self._error("connection", "urls", "url gives the broker too: keep one of them")
        if self.get("connection", "urls") is not None and not urls:
            raise self._error("connection", "urls", "needs one URL or more")
        return ";".join(urls.split()) if urls else str(url)

    def _services(self) -> List[Type[ServiceController]]:
        """The classes ``[server] services`` names; each bad name is a mistake of its own."""
        names = self._collect(lambda: self._file.required("server", "services"), "")
        folder = os.path.dirname(os.path.abspath(self.path))
        if folder not in sys.path:
            sys.path.insert(0, folder)
        classes: List[Type[ServiceController]] = []
        for name in names.replace(",", " ").split():
            try:
                classes.append(class_path.load(name, folder))
            except class_path.ClassPathError as exc:
                self._errors.append(self._error("server", "services", str(exc)))
        return classes

    def _log_level(self) -> int:
        raw = str(self.get("logging", "level", "") or "INFO").upper()
        level = logging.getLevelName(raw)
        if not isinstance(level, int):
            raise self._error("logging", "level", f"unknown level {raw!r}")
        return level

    def discovery_for(self, service_name: str,
                      subscriptions: List[str]) -> discovery_mod.LocalDiscovery:
        """The discovery of one service: the ``.ds`` file, then the inline entries."""
        section = "discovery"
        ds_file = self.get(section, "file", "")
        try:
            if ds_file:
                path = os.path.join(os.path.dirname(os.path.abspath(self.path)), ds_file)
                disc: discovery_mod.LocalDiscovery = discovery_mod.FileBasedDiscoveryService(
                    path, service_name, subscriptions,
                    complete=not self.get(section, "central", False))
            else:
                disc = discovery_mod.LocalDiscovery()
        except exceptions.TavridaError as exc:
            raise self._error(section, "file", exc.message) from None
        if self.get(section, "central", False):
            disc = self._central(disc)
        for key, value in self.values.get(section, {}).items():
            kind, dot, service = key.partition(".")
            if not dot:
                continue  # file, central, central_url
            if not value:
                raise self._error(section, key, "needs an exchange name")
            register = "register_remote_service" if kind == "remote" else f"register_{kind}"
            getattr(disc, register)(service, value)
        return disc

    def _central(self, local: discovery_mod.LocalDiscovery) -> discovery_mod.CentralDiscovery:
        """Central discovery on ``central_url`` or the connection's broker; ``local`` overrides."""
        url = self.get("discovery", "central_url", "")
        try:
            store = config_mod.ConnectionConfig.from_url(url) if url else self.connection
        except exceptions.IncorrectAMQPConfig as exc:
            raise self._error("discovery", "central_url", exc.message) from None
        disc = discovery_mod.CentralDiscovery(store)
        for kind, entries in local.get_all_exchanges().items():
            register = "register_remote_service" if kind == "remote" else f"register_{kind}"
            for service, exchange in entries.items():
                getattr(disc, register)(service, exchange)
        return disc

    def _checked_discoveries(self) -> Dict[str, discovery_mod.LocalDiscovery]:
        """Each service's discovery, checked against what its handlers need."""
        discoveries: Dict[str, discovery_mod.LocalDiscovery] = {}
        shapes = [service_graph.shape(cls) for cls in self.service_classes]
        for cls, found in zip(self.service_classes, shapes):
            subscriptions = sorted({ep.service for ep in found.subscriptions})
            try:
                disc = self.discovery_for(found.name, subscriptions)
            except ConfigError as exc:  # the same for every service: noted once
                self._errors.append(exc)
                return discoveries
            central = isinstance(disc, discovery_mod.CentralDiscovery)
            for publisher in subscriptions if not central else ():  # looked up at start
                try:
                    disc.get_remote_publisher(publisher)
                except exceptions.TavridaError:
                    self._errors.append(self._error(
                        "discovery", f"remote_publisher.{publisher}",
                        f"is required: {found.name} subscribes to {publisher}'s notifications"))
            discoveries[cls.service_name()] = disc
        if shapes and len(discoveries) == len(shapes):
            self._check_remotes(shapes, discoveries)
        return discoveries

    def _check_remotes(self, shapes: List[service_graph.ServiceShape],
                       discoveries: Dict[str, discovery_mod.LocalDiscovery]) -> None:
        """Services called but not in discovery (mistakes), inline entries nobody calls."""
        section = "discovery"
        remotes = {name: disc.get_all_exchanges()["remote"]
                   for name, disc in discoveries.items()}
        inline = [key.partition(".")[2] for key in self.values.get(section, {})
                  if key.startswith("remote.") and key != f"remote.{CLI_CALLER}"]
        # A discovery that is not all in this file may know what the file lacks.
        elsewhere = bool(self.values.get(section, {}).get("central"))
        for problem in service_graph.remote_problems(shapes, remotes, inline, elsewhere):
            error = self._error(section, f"remote.{problem.service}", problem.reason)
            if problem.mistake:
                self._errors.append(error)
            else:
                self.warnings.append(str(error))

    def client_discovery(self) -> discovery_mod.LocalDiscovery:
        """The discovery of a client of this file's services (``tavrida call --config``).

        Each service the file runs is found on ``[server] exchange``; every
        other service on the file's ``remote.<service>`` entries (and its
        ``.ds`` file); a service's notification exchange (``local_publisher``
        or ``remote_publisher``) is where a client publishes as that service.
        """
        disc = discovery_mod.LocalDiscovery()
        for own in self._discoveries.values():
            exchanges = own.get_all_exchanges()
            for service, exchange in exchanges["remote"].items():
                disc.register_remote_service(service, exchange)
            for kind in ("remote_publisher", "local_publisher"):
                for service, exchange in exchanges[kind].items():
                    disc.register_local_publisher(service, exchange)
        for cls in self.service_classes:
            disc.register_remote_service(cls.service_name(), self.exchange)
        return disc

    def bind_discovery(self) -> None:
        """Give every configured service class its discovery; log the config's warnings."""
        for warning in self.warnings:
            LOG.warning("%s", warning)
        for cls in self.service_classes:
            cls.set_discovery(self._discoveries[cls.service_name()])
