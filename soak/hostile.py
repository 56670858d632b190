"""Hostile input: generated messages a service must survive, each accounted for.

Messages are made by hypothesis and published byte for byte
(:mod:`soak.amqp_raw`) straight into a service's queue on RabbitMQ: random
bytes and JSON as bodies, every AMQP field type in the headers, missing and
empty header tables, non-UTF-8 strings, nesting thousands deep, huge bodies,
unknown message types, a pickle content type whose unpickling would leave a
mark. The service (a :class:`tavrida.server.Server` in a thread, so that
every delivery can be followed) must settle each one: handled by its
handler, answered with an Error, or copied to the dead-letter queue with its
reason -- then acked. Count in must equal count out, the queue must keep
moving (a valid call is answered at the end) and nothing may be unpickled.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import re
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional

from soak.amqp_raw import FIXED, Field, RawPublisher, deep_table
from soak.scenarios import CLIENT, Names, Result, ScenarioError, cleanup, open_transport
from tavrida import client, discovery, dispatcher, exceptions, messages, server, service
from tavrida.transports.base import Binding, Topology

SERVICE = "hostile"
TAVRIDA_HEADERS = ("message_type", "correlation_id", "request_id", "message_id",
                   "reply_to", "source", "destination")
#: What a hostile body may claim to be (besides random text and bytes).
CONTENT_TYPES = ("application/json", "application/x-python-serialize", "application/x-yaml",
                 "application/octet-stream", "text/plain; charset=utf-8", "", "APPLICATION/JSON",
                 "application/data")
ENCODINGS = ("utf-8", "binary", "gzip", "latin-1", "")
ENTRY_POINTS = ("hostile.echo", "hostile.fail", "hostile.missing", "hostile", "client",
                "client.answer", "nobody.method", "", ".", "a.b.c", "hostile.echo.more",
                "hostile..echo")


class Unpickled(Exception):
    """Raised by the marker a pickle body carries, if anything ever unpickles it."""


def _mark(path: str) -> None:
    with open(path, "w") as marker:
        marker.write("a pickle body was unpickled\n")


class _Booby:
    """Unpickling this creates the marker file (``pickle.loads`` calls ``_mark``)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (_mark, (self.path,))


def pickle_body(marker: str) -> bytes:
    return pickle.dumps({"payload": _Booby(marker), "context": {}}, protocol=4)


# --- the observed service -----------------------------------------------------------------------

class Outcome:
    """What became of one delivery."""

    __slots__ = ("handled", "answers", "dead", "acked", "requeued", "redelivered")

    def __init__(self, redelivered: bool) -> None:
        self.handled = 0
        self.answers: List[str] = []
        self.dead: List[str] = []
        self.acked = False
        self.requeued = False
        self.redelivered = redelivered

    @property
    def fate(self) -> str:
        if not self.acked:
            return "requeued" if self.requeued else "unsettled"
        if self.dead:
            return "dead"
        if messages.ERROR in self.answers:
            return "error"
        if self.handled:
            return "handled"
        return "dropped"

    def __repr__(self) -> str:
        return (f"<Outcome {self.fate} handled={self.handled} answers={self.answers} "
                f"dead={self.dead}>")


OBSERVED: Dict[str, Any] = {"server": None}


@dispatcher.rpc_service(SERVICE)
class Hostile(service.ServiceController):
    """``echo`` takes any payload; ``fail`` raises."""

    @dispatcher.rpc_method(service=SERVICE, method="echo")
    def echo(self, request: Any, proxy: Any, **payload: Any) -> Dict[str, Any]:
        OBSERVED["server"].current.handled += 1
        return {"keys": len(payload)}

    @dispatcher.rpc_method(service=SERVICE, method="fail")
    def fail(self, request: Any, proxy: Any, **payload: Any) -> None:
        OBSERVED["server"].current.handled += 1
        raise RuntimeError("this handler refuses every message")


