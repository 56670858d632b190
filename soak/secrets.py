"""Secrets: a run with DEBUG logging on must not write a password, URL credential or token.

A throwaway broker user with a random password is made for the run
(RabbitMQ through ``rabbitmqctl``, Redis through ``ACL SETUSER``) and deleted
after it. With every logger at DEBUG, a service and a client then do what
makes libraries talk: connect, declare, call and cast with ``authorization``
headers, fail in a handler, dead-letter a bad message, lose their
connections (cut through a TCP proxy) and reconnect, and try a wrong
password. The captured log output (tavrida, kombu, py-amqp, redis-py, the
root logger and warnings) is then searched for the password, its URL-quoted
and base64 forms, the ``user:password`` pair and the header values.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import shutil
import subprocess
import threading
import time
import urllib.parse
from typing import Any, Dict, List, Optional

from soak.proxy import TcpProxy
from soak.scenarios import CLIENT, Names, Result, ScenarioError, cleanup, open_transport
from tavrida import client, config, dispatcher, exceptions, server, service

SERVICE = "secretive"


@dispatcher.rpc_service(SERVICE)
class Secretive(service.ServiceController):
    """``echo`` answers; ``fail`` raises (the server logs it, with the message)."""

    @dispatcher.rpc_method(service=SERVICE, method="echo")
    def echo(self, request: Any, proxy: Any, value: Any) -> Dict[str, Any]:
        return {"value": value}

    @dispatcher.rpc_method(service=SERVICE, method="fail")
    def fail(self, request: Any, proxy: Any, value: Any) -> None:
        raise RuntimeError(f"refusing {value!r}")


class _Capture:
    """Every log record of the process at DEBUG, formatted, plus warnings."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setLevel(logging.DEBUG)
        self.handler.setFormatter(logging.Formatter(
            "%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s"))
        self.root = logging.getLogger()
        self.saved: List[Any] = []

    def __enter__(self) -> "_Capture":
        # Other root handlers (a console) would print the whole DEBUG flood: set aside.
        self.saved = [self.root.level, list(self.root.handlers)]
        for handler in self.saved[1]:
            self.root.removeHandler(handler)
        self.root.setLevel(logging.DEBUG)
        self.root.addHandler(self.handler)
        logging.captureWarnings(True)
        # Loggers that set their own level would hide their records: open them all.
        self.levels = {}
        for name, logger in logging.Logger.manager.loggerDict.items():
            if isinstance(logger, logging.Logger) and logger.level not in (0, logging.DEBUG):
                self.levels[name] = logger.level
                logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        logging.captureWarnings(False)
        self.root.removeHandler(self.handler)
        self.root.setLevel(self.saved[0])
        for handler in self.saved[1]:
            self.root.addHandler(handler)
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)

    @property
    def text(self) -> str:
        return self.stream.getvalue()


def _rabbitmqctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True,
                          timeout=60)


