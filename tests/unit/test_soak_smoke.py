"""The soak tooling without a broker: the TCP proxy, the raw AMQP encoder, the report."""

from __future__ import annotations

import datetime
import decimal
import socket
import threading
from typing import List, Optional, Set

from amqp import serialization

from soak.__main__ import table, verdict
from soak.amqp_raw import Field, deep_table, encode_properties, encode_table
from soak.proxy import TcpProxy
from soak.scenarios import DeadLetter, Result, judge_dead_letters
from tavrida import messages, wire
from tavrida.transports.base import DEAD_LETTER_REASON_HEADER


def _echo_server() -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return listener


def _echo(conn: socket.socket) -> None:
    with conn:
        while True:
            try:
                data = conn.recv(4096)
            except OSError:
                return
            if not data:
                return
            conn.sendall(data)


def test_proxy_forwards_and_cuts() -> None:
    listener = _echo_server()
    try:
        with TcpProxy("127.0.0.1", listener.getsockname()[1]) as proxy:
            assert proxy.url("amqp://u:p@broker:5672//") == f"amqp://u:p@127.0.0.1:{proxy.port}//"
            client = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
            client.sendall(b"ping")
            assert client.recv(4) == b"ping"
            assert proxy.cut() == 1
            try:
                assert client.recv(4) == b""  # reset or closed: either way, the end
            except ConnectionResetError:
                pass
            client.close()
            again = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
            again.sendall(b"pong")
            assert again.recv(4) == b"pong"  # new connections go through again
            again.close()
            assert proxy.accepted == 2 and proxy.cut_count == 1
    finally:
        listener.close()


def test_raw_encoder_writes_what_py_amqp_reads() -> None:
    table_ = {"t": Field("t", 1), "b": Field("b", -5), "B": Field("B", 250),
              "s": Field("s", -300), "u": Field("u", 60000), "I": Field("I", -7),
              "i": Field("i", 2 ** 32 - 1), "l": Field("l", -2 ** 40), "L": Field("L", 2 ** 40),
              "f": Field("f", 1.5), "d": Field("d", 2.25), "D": Field("D", (2, 314)),
              "S": Field("S", b"\xff"), "x": Field("x", b"\x00\x01"), "T": Field("T", 0),
              "V": Field("V"), "A": Field("A", [1, "a"]), "F": Field("F", {"k": True}),
              b"\xfe": "key not UTF-8"}
    (decoded,), _ = serialization.loads("F", encode_table(table_), 0)
    assert decoded == {"t": True, "b": -5, "B": 250, "s": -300, "u": 60000, "I": -7,
                       "i": 2 ** 32 - 1, "l": -2 ** 40, "L": 2 ** 40, "f": 1.5, "d": 2.25,
                       "D": decimal.Decimal("3.14"), "S": b"\xff", "x": b"\x00\x01",
                       "T": datetime.datetime(1970, 1, 1), "V": None, "A": [1, "a"],
                       "F": {"k": True}, b"\xfe": "key not UTF-8"}
    properties = encode_properties({"content_type": b"\xff", "headers": {"a": 1},
                                    "delivery_mode": 2})
    flags = int.from_bytes(properties[:2], "big")
    assert flags == (1 << 15) | (1 << 13) | (1 << 12)


def test_deep_table_is_built_without_recursion() -> None:
    raw = deep_table(50_000)
    assert len(raw) > 50_000 * 5
    (shallow,), _ = serialization.loads("F", deep_table(3), 0)
    assert shallow == {"n": {"n": {"n": {"n": "bottom"}}}}


def test_table_and_verdict() -> None:
    ok = Result("faults", "amqp://x")
    ok.figures.update(casts_in=10, casts_out=10, lost=0, calls_in=2, answers=2,
                      redelivered=1, handler_duplicates=1, dead_letters=0, peak_rss_mb=30.0)
    bad = Result("backlog", "redis://x")
    bad.figures.update(messages_in=5, messages_out=4, lost=1)
    bad.problems.append("1 messages never handled")
    text = table([ok.done(), bad.done()])
    assert "10 + 2 calls" in text and "FAIL" in text
    assert table([ok], markdown=True).startswith("| scenario |")
    assert verdict([ok]) == "VERDICT: PASS - 1 scenarios, no message lost"
    assert verdict([ok, bad]).startswith("VERDICT: FAIL - 1 of 2 scenarios failed")
    assert "1 messages lost" in verdict([ok, bad])
    assert "FAIL: 1 messages never handled" in bad.line()


UNROUTABLE = ("answer not sent: No queue takes messages to exchange 'x.client' with "
              "routing key 'client': no queue is bound with a matching key")


def _dead_letter(seq: int, reason: str, call: bool = True) -> DeadLetter:
    """A dead letter as the service writes it: the request's bytes and headers, and why."""
    request = messages.Request({"source": "client.ask" if call else "client",
                                "destination": "soak.ask",
                                "reply_to": "client" if call else ""}, {}, {"seq": seq})
    body, headers = wire.encode(request)
    return DeadLetter({**headers, DEAD_LETTER_REASON_HEADER: reason}, body)


def _judge(letters: List[DeadLetter], answered: Set[int], call_errors: int = 0,
           dead: Optional[int] = None) -> Result:
    result = Result("faults", "amqp://guest:guest@127.0.0.1:5672//")
    judge_dead_letters(result, len(letters) if dead is None else dead, letters, answered,
                       call_errors)
    return result


def test_dead_letter_of_a_copy_whose_call_was_answered_is_excused() -> None:
    result = _judge([_dead_letter(7, UNROUTABLE)], answered={7})
    assert result.passed, result.problems
    assert result.figures["dead_of_answered_calls"] == 1
    assert result.figures["dead_reasons"] == {f"answered by another copy: {UNROUTABLE}": 1}


def test_dead_letters_that_lost_or_hid_something_are_not_excused() -> None:
    # Its caller got no answer and no error: a lost call.
    assert not _judge([_dead_letter(7, UNROUTABLE)], answered=set()).passed
    # Answered, but dead-lettered for another reason than a reply queue gone.
    failed = _judge([_dead_letter(7, "failed twice: OSError: cut")], answered={7})
    assert not failed.passed
    assert failed.figures["dead_reasons"] == {"failed twice: OSError: cut": 1}
    # A cast is never answered: its dead letter is no copy of an answered call.
    assert not _judge([_dead_letter(7, UNROUTABLE, call=False)], answered={7}).passed
    # One that could not be read.
    assert not _judge([], answered={7}, dead=1).passed
    # A failed call explains one dead letter, not two requests.
    two = [_dead_letter(7, UNROUTABLE), _dead_letter(8, UNROUTABLE)]
    assert _judge(two, answered=set(), call_errors=2).passed
    assert not _judge(two, answered=set(), call_errors=1).passed