class _Watched:
    """A delivery whose ack or reject is recorded in its outcome."""

    def __init__(self, delivery: Any, outcome: Outcome) -> None:
        self._delivery = delivery
        self._outcome = outcome

    def __getattr__(self, name: str) -> Any:
        return getattr(self._delivery, name)

    def ack(self) -> None:
        self._outcome.acked = True
        self._delivery.ack()

    def reject(self, requeue: bool) -> None:
        self._outcome.requeued = bool(requeue)
        self._delivery.reject(requeue)


class ObservedServer(server.Server):
    """A Server (``workers=0``) that records the outcome of every delivery."""

    pipelined_answers = False  # an outcome is recorded once handle() acked it

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.current = Outcome(False)
        self.outcomes: List[Outcome] = []
        self.settled = threading.Condition()
        self.finished = 0  # acked deliveries

    def start(self) -> None:
        if self._started:
            return
        super().start()
        self.dead_letters.observers.append(lambda reason: self.current.dead.append(reason))
        for controller in self.controllers:
            controller.postprocessor.observers.append(
                lambda message: self.current.answers.append(message.message_type))

    def handle(self, delivery: Any) -> None:
        outcome = Outcome(bool(delivery.redelivered))
        self.current = outcome
        try:
            super().handle(_Watched(delivery, outcome))
        finally:
            with self.settled:
                self.outcomes.append(outcome)
                if outcome.acked:
                    self.finished += 1
                self.settled.notify_all()

    def wait_finished(self, count: int, timeout: float) -> bool:
        with self.settled:
            return self.settled.wait_for(lambda: self.finished >= count, timeout)


# --- hypothesis strategies ----------------------------------------------------------------------

