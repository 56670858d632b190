"""Discovery: which exchange serves which service.

Three maps of service name to exchange name:

* remote services: where requests, responses and errors for a service go;
* remote publishers: notification exchanges a service subscribes to;
* local publishers: the notification exchange a service publishes on.

:class:`LocalDiscovery` keeps them in memory, :class:`FileBasedDiscoveryService`
reads them from a ``.ds`` INI file, :class:`DiscoveryFactory` picks one.
"""

from __future__ import annotations

import abc
import configparser
from typing import Dict, Iterable, List, Optional

from tavrida import exceptions


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
    publisher (it must have ``notifications``).
    """

    def __init__(self, ds_filename: str, service_name: str,
                 subscriptions: Optional[Iterable[str]] = None) -> None:
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
        if service_name:
            if not parser.has_section(service_name):
                raise exceptions.UnknownService(service=f"{service_name} (not in {ds_filename})")
            notifications = parser.get(service_name, "notifications", fallback="")
            if notifications:
                self.register_local_publisher(service_name, notifications)
        for publisher in subscriptions or ():
            notifications = ""
            if parser.has_section(publisher):
                notifications = parser.get(publisher, "notifications", fallback="")
            if not notifications:
                raise exceptions.CantRegisterRemotePublisher(
                    service=service_name, publisher=publisher, ds_file=ds_filename)
            self.register_remote_publisher(publisher, notifications)

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
