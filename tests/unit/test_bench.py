"""Smoke test of the benchmark (``python -m bench``): it runs and reports every figure.

Only the in-memory scenario runs here (no broker) with tiny sizes. Nothing
is timed: the numbers only have to exist and be positive.
"""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is not installed: it lives beside tavrida/
    sys.path.insert(0, str(ROOT))
MEMORY_FIGURES = ("calls_per_s", "inline_calls_per_s", "median_us", "p99_us", "casts_per_s")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """``python -m bench --url memory:// --quick``: its output and its JSON."""
    path = tmp_path_factory.mktemp("bench") / "result.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--url", "memory://", "--quick", "--json", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout, json.loads(path.read_text(encoding="utf-8"))


def test_json_has_every_memory_figure_with_positive_numbers(quick_run):
    _, document = quick_run
    rows = {row["figure"]: row for row in document["rows"]}
    assert set(rows) == set(MEMORY_FIGURES)
    for name, row in rows.items():
        assert row["scenario"] == "memory"
        assert row["confirms"] == "n/a"
        for side in ("tavrida", "kombu"):
            assert row[side] > 0, (name, side, row)
            assert len(row["samples"][side]) == 3
            assert all(value > 0 for value in row["samples"][side])
        assert math.isclose(row["ratio"], row["tavrida"] / row["kombu"])
    assert rows["calls_per_s"]["target"] == ">= 3x"
    assert rows["casts_per_s"]["target"] == ">= 40000"


def test_json_describes_the_run(quick_run):
    _, document = quick_run
    assert document["command"].startswith("python -m bench --url memory://")
    assert document["settings"]["repeat"] == 3
    assert document["settings"]["scenarios"] == ["memory"]
    assert document["machine"]["nproc"] >= 1
    assert {"python", "kombu", "amqp", "tavrida", "broker"} <= set(document["versions"])
    assert document["sizes"]["memory_calls"] > 0


def test_table_is_printed(quick_run):
    stdout, document = quick_run
    header = next(line for line in stdout.splitlines() if line.startswith("figure"))
    for column in ("unit", "confirms", "tavrida", "kombu", "ratio", "target", "met"):
        assert column in header
    for row in document["rows"]:
        assert row["label"] in stdout


def test_memory_url_refuses_broker_scenarios():
    from bench.__main__ import choose_scenarios

    assert choose_scenarios("", "memory://") == ["memory"]
    assert "bulk" in choose_scenarios("", "amqp://guest:guest@localhost//")
    assert "bulk" not in choose_scenarios("", "redis://localhost:6379/0")
    with pytest.raises(SystemExit):
        choose_scenarios("call", "memory://")
    with pytest.raises(SystemExit):
        choose_scenarios("nope", "amqp://localhost//")


def test_rows_medians_ratios_and_targets():
    from bench.report import build_rows, format_table

    samples = {"cast": {"tavrida": [{"msgs_per_s": v, "cpu_us_per_msg": 150.0,
                                     "service_cpu_us": 1.2} for v in (90.0, 100.0, 300.0)],
                        "kombu": [{"msgs_per_s": v, "cpu_us_per_msg": 100.0,
                                   "service_cpu_us": 1.0} for v in (100.0, 200.0, 110.0)]}}
    rows = {row["figure"]: row for row in build_rows(samples, confirms=True, is_amqp=True)}
    assert rows["msgs_per_s"]["tavrida"] == 100.0 and rows["msgs_per_s"]["kombu"] == 110.0
    assert rows["msgs_per_s"]["met"] is False  # 0.909 < 1.0
    assert rows["cpu_us_per_msg"]["ratio"] == 1.5 and rows["cpu_us_per_msg"]["met"] is True
    assert rows["service_cpu_us"]["met"] is False  # 1.2 > 1.15
    assert all(row["confirms"] == "on" for row in rows.values())
    table = format_table(list(rows.values()), markdown=True)
    assert table.splitlines()[0].startswith("| figure |")
    assert len(table.splitlines()) == 2 + len(rows)


def test_percentile_and_median():
    from bench.common import median, percentile

    values = list(range(1, 101))
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([5.0], 99) == 5.0
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert math.isnan(median([]))


@pytest.mark.parametrize("side", ["tavrida", "kombu"])
def test_threaded_calls_scenario_on_memory(side):
    """Scenario 7's code path: several threads' calls all answered, every latency reported."""
    from bench import baseline_kombu, tavrida_side
    from bench.common import Names, Setup
    from bench.scenarios import threaded_figures

    names = Names.fresh("threads")
    if side == "tavrida":
        setup = Setup(url=f"memory://{names.prefix}", warmup=2, timeout=60)
        conf = tavrida_side.make_config(setup)
        with tavrida_side.running(tavrida_side.make_server(conf, names, "rpc", 10)):
            result = tavrida_side.threaded_run(setup, names, threads=4, n=42)
    else:
        setup = Setup(url="memory://", warmup=4, timeout=60)
        with baseline_kombu._MemoryService(setup, names, None):
            result = baseline_kombu.threaded_run(setup, names, threads=4, n=42)
    assert len(result["latencies"]) == 42
    figures = threaded_figures(result, 42)
    assert set(figures) == {"calls_per_s", "median_us", "p99_us", "client_cpu_us"}
    assert all(value > 0 for value in figures.values())