def strategies() -> Any:
    """The hypothesis strategy of one hostile message: ``(body, properties)``."""
    from hypothesis import strategies as st

    def typed(code: str) -> Any:
        values = {
            "t": st.integers(0, 255), "b": st.integers(-128, 127), "B": st.integers(0, 255),
            "s": st.integers(-2 ** 15, 2 ** 15 - 1), "u": st.integers(0, 2 ** 16 - 1),
            "I": st.integers(-2 ** 31, 2 ** 31 - 1), "i": st.integers(0, 2 ** 32 - 1),
            "l": st.integers(-2 ** 63, 2 ** 63 - 1), "L": st.integers(-2 ** 63, 2 ** 63 - 1),
            "f": st.floats(width=32, allow_nan=False, allow_infinity=False),
            "d": st.floats(allow_nan=False, allow_infinity=False),
            "T": st.integers(0, 2 ** 64 - 1),
            "D": st.tuples(st.integers(0, 255), st.integers(-2 ** 31, 2 ** 31 - 1)),
            "S": st.binary(max_size=30), "x": st.binary(max_size=30), "V": st.none(),
        }[code]
        return values.map(lambda value: Field(code, value))

    texts = st.one_of(st.text(max_size=30), st.binary(max_size=30),
                      st.sampled_from(ENTRY_POINTS),
                      st.text(max_size=10).map(lambda t: t.encode("utf-8") + b"\xff\xc0"))
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(-2 ** 63, 2 ** 63 - 1),
        st.floats(allow_nan=False, allow_infinity=False), texts,
        st.sampled_from(sorted(set(FIXED) - {"U"}) + ["D", "S", "x", "V"]).flatmap(typed))
    keys = st.one_of(st.text(max_size=12), st.binary(max_size=12))
    values = st.recursive(
        scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=4).map(lambda v: Field("A", v)),
                                st.dictionaries(keys, inner, max_size=4).map(
                                    lambda v: Field("F", v))),
        max_leaves=8)
    tavrida_values = {
        "message_type": st.one_of(st.sampled_from(
            ["request", "response", "error", "notification", "REQUEST", ""]), values),
        "reply_to": st.one_of(st.sampled_from(["client", "client.answer", ""]), values),
        "destination": st.one_of(st.sampled_from(ENTRY_POINTS), values),
        "source": st.one_of(st.sampled_from(["client", "client.start", "nobody.x"]), values),
    }
    for name in ("correlation_id", "request_id", "message_id"):
        tavrida_values[name] = st.one_of(st.uuids().map(str), st.just(""), values)
    tavrida = st.fixed_dictionaries({}, optional=tavrida_values)
    # Valid headers with a few of them removed or replaced: most reach a handler or dispatch.
    mutations = st.lists(st.tuples(st.sampled_from(TAVRIDA_HEADERS),
                                   st.one_of(st.just(_REMOVE), tavrida_values["destination"],
                                             values)), max_size=2)
    nearly_valid = st.builds(_mutate, st.sampled_from(["echo", "fail", "missing"]),
                             st.sampled_from(["client", "client.answer", ""]), mutations)
    mixed = st.builds(lambda own, user: {**user, **own}, st.one_of(tavrida, nearly_valid),
                      st.dictionaries(keys, values, max_size=3))
    tables = {"nearly valid": nearly_valid, "mixed": mixed, "none": st.none(),
              "empty": st.just({}),
              # Nested deeper than anyone reads.
              "deep": st.sampled_from([40, 600, 2000]).map(deep_table)}
    # sampled_from draws evenly (one_of favours its first branches): mostly readable headers.
    header_tables = st.sampled_from(["nearly valid"] * 5 + ["mixed"] * 2
                                    + ["none", "empty", "deep"]).flatmap(tables.__getitem__)
    json_values = st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20)),
        lambda inner: st.one_of(st.lists(inner, max_size=4),
                                st.dictionaries(st.text(max_size=8), inner, max_size=4)),
        max_leaves=12)
    payloads = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
    valid_bodies = st.builds(lambda p, c: json.dumps({"payload": p, "context": c}).encode(),
                             payloads, st.one_of(st.none(), payloads, json_values))
    bodies = st.one_of(
        valid_bodies, valid_bodies, valid_bodies,
        st.binary(max_size=200),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.text(max_size=50).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.sampled_from([b"", b"{", b"null", b"\xff\xfe{}", b"[" * 100_000,
                         b'{"payload":' * 20_000 + b"{}" + b"}" * 20_000]),
    )
    shortstrs = st.one_of(st.none(), st.text(max_size=20), st.binary(max_size=20))
    properties = st.fixed_dictionaries(
        {"headers": header_tables},
        optional={
            "content_type": st.one_of(st.none(), st.sampled_from(CONTENT_TYPES), texts),
            "content_encoding": st.one_of(st.none(), st.sampled_from(ENCODINGS), texts),
            # RabbitMQ refuses delivery modes other than 1 and 2: a few still try.
            "delivery_mode": st.sampled_from([1, 2, 1, 2, 0, 77]),
            "priority": st.integers(0, 255),
            "correlation_id": shortstrs, "reply_to": shortstrs, "message_id": shortstrs,
            "timestamp": st.integers(0, 2 ** 64 - 1), "type": shortstrs, "app_id": shortstrs,
        })
    return st.tuples(bodies, properties)


_REMOVE = object()


def _mutate(method: str, reply_to: str, changes: List[Any]) -> Dict[str, Any]:
    headers = valid_headers(method, reply_to)
    for name, value in changes:
        if value is _REMOVE:
            headers.pop(name, None)
        else:
            headers[name] = value
    return headers


def valid_headers(method: str = "echo", reply_to: str = "client") -> Dict[str, Any]:
    return {"message_type": "request", "correlation_id": "c-1", "request_id": os.urandom(8).hex(),
            "message_id": os.urandom(8).hex(), "reply_to": reply_to, "source": "client",
            "destination": f"{SERVICE}.{method}"}


