"""Discovery: which exchange serves which service.

Three maps of service name to exchange name:

* remote services: where requests, responses and errors for a service go;
* remote publishers: notification exchanges a service subscribes to;
* local publishers: the notification exchange a service publishes on.

:class:`LocalDiscovery` keeps them in memory, :class:`FileBasedDiscoveryService`
reads them from a ``.ds`` INI file, :class:`CentralDiscovery` keeps them in a
store on the broker the services use (see :mod:`tavrida.registry`),
:class:`DiscoveryFactory` picks one.
"""

from __future__ import annotations

import abc
import configparser
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Union

from tavrida import config as config_mod
from tavrida import exceptions

if TYPE_CHECKING:
    from tavrida.registry.directory import Directory, Resolved


class AbstractDiscovery(abc.ABC):
    """What a discovery must answer. Subclass it to plug in your own store."""

    @abc.abstractmethod
    def register_remote_service(self, service_name: str, exchange_name: str) -> None:
        """Register the exchange that takes requests, responses and errors for a service."""

    @abc.abstractmethod
    def register_remote_publisher(self, service_name: str, exchange_name: str) -> None:
        """Register the notification exchange of a service to subscribe to."""

    @abc.abstractmethod
    def register_local_publisher(self, service_name: str, exchange_name: str) -> None:
        """Register the notification exchange a local service publishes on."""

    @abc.abstractmethod
    def get_remote(self, service_name: str) -> str:
        """Exchange of a remote service; raises UnableToDiscover."""

    @abc.abstractmethod
    def get_remote_publisher(self, service_name: str) -> str:
        """Notification exchange of a remote publisher; raises UnableToDiscover."""

    @abc.abstractmethod
    def get_local_publisher(self, service_name: str) -> str:
        """Notification exchange of a local service; raises PublisherEndpointNotFound."""

    @abc.abstractmethod
    def get_all_exchanges(self) -> Dict[str, Dict[str, str]]:
        """``{"remote": {...}, "remote_publisher": {...}, "local_publisher": {...}}``."""

    def knows_exchange(self, exchange: str) -> bool:
        """True when ``exchange`` is one this discovery names (``reply_exchanges="known"``)."""
        return any(exchange in group.values() for group in self.get_all_exchanges().values())

    def announce(self, service_name: str, exchange_name: str, *, queue: Optional[str] = None,
                 role: str = "service") -> None:
        """A server (``role="service"``) or client (``"client"``, its reply exchange) starts.

        Only a discovery with a shared store (:class:`CentralDiscovery`)
        does something with it; the others ignore it.
        """

    def withdraw(self, service_name: str) -> None:
        """The server or client that announced ``service_name`` stops."""


class LocalDiscovery(AbstractDiscovery):
    """Discovery kept in memory, filled by ``register_*`` calls."""

    def __init__(self) -> None:
        self._remote: Dict[str, str] = {}
        self._remote_publisher: Dict[str, str] = {}
        self._local_publisher: Dict[str, str] = {}

    @staticmethod
    def _check(service_name: str, exchange_name: str) -> None:
        for what, value in (("service name", service_name), ("exchange name", exchange_name)):
            if not isinstance(value, str) or not value:
                raise exceptions.IncorrectAMQPConfig(
                    reason=f"discovery needs a non-empty {what}, got {value!r}")

    def register_remote_service(self, service_name: str, exchange_name: str) -> None:
        self._check(service_name, exchange_name)
        self._remote[service_name] = exchange_name

    def register_remote_publisher(self, service_name: str, exchange_name: str) -> None:
        self._check(service_name, exchange_name)
        self._remote_publisher[service_name] = exchange_name

    def register_local_publisher(self, service_name: str, exchange_name: str) -> None:
        self._check(service_name, exchange_name)
        self._local_publisher[service_name] = exchange_name

    def unregister_remote_service(self, service_name: str) -> None:
        self._remote.pop(service_name, None)

    def unregister_remote_publisher(self, service_name: str) -> None:
        self._remote_publisher.pop(service_name, None)

    def unregister_local_publisher(self, service_name: str) -> None:
        self._local_publisher.pop(service_name, None)

    def get_remote(self, service_name: str) -> str:
        try:
            return self._remote[service_name]
        except KeyError:
            raise exceptions.UnableToDiscover(service=service_name) from None

    def get_remote_publisher(self, service_name: str) -> str:
        try:
            return self._remote_publisher[service_name]
        except KeyError:
            raise exceptions.UnableToDiscover(service=service_name) from None

    def get_local_publisher(self, service_name: str) -> str:
        try:
            return self._local_publisher[service_name]
        except KeyError:
            raise exceptions.PublisherEndpointNotFound(service=service_name) from None

    def get_all_exchanges(self) -> Dict[str, Dict[str, str]]:
        return {"remote": dict(self._remote),
                "remote_publisher": dict(self._remote_publisher),
                "local_publisher": dict(self._local_publisher)}