def test_threaded_calls_reports_a_failing_caller():
    from bench.common import BenchError, threaded_calls

    def make_caller(index):
        return lambda i: {"value": i if index else -1}

    with pytest.raises(BenchError, match="got"):
        threaded_calls(make_caller, threads=3, n=9, timeout=30)


def test_peer_rows_ratio_to_tavrida_and_target():
    from bench.report import build_peer_rows, format_peer_table

    call = {"tavrida": [{"calls_per_s": v, "median_us": 1000.0, "p99_us": 2000.0,
                         "client_cpu_us": 300.0} for v in (900.0, 1000.0, 800.0)],
            "kombu": [{"calls_per_s": 1000.0, "median_us": 900.0, "p99_us": 1800.0,
                       "client_cpu_us": 200.0}] * 3}
    peer = [{"calls_per_s": v, "median_us": 2000.0, "p99_us": 4000.0, "client_cpu_us": 900.0}
            for v in (450.0, 500.0, 400.0)]
    rows = build_peer_rows({"call": call, "peers": {"nameko": peer, "faststream": peer[:1]}},
                           confirms=True)
    by = {(row["peer"], row["figure"]): row for row in rows}
    calls = by[("nameko", "calls_per_s")]
    assert calls["peer_value"] == 450.0 and calls["tavrida"] == 900.0
    assert calls["ratio"] == 0.5 and calls["met"] is True and calls["target"] == "<= 0.6x"
    assert calls["paired_ratios"] == [0.5, 0.5, 0.5]
    assert by[("faststream", "calls_per_s")]["met"] is True
    assert by[("nameko", "median_us")]["met"] is None
    table = format_peer_table(rows, markdown=True)
    assert len(table.splitlines()) == 2 + len(rows)
    assert "nameko sequential calls" in table


def test_peers_need_rabbitmq_and_known_names():
    from bench.__main__ import choose_peers
    from bench.common import Setup

    with pytest.raises(SystemExit):
        choose_peers("nameko", "", Setup(url="redis://localhost:6379/0"))
    with pytest.raises(SystemExit):
        choose_peers("nope", "", Setup(url="amqp://localhost//"))
    assert choose_peers("", "", Setup(url="memory://"))[0] == []


def _wire_copy(conn, names, key):
    """A queue bound beside the client's: a copy of every answer routed to ``key``."""
    import kombu

    from bench import baseline_kombu

    queue = kombu.Queue(f"{names.prefix}.copy", baseline_kombu.topic(names.reply_exchange),
                        routing_key=key, auto_delete=True)(conn.channel())
    queue.declare()
    return queue


def test_kombu_wire_calls_are_answered_by_a_tavrida_service():
    """``--kombu-wire``: raw kombu's calls are tavrida requests, and a tavrida service's
    answers are what kombu_wire writes (header names, body, routing).

    tavrida's ``kombu+memory://`` and kombu's ``memory://`` share kombu's
    in-process broker, so the two speak to each other here as on RabbitMQ.
    """
    from bench import baseline_kombu, kombu_wire, tavrida_side
    from bench.common import CLIENT, Names, Setup

    names = Names.fresh("wire")
    setup = Setup(url="kombu+memory://", warmup=2, timeout=60, kombu_wire=True)
    conf = tavrida_side.make_config(setup)
    with tavrida_side.running(tavrida_side.make_server(conf, names, "rpc", 10)), \
            baseline_kombu.connect(setup, url="memory://",
                                   options=baseline_kombu.MEMORY_OPTIONS) as conn:
        rpc = baseline_kombu.RPCClient(conn, names, exclusive=False, wire=True)
        copy = _wire_copy(conn, names, CLIENT)
        assert [rpc.call(i) for i in range(5)] == [{"value": i} for i in range(5)]
        answer = copy.get(no_ack=True)
        request_body, request_headers, _ = kombu_wire.call(0, names.reply_exchange, 10, CLIENT)
        body, headers, exchange, key = kombu_wire.answer(request_body, request_headers,
                                                         {"value": 0})
        assert set(answer.headers) == set(headers)
        assert answer.decode() == body
        assert (answer.delivery_info["exchange"], answer.delivery_info["routing_key"]) == \
            (exchange, key)
        assert answer.properties["delivery_mode"] == 2
        copy.delete()
        rpc.close()