class BrokerUser:
    """A user made for one run, with a random password; deleted by :meth:`delete`."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.kind = "redis" if url.startswith("redis") else "amqp"
        self.name = f"{prefix}-user"
        self.password = f"pw-{os.urandom(12).hex()}-S3cr3t"

    def create(self) -> Optional[str]:
        """Make the user; None when done, else why it could not be (the run is skipped)."""
        if self.kind == "amqp":
            if shutil.which("rabbitmqctl") is None:
                return "rabbitmqctl is not available"
            parts = urllib.parse.urlsplit(self.url)
            vhost = urllib.parse.unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
            for args in (("add_user", self.name, self.password),
                         ("set_permissions", "-p", vhost, self.name, ".*", ".*", ".*")):
                result = _rabbitmqctl(*args)
                if result.returncode != 0:
                    self.delete()
                    return f"rabbitmqctl {args[0]} failed: {result.stderr.strip()[:200]}"
            return None
        import redis

        admin = redis.Redis.from_url(self.url, socket_timeout=5)
        try:
            admin.acl_setuser(self.name, enabled=True, passwords=[f"+{self.password}"],
                              keys=["*"], channels=["*"], commands=["+@all"])
        except redis.RedisError as exc:
            return f"Redis ACL SETUSER failed: {exc}"
        finally:
            admin.close()
        return None

    def user_url(self, password: Optional[str] = None) -> str:
        parts = urllib.parse.urlsplit(self.url)
        secret = urllib.parse.quote(password or self.password, safe="")
        netloc = f"{urllib.parse.quote(self.name, safe='')}:{secret}@{parts.hostname}"
        if parts.port:
            netloc += f":{parts.port}"
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))

    def delete(self) -> None:
        if self.kind == "amqp":
            _rabbitmqctl("delete_user", self.name)
            return
        import redis

        admin = redis.Redis.from_url(self.url, socket_timeout=5)
        try:
            admin.acl_deluser(self.name)
        except redis.RedisError:
            pass
        finally:
            admin.close()


def forms(secret: str) -> List[str]:
    """How a secret may show up in text: as is, URL-quoted, base64."""
    found = [secret, urllib.parse.quote(secret, safe=""),
             base64.b64encode(secret.encode()).decode()]
    return list(dict.fromkeys(found))


def secrets(url: str, workdir: Optional[str] = None, command: str = "") -> Result:
    """One run at DEBUG with a fresh user and tokens; the log must hold none of them."""
    result = Result("secrets", url, command)
    names = Names(service=SERVICE)
    user = BrokerUser(url, names.prefix)
    why = user.create()
    if why is not None:
        result.figures["skipped"] = why
        result.problems.append(f"cannot make a broker user: {why}")
        return result.done()
    token = f"tok-{os.urandom(12).hex()}"
    basic = base64.b64encode(f"{user.name}:{user.password}".encode()).decode()
    headers = {"authorization": f"Bearer {token}", "Authorization": f"Basic {basic}",
               "x-api-key": token}
    capture = _Capture()
    proxy = TcpProxy.for_url(url).start()
    secret_url = proxy.url(user.user_url())
    calls: Dict[str, int] = {"answered": 0, "errors": 0}
    try:
        with capture:
            disc = names.discovery()
            Secretive.set_discovery(disc)
            srv = server.Server(config.ConnectionConfig.from_url(secret_url, retry_delay=0.2),
                                names.queue, names.exchange, [Secretive])
            srv.start()
            thread = threading.Thread(target=srv.run, daemon=True, name="secret-server")
            thread.start()
            cli = client.RPCClient(config.ConnectionConfig.from_url(secret_url, retry_delay=0.2),
                                   disc, source=CLIENT, headers=headers)
            try:
                for round_ in range(3):
                    for i in range(5):
                        cli.secretive.echo(value=i).cast()
                        try:
                            cli.secretive.echo(value=i).call(timeout=10)
                            calls["answered"] += 1
                        except exceptions.TavridaError:
                            calls["errors"] += 1
                    try:
                        cli.secretive.fail(value="no").call(timeout=10)
                    except exceptions.RemoteError:
                        calls["errors"] += 1
                    cli.secretive.fail(value="no").cast()         # dead-lettered, logged
                    cli.secretive.nothing(value="no").cast()      # no such handler
                    if round_ < 2:
                        proxy.cut()                               # reconnects, retries
                        time.sleep(0.3)
                logging.getLogger("soak.secrets").debug("config %r, transport %r",
                                                        cli.transport, srv.config)
            finally:
                cli.close()
                srv.stop()
                thread.join(15)
            # A wrong password: the failure is logged and raised.
            bad = open_transport(user.user_url(f"wrong-{user.password}"),
                                 connection_attempts=1, retry_delay=0.05)
            try:
                bad.queue_size(names.queue)
            except Exception as exc:  # noqa: BLE001 - logged like an application would
                logging.getLogger("soak.secrets").exception("wrong password refused: %s", exc)
            finally:
                bad.close()
        text = capture.text
        secrets_ = {"password": user.password, "token": token, "basic": basic,
                    "wrong password": f"wrong-{user.password}"}
        leaks = [f"{what} ({form[:6]}...)" for what, secret in secrets_.items()
                 for form in forms(secret) if form in text]
        pair = f"{user.name}:{user.password}"
        if pair in text or urllib.parse.quote(pair, safe=":") in text:
            leaks.append("user:password")
        f = result.figures
        f.update({"log_lines": text.count("\n"), "log_kb": round(len(text) / 1024, 1),
                  "loggers": len({line.split(" ")[3] for line in text.splitlines()
                                  if line.count(" ") > 4}),
                  "answers": calls["answered"], "errors": calls["errors"],
                  "reconnects": text.count("reconnected to"),
                  "masked_urls": text.count(":***@"), "leaks": len(leaks)})
        result.check(not leaks, f"secrets in the log: {', '.join(leaks)}")
        result.check(f["reconnects"] > 0, "no reconnect happened (the cuts did not bite)")
        result.check(calls["answered"] > 0, "no call was answered")
        result.check("DEBUG" in text, "nothing was logged at DEBUG")
    except ScenarioError as exc:
        result.problems.append(str(exc))
    finally:
        proxy.close()
        try:
            cleanup(url, names)
        finally:
            user.delete()
    return result.done()