class FileBasedDiscoveryService(LocalDiscovery):
    """Discovery read from a ``.ds`` INI file.

    Each section is a service: ``exchange`` is its RPC exchange,
    ``notifications`` its notification exchange (optional). Every service
    becomes a remote service; ``service_name``'s notifications become its
    local publisher; each name in ``subscriptions`` becomes a remote
    publisher (it must have ``notifications``). ``complete=False`` (beside
    central discovery, which knows the rest) lets the file lack
    ``service_name``'s section and subscriptions' ``notifications``.
    """

    def __init__(self, ds_filename: str, service_name: str,
                 subscriptions: Optional[Iterable[str]] = None, *,
                 complete: bool = True) -> None:
        super().__init__()
        if not ds_filename:
            raise exceptions.ConfigFileIsNotDefined()
        self.ds_filename = ds_filename
        self.service_name = service_name
        parser = configparser.ConfigParser(interpolation=None)
        try:
            with open(ds_filename, encoding="utf-8") as handle:
                parser.read_file(handle)
        except OSError as exc:
            raise exceptions.IncorrectAMQPConfig(
                reason=f"cannot read discovery file {ds_filename}: {exc.strerror}") from None
        except configparser.Error as exc:
            raise exceptions.IncorrectAMQPConfig(
                reason=f"discovery file {ds_filename} is not valid INI: {exc}") from None
        for section in parser.sections():
            exchange = parser.get(section, "exchange", fallback="")
            if not exchange:
                raise exceptions.IncorrectAMQPConfig(
                    reason=f"{ds_filename}: section [{section}] has no 'exchange'")
            self.register_remote_service(section, exchange)
        if service_name and (complete or parser.has_section(service_name)):
            if not parser.has_section(service_name):
                raise exceptions.UnknownService(service=f"{service_name} (not in {ds_filename})")
            notifications = parser.get(service_name, "notifications", fallback="")
            if notifications:
                self.register_local_publisher(service_name, notifications)
        for publisher in subscriptions or ():
            notifications = ""
            if parser.has_section(publisher):
                notifications = parser.get(publisher, "notifications", fallback="")
            if notifications:
                self.register_remote_publisher(publisher, notifications)
            elif complete:
                raise exceptions.CantRegisterRemotePublisher(
                    service=service_name, publisher=publisher, ds_file=ds_filename)

    @property
    def service_exchange(self) -> str:
        """The RPC exchange of ``service_name``."""
        return self.get_remote(self.service_name)


class DiscoveryFactory:
    """Makes the discovery a path asks for: a ``.ds`` file, or local when there is none."""

    def __init__(self, path: Optional[str] = None) -> None:
        self.path = path

    def get_discovery_service(self, service_name: Optional[str] = None,
                              subscriptions: Optional[List[str]] = None) -> AbstractDiscovery:
        if self.path:
            return self.get_file_ds(service_name or "", subscriptions)
        return self.get_local_ds()

    def get_file_ds(self, service_name: str,
                    subscriptions: Optional[List[str]]) -> FileBasedDiscoveryService:
        return FileBasedDiscoveryService(self.path or "", service_name, subscriptions)

    def get_local_ds(self) -> LocalDiscovery:
        return LocalDiscovery()


#: Seconds :meth:`CentralDiscovery.announce` waits for the store to take a registration
#: (it goes on in the background after that).
ANNOUNCE_TIMEOUT = 2.0


