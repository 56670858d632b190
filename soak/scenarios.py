"""The reliability scenarios, shared by ``python -m soak`` and tests/integration/reliability.

Each scenario returns a :class:`Result`: the counts of messages in and out,
redeliveries, duplicates, dead letters and peak memory, the problems found
(empty when nothing was lost) and a one-line summary. The service always
runs in a subprocess (:mod:`soak.service`) so that SIGTERM and memory are
real; connections are cut through :class:`soak.proxy.TcpProxy` on loopback.
Every broker object is named ``<prefix>.*`` and deleted at the end.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set

from soak.proxy import TcpProxy
from soak.service import CLIENT, SERVICE, unpack
from tavrida import client, config, discovery, exceptions, messages, wire
from tavrida.retries import RetryPolicy
from tavrida.transports.base import DEAD_LETTER_REASON_HEADER, Binding, DelayQueue, Topology
from tavrida.transports.kombu import KombuTransport

REPO = Path(__file__).resolve().parent.parent
LOG = logging.getLogger("soak")
#: First pause before a cast is sent again (doubling each time: 1, 2, 4 s).
RESEND_PAUSE = 1.0


class ScenarioError(Exception):
    """A scenario could not run to the end (a service died, a wait ran out)."""


def broker_kind(url: str) -> str:
    return "redis" if url.startswith("redis") else "amqp"


# --- results ------------------------------------------------------------------------------------

class Result:
    """Figures of one scenario run and its verdict."""

    def __init__(self, scenario: str, url: str, command: str = "") -> None:
        self.scenario = scenario
        self.broker = broker_kind(url)
        self.command = command
        self.figures: Dict[str, Any] = {}
        self.problems: List[str] = []
        self.started = time.monotonic()
        self.elapsed = 0.0

    def check(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)

    @property
    def passed(self) -> bool:
        return not self.problems

    def done(self) -> "Result":
        self.elapsed = time.monotonic() - self.started
        self.figures["seconds"] = round(self.elapsed, 1)
        return self

    def line(self) -> str:
        """``scenario[broker]: key=value ... -> PASS`` (or FAIL with the problems)."""
        parts = " ".join(f"{key}={value}" for key, value in self.figures.items())
        verdict = "PASS" if self.passed else "FAIL: " + "; ".join(self.problems)
        return f"{self.scenario}[{self.broker}]: {parts} -> {verdict}"

    def to_dict(self) -> Dict[str, Any]:
        return {"scenario": self.scenario, "broker": self.broker, "figures": self.figures,
                "passed": self.passed, "problems": self.problems}

    def __str__(self) -> str:
        return self.line()


# --- names and broker helpers -------------------------------------------------------------------

class Names:
    """Exchange and queue names of one run, all under one unique prefix."""

    def __init__(self, prefix: str = "", service: str = SERVICE) -> None:
        self.prefix = prefix or f"tvt-soak-{uuid.uuid4().hex[:10]}"
        self.service = service
        self.exchange = f"{self.prefix}.{service}"
        self.client_exchange = f"{self.prefix}.client"
        self.queue = f"{self.prefix}.queue"
        self.dead = f"{self.queue}.dead"
        #: Delay queues of the run's servers (default retry settings; a scenario adds its own).
        self.delays = [DelayQueue(self.queue, ms).name for ms in RetryPolicy().delays_ms()]

    def topology(self) -> Topology:
        """What the service declares (the client declares it too, before loading a backlog)."""
        return Topology.build([self.exchange, self.client_exchange], [self.queue, self.dead],
                              [Binding(self.queue, self.exchange, f"{self.service}.#")])

    def discovery(self) -> discovery.LocalDiscovery:
        disc = discovery.LocalDiscovery()
        disc.register_remote_service(self.service, self.exchange)
        disc.register_remote_service(CLIENT, self.client_exchange)
        return disc


def open_transport(url: str, **options: Any) -> KombuTransport:
    options.setdefault("retry_delay", 0.2)
    return KombuTransport(config.ConnectionConfig.from_url(url, **options))


def queue_sizes(url: str, names: Names) -> Dict[str, Optional[int]]:
    transport = open_transport(url)
    try:
        return {"queue": transport.queue_size(names.queue),
                "dead": transport.queue_size(names.dead)}
    finally:
        transport.close()


class DeadLetter:
    """One dead letter of a run: its request, why, and which call (``seq``) it was."""

    __slots__ = ("request_id", "reason", "seq", "call")

    def __init__(self, headers: Dict[str, Any], body: Any) -> None:
        self.request_id = headers.get("request_id")
        self.reason = str(headers.get(DEAD_LETTER_REASON_HEADER, ""))
        #: The call's ``seq`` (None: not a readable call).
        self.seq: Optional[int] = None
        #: True for a call (a request with a reply queue), False for a cast.
        self.call = bool(headers.get("reply_to"))
        try:
            seq = wire.decode(body, headers).payload.get("seq")
        except exceptions.TavridaError:
            return
        self.seq = seq if isinstance(seq, int) else None

    def unroutable_answer(self) -> bool:
        """True when its answer found no reply queue (Unroutable, see answering.py)."""
        return (self.reason.startswith(ANSWER_NOT_SENT)
                and UNROUTABLE_SAYS in self.reason)


#: How answering.py names a dead letter whose answer could not be sent, and how an
#: Unroutable one goes on (exceptions.Unroutable's message).
ANSWER_NOT_SENT = "answer not sent: "
UNROUTABLE_SAYS = "No queue takes messages to exchange"


def dead_letters(url: str, names: Names, count: int, timeout: float = 10.0) -> List[DeadLetter]:
    """The first ``count`` dead letters (left in the queue).

    A dead letter is published at least once, like any message: a cut
    between its publish and its confirm leaves two copies of one request.
    """
    transport = open_transport(url)
    seen: List[DeadLetter] = []
    try:
        transport.consume(names.dead, lambda delivery: seen.append(
            DeadLetter(dict(delivery.headers or {}), delivery.body)), max(count, 1))
        deadline = time.monotonic() + timeout
        while len(seen) < count and time.monotonic() < deadline:
            transport.drain(0.2)
    finally:
        transport.close()  # un-acked: they go back to the queue, which cleanup deletes
    return seen


def check_dead_letters(result: Any, url: str, names: Names, dead: Optional[int],
                       stream: "Stream") -> None:
    """No more dead-lettered requests than failed calls, but for copies of answered calls.

    An answer whose reply queue went with a fault is Unroutable: the service
    dead-letters its request, and that call ended in a clear error. Counted
    by request, since one request may be dead-lettered twice.

    A call may also have been handled twice (at least once: the broker
    redelivers a request whose ack a cut took, the client publishes again a
    request whose confirm a cut took). When a cut of the client takes its
    reply queue, one copy's answer finds no queue (Unroutable: its copy is
    dead-lettered, as promised) while another copy, handled after the client
    took its new reply queue, answers the caller. Such a dead letter is that
    of a duplicate whose call got its own answer: nothing is lost or wrong,
    so it is no failed call's. Only this case is excused: a dead letter of
    an answered call for any other reason, of a cast, or one that cannot be
    read counts against the failed calls. Why each was dead-lettered is the
    ``dead_reasons`` figure (a failure then says why).
    """
    dead = dead or 0
    if dead:
        judge_dead_letters(result, dead, dead_letters(url, names, dead), stream.answered_seqs,
                           stream.call_errors)


def judge_dead_letters(result: Any, dead: int, letters: List[DeadLetter],
                       answered_seqs: Set[int], call_errors: int) -> None:
    """The verdict of :func:`check_dead_letters` on the ``letters`` read of ``dead``."""
    reasons: Dict[Any, str] = {}
    excused: Set[Any] = set()
    blamed: Set[Any] = set()  # a request with any other dead letter is never excused
    for letter in letters:
        reasons.setdefault(letter.request_id, letter.reason)
        if (letter.call and letter.seq is not None and letter.unroutable_answer()
                and letter.seq in answered_seqs):
            excused.add(letter.request_id)
        else:
            blamed.add(letter.request_id)
            reasons[letter.request_id] = letter.reason
    excused -= blamed
    # One that could not be read counts as a request of its own.
    reasons.update({f"unread {index}": "unread" for index in range(dead - len(letters))})
    unexplained = len(reasons) - len(excused)
    result.figures["dead_letter_requests"] = len(reasons)
    result.figures["dead_of_answered_calls"] = len(excused)
    result.figures["dead_reasons"] = dict(collections.Counter(
        "answered by another copy: " + reason if request in excused else reason
        for request, reason in reasons.items()))
    result.check(unexplained <= call_errors,
                 f"{dead} dead letters of {len(reasons)} requests ({len(excused)} of calls "
                 f"answered by another copy), more than the {call_errors} failed calls")


def cleanup(url: str, names: Names) -> None:
    """Delete every object of the run (missing ones are fine)."""
    transport = open_transport(url)
    try:
        transport.delete(exchanges=[names.exchange, names.client_exchange],
                         queues=[names.queue, names.dead, *names.delays])
    finally:
        transport.close()
    if broker_kind(url) == "redis":
        import redis

        client_ = redis.Redis.from_url(url, socket_timeout=3)
        try:
            keys = list(client_.scan_iter(match=f"*{names.prefix}*", count=1000))
            if keys:
                client_.delete(*keys)
            # kombu's un-acked records live in one hash for everybody: drop ours only,
            # or another consumer would restore them into a queue that is gone.
            mine = [tag for tag, record in client_.hscan_iter("unacked")
                    if names.prefix.encode() in record]
            if mine:
                client_.hdel("unacked", *mine)
                client_.zrem("unacked_index", *mine)
        finally:
            client_.close()


def wait_until(condition: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise ScenarioError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# --- the service process ------------------------------------------------------------------------

class ServiceProcess:
    """``python -m soak.service`` with its status file, log file and exit code."""

    def __init__(self, url: str, names: Names, workdir: str, tag: str = "service",
                 **options: Any) -> None:
        self.url = url
        self.names = names
        self.status_path = os.path.join(workdir, f"{tag}.status.json")
        self.log_path = os.path.join(workdir, f"{tag}.log")
        self.stderr_path = os.path.join(workdir, f"{tag}.stderr")
        self._stderr: Any = None
        self.options = options
        self.proc: Optional[subprocess.Popen] = None
        self.final: Dict[str, Any] = {}
        self.peak_rss_kb = 0

    def start(self, timeout: float = 30.0) -> "ServiceProcess":
        args = [sys.executable, "-m", "soak.service", "--url", self.url,
                "--queue", self.names.queue, "--exchange", self.names.exchange,
                "--client-exchange", self.names.client_exchange,
                "--status", self.status_path, "--log", self.log_path]
        for key, value in self.options.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                args.append(flag)
            elif value not in (None, False):
                args += [flag, str(value)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        if os.path.exists(self.status_path):
            os.unlink(self.status_path)
        # A file, not a pipe: nobody reads it while the service runs, so it must never fill.
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(args, cwd=str(REPO), env=env,
                                     stdout=subprocess.DEVNULL, stderr=self._stderr)
        self.wait(lambda s: s.get("state") in ("running", "failed"), timeout, "the service")
        if self.status().get("state") == "failed":
            raise ScenarioError(f"the service failed to start: {self.status().get('error')}")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def status(self) -> Dict[str, Any]:
        for _ in range(20):
            try:
                with open(self.status_path) as status:
                    data = json.load(status)
                self.peak_rss_kb = max(self.peak_rss_kb, data.get("hwm_kb", 0))
                return data
            except FileNotFoundError:
                return {}
            except ValueError:
                time.sleep(0.01)  # replaced while read: read again
        return {}

    def wait(self, predicate: Callable[[Dict[str, Any]], bool], timeout: float,
             what: str) -> Dict[str, Any]:
        """Poll the status until ``predicate(status)``; raise if the process ends first."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if status and predicate(status):
                return status
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise ScenarioError(f"the service exited ({self.proc.returncode}) while waiting "
                                    f"for {what}: {self.stderr_tail()}")
            if time.monotonic() >= deadline:
                raise ScenarioError(f"timed out after {timeout:.0f}s waiting for {what}; "
                                    f"last status {short_status(status)}")
            time.sleep(0.05)

    def terminate(self, timeout: float = 60.0, signum: int = signal.SIGTERM) -> Dict[str, Any]:
        """Send SIGTERM, wait for a graceful exit and return the final status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ScenarioError(f"the service did not stop within {timeout:.0f}s of "
                                f"signal {signum}") from None
        self.final = self.status()
        self.final["exit_code"] = self.proc.returncode
        return self.final

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stderr_tail(self) -> str:
        try:
            with open(self.stderr_path, encoding="utf-8", errors="replace") as err:
                return err.read()[-2000:]
        except OSError:
            return ""

    def log_text(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as log:
                return log.read()
        except OSError:
            return ""

    def log_count(self, text: str) -> int:
        return self.log_text().count(text)

    def __enter__(self) -> "ServiceProcess":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.kill()
        if self._stderr is not None:
            self._stderr.close()


def short_status(status: Dict[str, Any]) -> str:
    keys = ("state", "deliveries", "redelivered", "settled", "cast_distinct", "call_distinct")
    return ", ".join(f"{key}={status.get(key)}" for key in keys)


def counts(final: Dict[str, Any], key: str) -> bytes:
    return unpack(final[key]) if final.get(key) else b""


# --- the client side ----------------------------------------------------------------------------

class ReplyLog(logging.Handler):
    """Counts answers the client dropped because nobody waited for them (late or repeated)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "nobody waits" in record.getMessage():
            self.dropped += 1

    def __enter__(self) -> "ReplyLog":
        logging.getLogger("tavrida.replies").addHandler(self)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        logging.getLogger("tavrida.replies").removeHandler(self)


