"""Connection settings: where the broker is and how to talk to it.

:class:`ConnectionConfig` keeps every parameter of tavrida 1.0 and adds a
URL form, so the same service code runs on RabbitMQ (``amqp://``), Redis
(``redis://``) or the in-memory transport (``memory://``) by configuration
alone::

    conf = config.ConnectionConfig.from_url("memory://")
    conf = config.ConnectionConfig("localhost", config.Credentials("guest", "guest"))

A RabbitMQ cluster is several URLs, in kombu's failover form or as a list;
the first is where a client connects first, the others are
:attr:`ConnectionConfig.alternates`::

    conf = config.ConnectionConfig.from_url("amqp://u:p@rabbit1//;amqp://rabbit2;amqp://rabbit3")
    conf = config.ConnectionConfig.from_url(["amqp://u:p@rabbit1//", "amqp://rabbit2"])

Passwords never appear in ``repr()`` or in :attr:`ConnectionConfig.safe_url`.
"""

from __future__ import annotations

import urllib.parse
from typing import Any, Dict, List, Optional, Sequence, Union

from tavrida import defaults, exceptions


def check_choice(setting: str, value: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``; else a clear error naming ``setting``."""
    if value not in choices:
        raise exceptions.IncorrectAMQPConfig(
            reason=f"{setting} must be one of {', '.join(choices)}, not {value!r}")
    return value

#: Schemes served by tavrida's own in-memory transport.
MEMORY_SCHEMES = ("memory",)
#: Schemes served by the kombu transport (``kombu+memory`` is kombu's memory://).
KOMBU_SCHEMES = ("amqp", "amqps", "pyamqp", "redis", "rediss", "kombu+memory")
#: Default of :attr:`ConnectionConfig.publish_timeout`, in seconds.
DEFAULT_PUBLISH_TIMEOUT = defaults.PUBLISH_TIMEOUT
#: Default grace period of a server's stop (``Server(stop_timeout=...)``), in seconds.
DEFAULT_STOP_TIMEOUT = defaults.STOP_TIMEOUT
DEFAULT_PORTS = defaults.PORTS


class Credentials:
    """User name and password for the broker."""

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self.password = password

    def __repr__(self) -> str:
        return f"Credentials({self.username!r}, '***')"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Credentials)
                and (self.username, self.password) == (other.username, other.password))


class ConnectionConfig:
    """How to connect to the broker.

    The 1.0 parameters keep their names and defaults. ``async_engine`` is
    accepted and has no effect (tavrida 2 has one engine); ``locale`` and
    ``backpressure_detection`` are accepted for the same reason.

    tavrida 2 additions:

    * ``scheme``: ``amqp`` (default), ``amqps``, ``redis``, ``rediss``,
      ``memory`` (tavrida's in-memory transport) or ``kombu+memory``.
    * ``publisher_confirms``: wait for the broker to confirm each publish
      (RabbitMQ; default True).
    * ``persistent``: publish with ``delivery_mode=2`` (default True).
    * ``prefetch_count``: un-acked messages a server holds at once.
    * ``transport_options``: extra options passed to the transport.
    * ``alternates``: URLs of the other nodes of a cluster (same scheme and
      virtual host; a URL without a user takes this config's credentials).
      See :attr:`urls`.
    * ``publish_timeout``: seconds a publish (``cast()``, ``publish()``, a
      service's answers) may take, reconnecting included, before it gives up
      with :class:`~tavrida.exceptions.PublishConnectionFailed` (default
      :data:`DEFAULT_PUBLISH_TIMEOUT`; ``None`` waits for ever). A blocking
      ``call(timeout=T)`` is bounded by ``T`` instead.
    """

    def __init__(
        self,
        host: str = "localhost",
        credentials: Optional[Credentials] = None,
        port: Optional[int] = None,
        virtual_host: str = "/",
        channel_max: Optional[int] = None,
        frame_max: Optional[int] = None,
        heartbeat_interval: Optional[float] = None,
        ssl: Optional[bool] = None,
        ssl_options: Optional[Dict[str, Any]] = None,
        connection_attempts: int = defaults.CONNECTION_ATTEMPTS,
        retry_delay: float = defaults.RETRY_DELAY,
        socket_timeout: float = defaults.SOCKET_TIMEOUT,
        locale: Optional[str] = None,
        backpressure_detection: Optional[bool] = None,
        reconnect_attempts: int = -1,
        async_engine: bool = False,
        *,
        scheme: str = "amqp",
        publisher_confirms: bool = True,
        persistent: bool = True,
        prefetch_count: int = defaults.PREFETCH_COUNT,
        transport_options: Optional[Dict[str, Any]] = None,
        alternates: Sequence[str] = (),
        publish_timeout: Optional[float] = DEFAULT_PUBLISH_TIMEOUT,
    ) -> None:
        if scheme not in MEMORY_SCHEMES + KOMBU_SCHEMES:
            raise exceptions.IncorrectAMQPConfig(
                reason=f"unknown scheme {scheme!r}; expected one of "
                       f"{', '.join(MEMORY_SCHEMES + KOMBU_SCHEMES)}")
        if ssl and scheme in ("amqp", "pyamqp"):
            scheme = "amqps"
        if prefetch_count < 0:
            raise exceptions.IncorrectAMQPConfig(reason="prefetch_count must be >= 0")
        if publish_timeout is not None and not publish_timeout > 0:
            raise exceptions.IncorrectAMQPConfig(
                reason="publish_timeout must be a positive number of seconds, or None")
        self.scheme = scheme
        self.host = host
        self.credentials = credentials
        self.port = port if port is not None else DEFAULT_PORTS.get(scheme)
        self.virtual_host = virtual_host
        self.channel_max = channel_max
        self.frame_max = frame_max
        self.heartbeat_interval = heartbeat_interval
        self.ssl = ssl if ssl is not None else scheme in ("amqps", "rediss")
        self.ssl_options = ssl_options
        self.connection_attempts = connection_attempts
        self.retry_delay = retry_delay
        self.socket_timeout = socket_timeout
        self.locale = locale
        self.backpressure_detection = backpressure_detection
        self.reconnect_attempts = reconnect_attempts
        self.async_engine = async_engine
        self.publisher_confirms = publisher_confirms
        self.persistent = persistent
        self.prefetch_count = prefetch_count
        self.transport_options = dict(transport_options or {})
        #: The other nodes' URLs as given (may carry passwords: log :attr:`safe_urls`).
        self.alternates: List[str] = [_checked_alternate(self, u) for u in alternates]
        self.publish_timeout = publish_timeout

    @classmethod
    def from_url(cls, url: Union[str, Sequence[str]], **kwargs: Any) -> "ConnectionConfig":
        """Build a config from a URL such as ``amqp://guest:guest@host:5672//``.

        ``memory://`` (optionally ``memory://name``) selects the in-memory
        transport; every ``memory://`` config with the same name shares one
        in-process broker. Keyword arguments set the other parameters.

        Several URLs (the nodes of a cluster), as kombu's failover string
        ``amqp://a;amqp://b`` or as a list, give the first URL's config with
        the others as :attr:`alternates`.
        """
        urls = _split_urls(url)
        if len(urls) > 1:
            kwargs["alternates"] = [*urls[1:], *kwargs.get("alternates", ())]
        url = urls[0]
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        if not scheme:
            raise exceptions.IncorrectAMQPConfig(reason=f"{_mask(url)!r} is not a URL")
        if scheme in MEMORY_SCHEMES or scheme == "kombu+memory":
            # Alternates, if any, are refused by the constructor (_checked_alternate).
            kwargs.setdefault("virtual_host", parts.netloc + parts.path or "/")
            return cls(host="", scheme=scheme, **kwargs)
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if scheme.startswith("redis"):
            vhost = path or "0"
        else:
            vhost = urllib.parse.unquote(path) if path else "/"
        return cls(host=parts.hostname or "localhost", credentials=_credentials(parts),
                   port=_port(parts, url), virtual_host=kwargs.pop("virtual_host", vhost),
                   scheme=scheme, **kwargs)

    @property
    def is_memory(self) -> bool:
        """True when tavrida's in-memory transport serves this config."""
        return self.scheme in MEMORY_SCHEMES

    def _url(self, password: Optional[str], host: Optional[str] = None,
             port: Optional[int] = None, credentials: Optional[Credentials] = None) -> str:
        """This config's URL, or an alternate's (its host, port, credentials).

        ``password=None`` puts the real password in, quoted; else ``password``.
        """
        if self.scheme in MEMORY_SCHEMES or self.scheme == "kombu+memory":
            name = "" if self.virtual_host == "/" else self.virtual_host
            return f"{self.scheme}://{name}"
        credentials = credentials or self.credentials
        auth = ""
        if credentials is not None:
            if password is None:
                password = urllib.parse.quote(credentials.password, safe="")
            auth = urllib.parse.quote(credentials.username, safe="") + ":" + password + "@"
        if self.scheme.startswith("redis"):
            vhost = self.virtual_host if self.virtual_host not in ("", "/") else "0"
        else:
            vhost = urllib.parse.quote(self.virtual_host, safe="")
        return f"{self.scheme}://{auth}{host or self.host}:{port or self.port}/{vhost}"

    def _urls(self, password: Optional[str]) -> List[str]:
        urls = [self._url(password)]
        for alternate in self.alternates:
            parts = urllib.parse.urlsplit(alternate)
            urls.append(self._url(password, parts.hostname,
                                  parts.port or DEFAULT_PORTS.get(self.scheme),
                                  _credentials(parts)))
        return urls

    @property
    def urls(self) -> List[str]:
        """Every node's full URL, this one first, passwords included: never log them.

        Each alternate gets this config's virtual host, and its credentials
        unless it has its own, so each URL is complete on its own (kombu's
        failover takes a missing user as ``guest``, not as the first URL's).
        """
        return self._urls(None)

    @property
    def safe_urls(self) -> List[str]:
        """:attr:`urls` with every password masked, fit for logs."""
        return self._urls("***")

    @property
    def url(self) -> str:
        """The broker URL, password included: never log it.

        With :attr:`alternates`, kombu's failover form: :attr:`urls` joined
        by ``;`` (:meth:`from_url` reads it back).
        """
        return ";".join(self.urls)

    @property
    def safe_url(self) -> str:
        """:attr:`url` with every password masked, fit for logs."""
        return ";".join(self.safe_urls)

    def to_dict(self) -> Dict[str, Any]:
        """All parameters as a dict (the password masked)."""
        result = dict(vars(self))
        result["credentials"] = repr(self.credentials) if self.credentials else None
        result["alternates"] = self.safe_urls[1:]
        return result

    def __repr__(self) -> str:
        return f"ConnectionConfig({self.safe_url!r})"


def as_config(value: Union[ConnectionConfig, str]) -> ConnectionConfig:
    """Accept a :class:`ConnectionConfig` or a URL wherever a config is taken."""
    if isinstance(value, ConnectionConfig):
        return value
    if isinstance(value, str):
        return ConnectionConfig.from_url(value)
    raise exceptions.IncorrectAMQPConfig(
        reason=f"expected a ConnectionConfig or a URL, got {type(value).__name__}")


def _split_urls(url: Union[str, Sequence[str]]) -> List[str]:
    """One URL, kombu's ``a;b`` failover form or a list, as a list of URLs."""
    items = [url] if isinstance(url, str) else list(url)
    if not all(isinstance(item, str) for item in items):
        raise exceptions.IncorrectAMQPConfig(reason="broker URLs must be strings")
    urls = [part.strip() for item in items for part in item.split(";") if part.strip()]
    if not urls:
        raise exceptions.IncorrectAMQPConfig(reason="no broker URL given")
    return urls


def _port(parts: urllib.parse.SplitResult, url: str) -> Optional[int]:
    """The URL's port, or None; a clear error for one that is not a port number."""
    try:
        return parts.port
    except ValueError as exc:
        raise exceptions.IncorrectAMQPConfig(reason=f"bad port in {_mask(url)!r}") from exc


def _credentials(parts: urllib.parse.SplitResult) -> Optional[Credentials]:
    if parts.username is None:
        return None
    return Credentials(urllib.parse.unquote(parts.username),
                       urllib.parse.unquote(parts.password or ""))


def _checked_alternate(conf: ConnectionConfig, url: str) -> str:
    """``url`` if it can be another node of ``conf``'s cluster; else a clear error."""
    if not isinstance(url, str):
        raise exceptions.IncorrectAMQPConfig(reason="broker URLs must be strings")
    url = url.strip()
    parts = urllib.parse.urlsplit(url)
    if conf.scheme in MEMORY_SCHEMES or conf.scheme == "kombu+memory":
        raise exceptions.IncorrectAMQPConfig(
            reason=f"{conf.scheme}:// is one in-process broker: it takes no other URLs")
    schemes = {conf.scheme}
    if conf.scheme == "amqps":  # ssl=True made amqp:// amqps://: it does so for every URL
        schemes.update(("amqp", "pyamqp"))
    if parts.scheme.lower() not in schemes:
        raise exceptions.IncorrectAMQPConfig(
            reason=f"{_mask(url)!r}: every URL of a cluster must use {conf.scheme}://")
    if not parts.hostname:
        raise exceptions.IncorrectAMQPConfig(reason=f"{_mask(url)!r} names no host")
    _port(parts, url)
    if parts.path not in ("", "/"):
        path = parts.path[1:]
        vhost = path if conf.scheme.startswith("redis") else urllib.parse.unquote(path)
        if vhost != conf.virtual_host:
            raise exceptions.IncorrectAMQPConfig(
                reason=f"{_mask(url)!r}: every URL of a cluster must name the same "
                       f"virtual host ({conf.virtual_host!r})")
    return url


def _mask(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