class CentralDiscovery(LocalDiscovery):
    """Discovery kept in a store on the deployment's broker, shared by every process.

    ``url_or_config`` names the broker that keeps the records (usually the
    services' own: RabbitMQ, Redis or ``memory://``). A server whose
    services use it registers each of them (exchange, notification exchange,
    queue) when it starts and heartbeats every ``refresh`` seconds; a record
    not heartbeated for ``ttl`` seconds stops being live but is kept as the
    last known answer. Lookups answer from a local cache the store keeps
    current by push. Entries registered here by hand (``register_*``, as on
    :class:`LocalDiscovery`) override the central ones. A first lookup waits
    up to ``sync_timeout`` seconds for the store's records. See
    ``docs/discovery.rst``.

    Every CentralDiscovery of a process naming the same store shares one
    connection, cache and record (the first one's ``refresh``, ``ttl`` and
    ``sync_timeout`` apply); :meth:`close` gives its share back.
    ``shared=False`` gives this one a connection, cache and owner id of its
    own, as in another process (tests use it).
    """

    def __init__(self, url_or_config: Union[config_mod.ConnectionConfig, str], *,
                 refresh: Optional[float] = None, ttl: Optional[float] = None,
                 sync_timeout: Optional[float] = None, name: Optional[str] = None,
                 shared: bool = True) -> None:
        super().__init__()
        from tavrida.registry import directory, registrar, store

        self.config = config_mod.as_config(url_or_config)
        self.name = name or store.DEFAULT_NAME
        self._settings = {"refresh": refresh or registrar.DEFAULT_REFRESH,
                          "ttl": ttl or registrar.DEFAULT_TTL,
                          "sync_timeout": (directory.DEFAULT_SYNC_TIMEOUT
                                           if sync_timeout is None else sync_timeout)}
        self._directory: Optional[Directory] = None
        self._shared = shared
        self._announced: Dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<CentralDiscovery {self.config.safe_url} ({self.name})>"

    @property
    def directory(self) -> "Directory":
        """The process's cache of the store (connected on first use)."""
        found = self._directory
        if found is None:
            from tavrida.registry import directory

            found = self._directory = directory.acquire(self.config, self.name, self._shared,
                                                        **self._settings)
        return found

    def _central(self, service_name: str) -> "Resolved":
        found = self.directory.lookup(service_name)
        if found is None:
            raise exceptions.UnableToDiscover(
                service=f"{service_name} (not in central discovery at "
                        f"{self.directory.store.name})")
        return found

    def get_remote(self, service_name: str) -> str:
        exchange = self._remote.get(service_name)
        if exchange is not None:
            return exchange
        return self._central(service_name)[0].exchange

    def get_remote_publisher(self, service_name: str) -> str:
        exchange = self._remote_publisher.get(service_name)
        if exchange is not None:
            return exchange
        notifications = self._central(service_name)[0].notifications
        if not notifications:
            raise exceptions.UnableToDiscover(
                service=f"{service_name}'s notifications (its central record names none)")
        return notifications

    def knows_exchange(self, exchange: str) -> bool:
        return super().knows_exchange(exchange) or self.directory.knows_exchange(exchange)

    def announce(self, service_name: str, exchange_name: str, *, queue: Optional[str] = None,
                 role: str = "service") -> None:
        from tavrida.registry.record import Entry

        self._check(service_name, exchange_name)
        notifications = self._local_publisher.get(service_name) if role == "service" else None
        # Calls (and subscribers) may follow at once: give the store a moment to take it.
        self.directory.register(service_name, Entry(exchange_name, notifications, queue, role),
                                timeout=ANNOUNCE_TIMEOUT)
        self._announced[service_name] = self._announced.get(service_name, 0) + 1

    def withdraw(self, service_name: str) -> None:
        count = self._announced.get(service_name, 0)
        if not count or self._directory is None:
            return
        if count > 1:
            self._announced[service_name] = count - 1
        else:
            del self._announced[service_name]
        self._directory.unregister(service_name)  # counted there too, per announce

    def wait_for(self, service_name: str, exchange_name: Optional[str] = None,
                 timeout: float = 5.0) -> bool:
        """Wait until the store names ``service_name`` (on ``exchange_name``, if given)."""
        directory = self.directory

        def seen() -> bool:
            found = directory._resolved.get(service_name)
            return found is not None and exchange_name in (None, found[0].exchange)

        return directory.wait(seen, timeout)

    def close(self) -> None:
        """Withdraw what this object announced and give back its share of the store."""
        if self._directory is None:
            return
        for service_name in list(self._announced):
            while service_name in self._announced:
                self.withdraw(service_name)
        from tavrida.registry import directory

        directory.release(self._directory)
        self._directory = None