def explicit_examples(marker: str) -> List[Any]:
    """Cases worth trying every run, whatever hypothesis draws."""
    body = json.dumps({"payload": {"x": 1}, "context": {}}).encode()
    huge = b'{"payload": {"blob": "' + b"x" * (17 * 1024 * 1024) + b'"}}'
    big = b'{"payload": {"blob": "' + b"y" * (4 * 1024 * 1024) + b'"}}'
    return [
        (pickle_body(marker), {"headers": valid_headers(), "content_type":
                               "application/x-python-serialize"}),
        (pickle_body(marker), {"headers": valid_headers(reply_to=""), "content_type":
                               "application/x-python-serialize", "content_encoding": "binary"}),
        (pickle_body(marker), {"headers": None, "content_type": "application/x-python-serialize"}),
        (huge, {"headers": valid_headers()}),
        (big, {"headers": valid_headers()}),
        (b"[" * 100_000, {"headers": valid_headers()}),
        (body, {"headers": {**valid_headers(), "t": Field("T", 2 ** 64 - 1)}}),
        (body, {"headers": {**valid_headers(), "big": "h" * 120_000}}),
        # Headers as large as a frame allows: an answer or dead letter with them is larger.
        (body, {"headers": {**valid_headers(), "big": "h" * 130_850}}),
        (body, {"headers": {**valid_headers("fail", reply_to=""), "big": "h" * 130_850}}),
        (body, {"headers": deep_table(3000, "A")}),
        (body, {"headers": {**valid_headers(), "message_type": "unknown"}}),
        (body, {"headers": {**valid_headers(), "message_type": b"\xff\xfe"}}),
        (body, {"headers": {}}),
        (body, {"headers": None}),
        (body, {"headers": valid_headers("fail")}),
        (body, {"headers": valid_headers("fail", reply_to="")}),
        (body, {"headers": valid_headers("missing")}),
    ]


# --- the scenario -------------------------------------------------------------------------------

class Hostility:
    """One service under fire: publish a message, wait for its fate, keep the counts."""

    def __init__(self, url: str, names: Names, settle_timeout: float = 30.0) -> None:
        self.url = url
        self.names = names
        self.settle_timeout = settle_timeout
        self.answers_queue = f"{names.prefix}.answers"
        # The service reaches the client only: an answer to itself would come back as
        # one more message, and every message here must have exactly one fate.
        disc = discovery.LocalDiscovery()
        disc.register_remote_service(CLIENT, names.client_exchange)
        Hostile.set_discovery(disc)
        self.server = ObservedServer(url, names.queue, names.exchange, [Hostile])
        OBSERVED["server"] = self.server
        self.thread: Optional[threading.Thread] = None
        self.publisher: Optional[RawPublisher] = None
        self.published = 0
        self.refused: Dict[str, int] = collections.Counter()
        self.fates: Dict[str, int] = collections.Counter()
        self.failures: List[str] = []
        self.largest = 0

    def __enter__(self) -> "Hostility":
        self.server.start()
        transport = self.server.transport
        assert transport is not None
        transport.declare(Topology.build(
            [self.names.client_exchange], [self.answers_queue],
            [Binding(self.answers_queue, self.names.client_exchange, "#")]))
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="hostile-server")
        self.thread.start()
        self.publisher = RawPublisher(self.url, name=f"{self.names.prefix}:raw")
        return self

    def send(self, body: bytes, properties: Dict[str, Any]) -> Optional[str]:
        """Publish one message and wait for its fate; return a problem, or None."""
        assert self.publisher is not None
        if self.thread is None or not self.thread.is_alive():
            return "the service is not running any more"
        expected = self.server.finished + 1
        refused = self.publisher.publish("", self.names.queue, body, properties)
        if refused is not None:
            # The broker never took it: not "in". Counted by reason, numbers left out.
            self.refused[re.sub(r"[0-9]+", "N", refused)[:120]] += 1
            return None
        self.published += 1
        self.largest = max(self.largest, len(body))
        if not self.server.wait_finished(expected, self.settle_timeout):
            tail = self.server.outcomes[-3:]
            return f"no message settled within {self.settle_timeout}s (stalled); last {tail}"
        fate = self.server.outcomes[-1].fate
        self.fates[fate] += 1
        if fate not in ("handled", "error", "dead"):
            return f"message ended {fate}: {self.server.outcomes[-1]!r}"
        return None

    def final_call(self) -> Any:
        """A valid call after everything: the service still answers."""
        with client.RPCClient(self.url, self.names.discovery(), source=CLIENT) as cli:
            try:
                return cli.hostile.echo(ping=1).call(timeout=15)
            except exceptions.TavridaError as exc:
                return f"{type(exc).__name__}: {exc}"

    def count_answers(self) -> int:
        """Answers that reached the client exchange (drained from a queue bound to it)."""
        transport = open_transport(self.url)
        got: List[Any] = []
        try:
            transport.consume(self.answers_queue, lambda d: (got.append(1), d.ack()), 200)
            quiet = time.monotonic()
            deadline = quiet + 30
            while time.monotonic() < deadline and time.monotonic() - quiet < 1.0:
                before = len(got)
                transport.drain(0.1)
                if len(got) != before:
                    quiet = time.monotonic()
        finally:
            transport.close()
        return len(got)

    def __exit__(self, *exc_info: Any) -> None:
        if self.publisher is not None:
            self.publisher.close()
        self.server.stop()
        if self.thread is not None:
            self.thread.join(30)