def cast_message(seq: int) -> messages.Request:
    """The cast ``soak.work(seq=seq)`` from the client, as ``.cast()`` would send it."""
    return messages.Request({"source": CLIENT, "destination": f"{SERVICE}.work",
                             "reply_to": ""}, {}, {"seq": seq})


class ClientLog:
    """Copies the client side's tavrida logs (INFO and up) to a file of the run."""

    def __init__(self, path: str) -> None:
        self.handler = logging.FileHandler(path)
        self.handler.setLevel(logging.INFO)
        self.handler.setFormatter(logging.Formatter(
            "%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s"))
        self.logger = logging.getLogger("tavrida")
        self.level = self.logger.level

    def __enter__(self) -> "ClientLog":
        self.logger.addHandler(self.handler)
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)
        self.handler.close()


class Stream:
    """The client side of a fault scenario: casts ``work(seq)`` and calls ``ask(seq)``.

    One thread casts ``0 .. casts - 1``, ``callers`` threads call
    ``0 .. calls - 1``, all through one client. :attr:`progress` counts
    messages sent or failed (a fault injector waits for it with
    :meth:`wait_for`); :meth:`judge` compares what the service counted
    with what was sent.
    """

    def __init__(self, cli: client.RPCClient, casts: int, calls: int, callers: int,
                 call_timeout: float, resend: int = 0) -> None:
        self.cli = cli
        #: Times a cast that failed with a clear error is sent again (as its sender may).
        self.resend = resend
        #: Casts that failed with a clear error every time they were sent.
        self.failed_casts: List[int] = []
        self.casts = casts
        self.calls = calls
        self.callers = callers
        self.call_timeout = call_timeout
        self.lock = threading.Lock()
        self.progress = 0
        self.sent_casts = 0
        self.answered = 0
        #: The calls that got their own answer.
        self.answered_seqs: Set[int] = set()
        self.wrong = 0
        self.errors: Dict[str, int] = collections.Counter()
        self._sending = threading.Event()
        self._sending.set()  # until run() ends: a fault injector may start first
        self._seqs = iter(range(calls))

    @property
    def call_errors(self) -> int:
        """Calls that ended in an error (cast errors are keyed ``cast ...``)."""
        return sum(v for k, v in self.errors.items() if not k.startswith("cast "))

    def wait_for(self, progress: float) -> bool:
        """Until :attr:`progress` reaches ``progress``; False when sending ended first."""
        while self.progress < progress and self._sending.is_set():
            time.sleep(0.002)
        return self._sending.is_set()

    def _cast_all(self) -> None:
        for seq in range(self.casts):
            for attempt in range(self.resend + 1):
                try:
                    self.cli.soak.work(seq=seq).cast()
                    self.sent_casts += 1
                    break
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    with self.lock:
                        self.errors[f"cast {type(exc).__name__}"] += 1
                    clear = isinstance(exc, (exceptions.PublishFailed,
                                             exceptions.ConnectionFailed))
                    if not clear or attempt == self.resend:
                        self.failed_casts.append(seq)
                        break
                    # As a sane sender does: a broker that refused it (a quorum queue
                    # electing its leader nacks) is given a moment before the next try.
                    time.sleep(RESEND_PAUSE * 2 ** attempt)
            with self.lock:
                self.progress += 1

    def _call_some(self) -> None:
        while True:
            with self.lock:
                seq = next(self._seqs, None)
            if seq is None:
                return
            try:
                answer = self.cli.soak.ask(seq=seq).call(timeout=self.call_timeout)
                with self.lock:
                    if answer == {"seq": seq}:
                        self.answered += 1
                        self.answered_seqs.add(seq)
                    else:
                        self.wrong += 1
            except (exceptions.CallTimeout, exceptions.PublishFailed,
                    exceptions.ConnectionFailed, exceptions.RemoteError) as exc:
                with self.lock:
                    self.errors[type(exc).__name__] += 1
            except Exception as exc:  # noqa: BLE001 - not a "clear" error
                # In the run's client log (tavrida's logger): a failure then says what it was.
                logging.getLogger("tavrida.soak").exception("call %d raised", seq)
                with self.lock:
                    self.errors[f"unexpected {type(exc).__name__}"] += 1
            with self.lock:
                self.progress += 1

    def run(self) -> None:
        """Send everything; raises ScenarioError when the threads do not finish."""
        threads = [threading.Thread(target=self._cast_all, name="caster")]
        threads += [threading.Thread(target=self._call_some, name=f"caller-{i}")
                    for i in range(self.callers)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + max(300.0, (self.casts + self.calls) / 100)
        try:
            for thread in threads:
                thread.join(max(deadline - time.monotonic(), 0))
        finally:
            self._sending.clear()
        if any(thread.is_alive() for thread in threads):
            raise ScenarioError("the client did not finish sending in time")

    def run_faulted(self, fault: Callable[[], None], fault_wait: float,
                    service: "ServiceProcess", result: Result,
                    drain_timeout: float) -> "tuple[float, Any]":
        """:meth:`run` while ``fault`` runs in a thread; then the handling and one more call.

        Waits ``fault_wait`` seconds at most for ``fault`` to end once sending
        did, then until ``service`` handled every cast sent (a problem of
        ``result`` if not). Returns the seconds since ``result`` started and
        the answer of a call made after the faults (or its error text).
        """
        thread = threading.Thread(target=fault, name="fault")
        thread.start()
        try:
            self.run()
        finally:
            thread.join(fault_wait)
        send_seconds = time.monotonic() - result.started
        try:
            service.wait(lambda s: s["cast_distinct"] >= self.sent_casts, drain_timeout,
                         f"{self.sent_casts} distinct casts to be handled")
        except ScenarioError as exc:
            result.problems.append(str(exc))  # the figures say what is missing
        # After the faults the client must still work: one more call, with a deadline
        # no machine load reaches (its seq is out of the tallied range).
        try:
            after: Any = self.cli.soak.ask(seq=self.calls).call(timeout=drain_timeout)
        except exceptions.TavridaError as exc:
            after = f"{type(exc).__name__}: {exc}"
        return send_seconds, after

    def judge(self, result: Result, final: Dict[str, Any], sizes: Dict[str, Optional[int]],
              after: Any, when: str, cast_errors_ok: bool = False) -> int:
        """Figures and checks of the stream against the service's final counts.

        ``after`` is the answer of one more call made after the faults (seq
        ``calls``), or the error text; ``when`` names the faults ("the cuts").
        With ``cast_errors_ok`` a cast whose sender got a clear error is no
        loss (``lost`` counts the casts sent without an error and never
        handled). Returns the duplicates the handler saw.
        """
        casts, calls = self.casts, self.calls
        cast_counts = counts(final, "casts")
        call_counts = counts(final, "calls")
        refused = set(self.failed_casts) if cast_errors_ok else set()
        missing = [seq for seq in range(casts) if not cast_counts[seq] and seq not in refused]
        lost = len(missing)
        dupes = (sum(c - 1 for c in cast_counts if c > 1)
                 + sum(c - 1 for c in call_counts if c > 1))
        call_errors = self.call_errors
        f = result.figures
        f.update({
            "casts_in": casts, "casts_out": sum(1 for c in cast_counts if c),
            "lost": lost, "calls_in": calls, "answers": self.answered,
            "call_errors": call_errors, "wrong_answers": self.wrong,
            f"call_after_{when.split()[-1]}": "answered" if after == {"seq": calls} else "failed",
            "deliveries": final.get("deliveries"), "redelivered": final.get("redelivered"),
            "handler_duplicates": dupes,
            "skipped_duplicates": final.get("skipped_duplicates", 0),
            "dead_letters": sizes["dead"], "left_in_queue": sizes["queue"],
        })
        if self.errors:
            f["errors"] = dict(self.errors)
        if missing:
            f["missing"] = missing[:10]
        result.check(final.get("exit_code") == 0, f"service exit code {final.get('exit_code')}")
        result.check(lost == 0, f"{lost} casts never handled")
        if cast_errors_ok:
            f["casts_refused"] = len(self.failed_casts)
            result.check(not [k for k in self.errors if k.startswith("cast ")
                              and k not in ("cast Unroutable", "cast PublishFailed",
                                            "cast PublishConnectionFailed")],
                         f"unclear cast errors: {dict(self.errors)}")
        else:
            result.check(self.sent_casts == casts,
                         f"{casts - self.sent_casts} casts failed to publish")
        result.check(self.answered + call_errors == calls,
                     f"{calls - self.answered - call_errors} calls got no answer and no error")
        result.check(self.wrong == 0, f"{self.wrong} calls got another call's answer")
        result.check(not [k for k in self.errors if k.startswith("unexpected")],
                     f"unclear errors: {dict(self.errors)}")
        # A call that timed out told its caller so (a fault can take the answers in flight,
        # and on a loaded machine an answer can come after its deadline): that is an error
        # the caller sees, not a loss, so how many there were is a figure, not a verdict.
        # What would be wrong is a client that no longer works after the faults.
        result.check(after == {"seq": calls}, f"the call made after {when} got {after!r}")
        return dupes


def load_backlog(url: str, names: Names, count: int, batch: int = 1000) -> float:
    """Publish ``count`` casts ``work(seq)`` straight onto the queue's exchange; seconds taken."""
    disc = names.discovery()
    started = time.monotonic()
    with client.RPCClient(url, disc, source=CLIENT) as cli:
        cli.transport.declare(names.topology())
        sender = cli.sender
        for first in range(0, count, batch):
            sender.send_many([cast_message(seq) for seq in range(first, min(first + batch, count))])
    return time.monotonic() - started


# --- scenarios ----------------------------------------------------------------------------------

def faults(url: str, casts: int = 20_000, calls: int = 2_000, cuts: int = 5,
           idempotent: bool = False, seed: Optional[int] = None, callers: int = 8,
           call_timeout: float = 10.0, drain_timeout: float = 60.0,
           workdir: Optional[str] = None, command: str = "") -> Result:
    """A stream of casts and calls while the client's and the service's connections are cut.

    Each cut resets every connection of both sides (through their own TCP
    proxies) at a random point of the stream. Checks: every cast handled at
    least once (exactly once with ``idempotent``), every call answered with
    its own answer or failed with a clear error; nothing dead-lettered but the
    requests of failed calls whose answer found its reply queue gone.
    """
    name = "dedup" if idempotent else "faults"
    result = Result(name, url, command)
    seed = random.randrange(1_000_000) if seed is None else seed
    rng = random.Random(seed)
    names = Names()
    tmp = tempfile.TemporaryDirectory(prefix="tavrida-soak-") if workdir is None else None
    workdir = workdir or tmp.name  # type: ignore[union-attr]
    server_proxy = TcpProxy.for_url(url).start()
    client_proxy = TcpProxy.for_url(url).start()
    cut_log: List[Dict[str, Any]] = []
    after_cuts: Any = None
    service = ServiceProcess(server_proxy.url(url), names, workdir, "faults",
                             casts=casts, calls=calls, idempotent=idempotent)
    try:
        with service, ReplyLog() as replies, ClientLog(os.path.join(workdir, "client.log")):
            service.start()
            disc = names.discovery()
            cli = client.RPCClient(client_proxy.url(url), disc, source=CLIENT)
            try:
                total = casts + calls
                points = sorted(rng.uniform(0.05, 0.9) * total for _ in range(cuts))
                stream = Stream(cli, casts, calls, callers, call_timeout)

                def cutter() -> None:
                    for point in points:
                        if not stream.wait_for(point):
                            return
                        sides = [("client", client_proxy), ("service", server_proxy)]
                        rng.shuffle(sides)
                        record = {"at": stream.progress}
                        for side, proxy in sides:
                            record[side] = proxy.cut()
                            time.sleep(rng.uniform(0, 0.05))
                        cut_log.append(record)

                send_seconds, after_cuts = stream.run_faulted(cutter, 5, service, result,
                                                              drain_timeout)
            finally:
                cli.close()
            final = service.terminate()
            sizes = queue_sizes(url, names)
            late = replies.dropped
        cut_conns = sum(r.get("client", 0) + r.get("service", 0) for r in cut_log)
        dupes = stream.judge(result, final, sizes, after_cuts, "the cuts")
        result.figures.update({
            "late_answers_dropped": late,
            "cuts": len(cut_log), "connections_cut": cut_conns,
            "peak_rss_mb": round(service.peak_rss_kb / 1024, 1),
            "send_s": round(send_seconds, 1), "seed": seed,
        })
        result.check(len(cut_log) == cuts, f"only {len(cut_log)} of {cuts} cuts happened")
        check_dead_letters(result, url, names, sizes["dead"], stream)
        if idempotent:
            result.check(dupes == 0, f"the handler saw {dupes} duplicates")
    except ScenarioError as exc:
        result.problems.append(str(exc))
    finally:
        client_proxy.close()
        server_proxy.close()
        try:
            cleanup(url, names)
        finally:
            if tmp is not None:
                tmp.cleanup()
    return result.done()


def _workdir(workdir: Optional[str]) -> "tuple[str, Any]":
    if workdir is not None:
        os.makedirs(workdir, exist_ok=True)
        return workdir, None
    tmp = tempfile.TemporaryDirectory(prefix="tavrida-soak-")
    return tmp.name, tmp


def shutdown(url: str, messages: int = 10_000, workers: int = 4, prefetch: int = 50,
             sleep: float = 0.002, stop_at: float = 0.3, workdir: Optional[str] = None,
             command: str = "") -> Result:
    """SIGTERM a service in the middle of a backlog, then start another on the rest.

    Checks: the first exits by itself (code 0) having finished and acked
    every message it held; the queue then holds exactly the messages it did
    not handle; the second handles those; no message is lost or handled twice.
    """
    result = Result(f"shutdown-w{workers}", url, command)
    names = Names()
    workdir, tmp = _workdir(workdir)
    try:
        load_s = load_backlog(url, names, messages)
        with ServiceProcess(url, names, workdir, "first", casts=messages, workers=workers,
                            prefetch=prefetch, sleep=sleep) as first:
            first.start()
            first.wait(lambda s: s["settled"] >= messages * stop_at, 120,
                       f"{stop_at:.0%} of the backlog to be handled")
            signalled = time.monotonic()
            final1 = first.terminate()
            stop_s = time.monotonic() - signalled
        left = queue_sizes(url, names)["queue"] or 0
        with ServiceProcess(url, names, workdir, "second", casts=messages, workers=workers,
                            prefetch=prefetch) as second:
            second.start()
            try:
                second.wait(lambda s: s["cast_distinct"] >= left and s["settled"] >= left, 120,
                            f"the {left} messages left to be handled")
            except ScenarioError as exc:
                result.problems.append(str(exc))
            final2 = second.terminate()
        sizes = queue_sizes(url, names)
        one, two = counts(final1, "casts"), counts(final2, "casts")
        handled = [a + b for a, b in zip(one, two)]
        lost = sum(1 for c in handled if c == 0)
        twice = sum(1 for c in handled if c > 1)
        stop = final1.get("stop_at") or {}
        f = result.figures
        f.update({
            "messages_in": messages, "handled_by_first": sum(1 for c in one if c),
            "in_hand_at_sigterm": stop.get("in_hand"),
            "first_started": final1.get("started"), "first_finished": final1.get("finished"),
            "left_in_queue": left, "handled_by_second": sum(1 for c in two if c),
            "redelivered_to_second": final2.get("redelivered"),
            "messages_out": sum(1 for c in handled if c), "lost": lost, "duplicates": twice,
            "dead_letters": sizes["dead"], "stop_s": round(stop_s, 2),
            "peak_rss_mb": round(max(first.peak_rss_kb, second.peak_rss_kb) / 1024, 1),
            "load_s": round(load_s, 1),
        })
        result.check(final1.get("exit_code") == 0,
                     f"first service exit code {final1.get('exit_code')}")
        result.check(final1.get("state") == "stopped", f"first service {final1.get('state')}")
        result.check(final1.get("started") == final1.get("finished"),
                     "the first service left handlers unfinished")
        result.check(final1.get("taken") == final1.get("settled"),
                     "the first service did not settle every message it took")
        result.check(left == messages - f["handled_by_first"],
                     f"{left} left in the queue, expected {messages - f['handled_by_first']}")
        result.check(lost == 0, f"{lost} messages lost")
        result.check(twice == 0, f"{twice} messages handled twice")
        result.check(sizes["queue"] == 0, f"{sizes['queue']} still in the queue")
        result.check(final2.get("exit_code") == 0,
                     f"second service exit code {final2.get('exit_code')}")
    except ScenarioError as exc:
        result.problems.append(str(exc))
    finally:
        try:
            cleanup(url, names)
        finally:
            if tmp is not None:
                tmp.cleanup()
    return result.done()


def long_handler(url: str, beat: bool, heartbeat: float = 2.0, factor: float = 3.0,
                 workdir: Optional[str] = None, command: str = "") -> Result:
    """One call whose handler runs ``factor`` heartbeat intervals on the draining thread.

    Checks: the call gets its answer, the message is delivered once (no
    redelivery), and the service's connection is never lost.
    """
    name = "long-handler+beat" if beat else "long-handler"
    result = Result(name, url, command)
    names = Names()
    workdir, tmp = _workdir(workdir)
    seconds = heartbeat * factor
    try:
        with ServiceProcess(url, names, workdir, f"long-{int(beat)}", calls=1,
                            heartbeat=heartbeat, sleep=seconds, beat=beat) as service:
            service.start()
            answer: Any = None
            with client.RPCClient(url, names.discovery(), source=CLIENT) as cli:
                started = time.monotonic()
                try:
                    answer = cli.soak.ask(seq=0).call(timeout=seconds * 3 + 10)
                except exceptions.TavridaError as exc:
                    answer = f"{type(exc).__name__}: {exc}"
                took = time.monotonic() - started
            # A redelivery would start the handler again: give it time to show.
            time.sleep(min(heartbeat, 2.0))
            final = service.terminate()
            log = service.log_text()
        lost = log.count(" lost (")
        f = result.figures
        f.update({"heartbeat_s": heartbeat, "handler_s": seconds, "workers": 0,
                  "send_heartbeat": beat, "answer": answer == {"seq": 0},
                  "call_s": round(took, 1), "deliveries": final.get("deliveries"),
                  "redelivered": final.get("redelivered"),
                  "handler_runs": final.get("call_invocations"),
                  "connections_lost": lost, "reconnects": log.count("reconnected to")})
        result.check(answer == {"seq": 0}, f"the call got {answer!r}")
        result.check(final.get("deliveries") == 1, f"delivered {final.get('deliveries')} times")
        result.check(final.get("call_invocations") == 1,
                     f"the handler ran {final.get('call_invocations')} times")
        result.check(lost == 0 and f["reconnects"] == 0,
                     f"the service lost its connection ({lost} lost, {f['reconnects']} reconnects)")
        result.check(final.get("exit_code") == 0, f"service exit code {final.get('exit_code')}")
    except ScenarioError as exc:
        result.problems.append(str(exc))
    finally:
        try:
            cleanup(url, names)
        finally:
            if tmp is not None:
                tmp.cleanup()
    return result.done()


def backlog(url: str, messages: int = 100_000, prefetch: int = 100, max_growth_mb: float = 10.0,
            workdir: Optional[str] = None, command: str = "") -> Result:
    """Drain a backlog of ``messages`` casts; the service's memory must stay flat.

    Memory is sampled every 0.25 s by the service itself. Flat: from the
    moment a tenth of the backlog is handled to the end, resident memory
    grows by less than ``max_growth_mb``.
    """
    result = Result("backlog", url, command)
    names = Names()
    workdir, tmp = _workdir(workdir)
    try:
        load_s = load_backlog(url, names, messages)
        waiting = queue_sizes(url, names)["queue"]
        with ServiceProcess(url, names, workdir, "backlog", casts=messages,
                            prefetch=prefetch) as service:
            service.start()
            started = time.monotonic()
            try:
                service.wait(lambda s: s["cast_distinct"] >= messages, max(120.0, messages / 200),
                             f"{messages} messages to be handled")
            except ScenarioError as exc:
                result.problems.append(str(exc))
            drain_s = time.monotonic() - started
            final = service.terminate()
        sizes = queue_sizes(url, names)
        handled = counts(final, "casts")
        samples = final.get("samples") or []
        warm = [rss for _, done, rss in samples if done >= messages / 10]
        base = warm[0] if warm else 0
        peak_after = max(warm) if warm else 0
        growth = (peak_after - base) / 1024
        f = result.figures
        f.update({
            "messages_in": messages, "waiting_at_start": waiting,
            "messages_out": sum(1 for c in handled if c),
            "lost": sum(1 for c in handled if not c),
            "duplicates": sum(c - 1 for c in handled if c > 1),
            "dead_letters": sizes["dead"], "prefetch": prefetch,
            "rss_at_10pct_mb": round(base / 1024, 1),
            "rss_end_mb": round((samples[-1][2] if samples else 0) / 1024, 1),
            "peak_rss_mb": round(service.peak_rss_kb / 1024, 1),
            "growth_mb": round(growth, 1), "samples": len(samples),
            "load_s": round(load_s, 1), "drain_s": round(drain_s, 1),
            "msgs_per_s": round(messages / drain_s) if drain_s else 0,
        })
        result.check(waiting == messages, f"{waiting} of {messages} waiting at the start")
        result.check(f["lost"] == 0, f"{f['lost']} messages never handled")
        # A small backlog drains before memory can be sampled: nothing to judge then.
        result.check(len(warm) >= 4 or messages < 50_000,
                     f"only {len(warm)} memory samples after warm-up")
        result.check(growth < max_growth_mb,
                     f"memory grew by {growth:.1f} MB while draining (limit {max_growth_mb})")
        result.check(final.get("exit_code") == 0, f"service exit code {final.get('exit_code')}")
    except ScenarioError as exc:
        result.problems.append(str(exc))
    finally:
        try:
            cleanup(url, names)
        finally:
            if tmp is not None:
                tmp.cleanup()
    return result.done()