def test_kombu_wire_service_answers_a_tavrida_client():
    """The kombu service of ``--kombu-wire`` answers a tavrida client's calls, and a
    tavrida client's request carries what kombu_wire writes."""
    import threading

    from bench import baseline_kombu, kombu_wire, tavrida_side
    from bench.common import CLIENT, ECHO_KEY, Names, Setup
    from tavrida import client, exceptions

    names = Names.fresh("wire")
    setup = Setup(url="memory://", warmup=2, timeout=60, kombu_wire=True)
    conf = tavrida_side.make_config(Setup(url="kombu+memory://"))
    disc = tavrida_side.make_discovery(names)
    with baseline_kombu._MemoryService(setup, names, None), \
            client.RPCClient(conf, disc, source=CLIENT) as cli:
        assert [cli.bench_svc.echo(value=i).call(timeout=10) for i in range(3)] == \
            [{"value": i} for i in range(3)]

    # With no service: the request a tavrida client sends, read off its queue.
    outcome = []
    with baseline_kombu.connect(setup, url="memory://",
                                options=baseline_kombu.MEMORY_OPTIONS) as conn, \
            client.RPCClient(conf, disc, source=CLIENT) as cli:
        queue = baseline_kombu.service_queue(names)(conn.channel())
        queue.declare()

        def call():
            try:
                cli.bench_svc.echo(value=7).call(timeout=2)
            except exceptions.CallTimeout as exc:
                outcome.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        message = None
        while message is None and caller.is_alive():
            message = queue.get(no_ack=True)
        caller.join()
        assert message is not None and outcome
        body, headers, extra = kombu_wire.call(7, names.reply_exchange, 2, CLIENT)
        assert set(message.headers) == set(headers)
        assert {key: message.headers[key] for key in ("message_type", "reply_to", "source",
                                                      "destination", kombu_wire.REPLY_EXCHANGE)} \
            == {key: headers[key] for key in ("message_type", "reply_to", "source",
                                               "destination", kombu_wire.REPLY_EXCHANGE)}
        assert message.decode() == body
        assert message.delivery_info["routing_key"] == ECHO_KEY
        assert message.properties["delivery_mode"] == 2
        assert "expiration" in message.properties and "expiration" in extra
        queue.delete()


def test_kombu_levers_change_the_kombu_sides_answer_route():
    """``--kombu-lever``: with ``default-exchange-answer`` the kombu service answers through
    the default exchange (nothing reaches the client's topic exchange), with
    ``two-connections`` the client publishes on a second connection; calls are answered."""
    from bench import baseline_kombu
    from bench.__main__ import main
    from bench.common import CLIENT, Names, Setup

    names = Names.fresh("lever")
    levers = ("default-exchange-answer", "two-connections", "no-expiration")
    setup = Setup(url="memory://", warmup=2, timeout=60, kombu_wire=True, kombu_levers=levers)
    with baseline_kombu._MemoryService(setup, names, None), \
            baseline_kombu.connect(setup, url="memory://",
                                   options=baseline_kombu.MEMORY_OPTIONS) as conn:
        rpc = baseline_kombu.RPCClient(conn, names, exclusive=False, wire=True,
                                       levers=levers)
        copy = _wire_copy(conn, names, CLIENT)
        assert [rpc.call(i) for i in range(3)] == [{"value": i} for i in range(3)]
        assert rpc.publishing is not conn
        assert copy.get(no_ack=True) is None
        copy.delete()
        rpc.close()
    with pytest.raises(SystemExit):
        main(["--url", "memory://", "--kombu-lever", "two-connections"])


def test_handoff_measures_round_trips_between_two_threads():
    """``python -m bench.handoff``: the bare hand-off figure scenario 4 is compared with."""
    from bench.handoff import main, round_trips

    assert math.isfinite(round_trips(50, 1.0))
    assert main(["--round-trips", "20", "--work", "0", "--repeat", "1"]) == 0


def test_timeline_splits_each_call_into_its_four_legs():
    """``python -m bench.timeline``: legs from the two processes' socket events (ns)."""
    from bench.timeline import LEGS, legs

    client, service = [], []
    for call in range(3):
        t = call * 1_000_000
        client.append((t, "send", 500))  # the request
        service += [(t + 100_000, "recv", 7), (t + 110_000, "recv", 400),
                    (t + 150_000, "send", 21),  # an ack: not the answer
                    (t + 300_000, "send", 415)]  # the answer
        client += [(t + 500_000, "recv", 7), (t + 520_000, "recv", 300)]
    client.append((3_000_000, "send", 500))
    found = legs(client, service)
    assert [found[leg] for leg in LEGS] == [[100.0] * 3, [200.0] * 3, [220.0] * 3,
                                            [480.0] * 3]