def hostile(url: str, examples: int = 300, seed: Optional[int] = None,
            workdir: Optional[str] = None, command: str = "") -> Result:
    """Generated hostile messages (plus fixed ones) against one service; see the module."""
    from hypothesis import HealthCheck, Phase, given, settings

    result = Result("hostile", url, command)
    names = Names(service=SERVICE)
    tmp = tempfile.TemporaryDirectory(prefix="tavrida-hostile-") if workdir is None else None
    marker = os.path.join(workdir or tmp.name, "unpickled")  # type: ignore[union-attr]
    try:
        with Hostility(url, names) as fire:
            for body, properties in explicit_examples(marker):
                problem = fire.send(body, properties)
                if problem:
                    fire.failures.append(f"{problem} (fixed case {properties!r:.200})")

            @settings(max_examples=examples, deadline=None, database=None,
                      phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(strategies())
            def generated(message: Any) -> None:
                body, properties = message
                problem = fire.send(body, properties)
                if problem:
                    fire.failures.append(f"{problem} (properties {properties!r:.300})")

            if seed is not None:
                from hypothesis import seed as with_seed

                generated = with_seed(seed)(generated)
            generated()
            answer = fire.final_call()
        outcomes = fire.server.outcomes
        dead = sum(len(o.dead) for o in outcomes)
        answers_sent = sum(len(o.answers) for o in outcomes)
        answers_seen = fire.count_answers()
        transport = open_transport(url)
        try:
            dead_in_queue = transport.queue_size(names.dead)
            left = transport.queue_size(names.queue)
        finally:
            transport.close()
        out = fire.fates["handled"] + fire.fates["error"] + fire.fates["dead"]
        f = result.figures
        f.update({
            "messages_in": fire.published, "messages_out": out,
            "handled": fire.fates["handled"], "error_answers": fire.fates["error"],
            "dead_letters": dead_in_queue, "deliveries": len(outcomes),
            "redelivered": sum(1 for o in outcomes if o.redelivered),
            "answers_sent": answers_sent, "answers_seen": answers_seen,
            "refused_by_broker": sum(fire.refused.values()), "left_in_queue": left,
            "largest_body_mb": round(fire.largest / 2 ** 20, 1),
            "unpickled": os.path.exists(marker), "final_call": answer == {"keys": 1},
        })
        result.problems.extend(fire.failures[:5])
        if fire.refused:
            f["refusals"] = dict(fire.refused)
        if len(fire.failures) > 5:
            result.problems.append(f"... and {len(fire.failures) - 5} more")
        result.check(out == fire.published, f"{fire.published} in, {out} out: {dict(fire.fates)}")
        result.check(dead == dead_in_queue, f"{dead} dead-lettered, {dead_in_queue} in the queue")
        result.check(answers_sent == answers_seen,
                     f"{answers_sent} answers sent, {answers_seen} arrived")
        result.check(left == 0, f"{left} messages left in the queue")
        result.check(not os.path.exists(marker), "a pickle body was unpickled")
        result.check(answer == {"keys": 1}, f"the final call got {answer!r}")
    except ScenarioError as exc:
        result.problems.append(str(exc))
    finally:
        try:
            transport = open_transport(url)
            try:
                transport.delete(queues=[f"{names.prefix}.answers"])
            finally:
                transport.close()
            cleanup(url, names)
        finally:
            if tmp is not None:
                tmp.cleanup()
    return result.done()
