"""Benchmarks of tavrida 2 against raw kombu doing the same work.

Run ``python -m bench --url amqp://guest:guest@127.0.0.1//`` (see
``python -m bench --help`` and ``docs/performance.md``). Modules:

* :mod:`bench.common` -- child processes linked by pipes, names, /proc, statistics;
* :mod:`bench.tavrida_side` -- tavrida services and clients of every scenario;
* :mod:`bench.baseline_kombu` -- the raw kombu equivalents;
* :mod:`bench.scenarios` -- one repetition of each scenario, for either side;
* :mod:`bench.runner` -- repetitions (sides alternating), the run's description;
* :mod:`bench.report` -- figures, targets, medians, the table and the JSON;
* :mod:`bench.profiling` -- cProfile of the client and service sides;
* :mod:`bench.peers` -- nameko and FastStream doing scenario 1 (``--peers``), each in
  subprocesses of its own interpreter.

This package imports nothing heavy itself, so spawned processes only load
the side they run (the RSS scenario compares a tavrida service with a
kombu consumer that never imported tavrida).
"""