TYPED_FIGURES = ("untyped_calls_per_s", "typed_calls_per_s", "record_calls_per_s",
                 "typed_cost_us", "record_cost_us", "arguments_untyped_us",
                 "arguments_typed_us", "arguments_record_us")


def test_typed_adds_the_typed_echo_figures_on_the_tavrida_side(tmp_path):
    path = tmp_path / "typed.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--url", "memory://", "--quick", "--repeat", "1",
         "--typed", "--json", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = {row["figure"]: row for row in json.loads(path.read_text(encoding="utf-8"))["rows"]}
    assert set(rows) == set(MEMORY_FIGURES) | set(TYPED_FIGURES)
    for name in TYPED_FIGURES:
        assert rows[name]["kombu"] is None and rows[name]["label"] in done.stdout
        if not name.endswith("cost_us"):  # a difference of two timings may be either sign
            assert rows[name]["tavrida"] > 0, name


def test_aio_scenario_is_opt_in_and_needs_rabbitmq():
    from bench.__main__ import choose_scenarios, parse_args
    from bench.scenarios import Sizes

    amqp_url = "amqp://guest:guest@localhost//"
    assert "aio" not in choose_scenarios("", amqp_url)
    assert choose_scenarios("aio", amqp_url) == ["aio"]
    with pytest.raises(SystemExit):
        choose_scenarios("aio", "redis://localhost:6379/0")
    with pytest.raises(SystemExit):
        choose_scenarios("aio", "memory://")
    args = parse_args(["--aio-calls", "500", "--aio-concurrency", "7"])
    assert (args.aio_calls, args.aio_concurrency) == (500, 7)
    assert (Sizes().aio_calls, Sizes().aio_concurrency) == (20000, 100)
    assert Sizes.quick().aio_calls < Sizes().aio_calls


def test_aio_concurrent_calls_keep_that_many_in_flight():
    """Scenario 8's client loop: every call made once, ``concurrency`` of them at once."""
    import asyncio

    from bench.aio_side import concurrent_calls

    made, in_flight, most = [], [0], [0]

    async def one(i):
        made.append(i)
        in_flight[0] += 1
        most[0] = max(most[0], in_flight[0])
        await asyncio.sleep(0)
        in_flight[0] -= 1
        return i

    result = asyncio.run(concurrent_calls(one, n=50, concurrency=8, warmup=3))
    assert sorted(made[3:]) == list(range(50)) and made[:3] == [0, 1, 2]
    assert most[0] == 8
    assert len(result["latencies"]) == 50 and result["elapsed"] > 0


def test_aio_concurrent_calls_report_a_wrong_answer():
    import asyncio

    from bench.aio_side import concurrent_calls
    from bench.common import BenchError

    async def one(i):
        return -1 if i == 5 else i

    with pytest.raises(BenchError, match="call 5 got -1"):
        asyncio.run(concurrent_calls(one, n=10, concurrency=3, warmup=0))


def test_aio_rows_ratio_tavrida_to_each_peer():
    from bench.report import build_aio_rows, format_aio_table

    def runs(*rates):
        return [{"calls_per_s": rate, "median_us": 1000.0, "p99_us": 4000.0,
                 "client_cpu_us": 200.0} for rate in rates]

    rows = build_aio_rows({"aio": {"tavrida": runs(900.0, 1000.0, 1100.0),
                                   "aio-pika": runs(500.0, 500.0, 550.0),
                                   "faststream": runs(100.0, 250.0, 200.0)}}, confirms=True)
    by = {row["figure"]: row for row in rows}
    assert set(by) == {"calls_per_s", "median_us", "p99_us", "client_cpu_us"}
    calls = by["calls_per_s"]
    assert (calls["tavrida"], calls["aio-pika"], calls["faststream"]) == (1000.0, 500.0, 200.0)
    assert calls["ratio_aio-pika"] == 2.0 and calls["ratio_faststream"] == 5.0
    assert calls["paired_aio-pika"] == [1.8, 2.0, 2.0]
    assert by["p99_us"]["ratio_faststream"] == 1.0
    table = format_aio_table(rows, markdown=True)
    assert len(table.splitlines()) == 2 + len(rows)
    assert "2.00x (1.80-2.00)" in table
    # A side that did not run (not installed): its column and ratio are empty.
    rows = build_aio_rows({"aio": {"tavrida": runs(900.0)}}, confirms=False)
    assert math.isnan(rows[0]["faststream"]) and math.isnan(rows[0]["ratio_faststream"])
    assert "-" in format_aio_table(rows)


def test_cpu_split_reads_proc_stat_lines():
    from bench.cpu_split import machine_times, process_cpu

    # A process name may hold spaces and parentheses: the fields follow the last ')'.
    stat = "42 (beam (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 30 0"
    assert process_cpu(stat, 100) == 3.0
    assert machine_times("cpu  100 0 50 800 10 0 40 0 0 0") == (800, 1000)
