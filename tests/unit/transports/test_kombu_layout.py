"""The kombu transport's layout and switch: private upstream names only in ``compat/``.

Read from the source (AST), so a new use of an upstream private name outside
:mod:`tavrida.transports.kombu.compat` fails here before it ships.
"""

from __future__ import annotations

import ast
import pathlib
import re
from typing import Iterator, List, Set, Tuple

import pytest

from tavrida.config import ConnectionConfig
from tavrida.transports.kombu import KombuTransport
from tavrida.transports.kombu.compat import ENVIRONMENT_VARIABLE, REGISTRY, Compat
from tavrida.transports.kombu.compat.pyamqp import AMQPTransport, PlainAMQPTransport

ROOT = pathlib.Path(__file__).resolve().parents[3]
PACKAGE = ROOT / "tavrida"
COMPAT = PACKAGE / "transports" / "kombu" / "compat"
CANARIES = ROOT / "tests" / "unit" / "transports" / "test_kombu_compat.py"


def modules(outside_compat: bool) -> Iterator[Tuple[pathlib.Path, ast.AST]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if (COMPAT in path.parents) is not outside_compat:
            yield path, ast.parse(path.read_text(encoding="utf-8"))


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def own_names() -> Set[str]:
    """Every name tavrida itself defines outside compat/ (functions, classes, attributes, ...)."""
    names: Set[str] = set()
    for _, tree in modules(outside_compat=True):
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names.add(node.value)  # __slots__ entries, getattr(self, "_x")
    return names


def registered_names() -> Set[str]:
    return {word for row in REGISTRY for word in re.findall(r"\b_[A-Za-z_]+\b", row.name)}


#: Private names of the standard library tavrida may use (documented there).
STDLIB = {"_getframe", "_replace", "_asdict", "_fields", "_make"}


def test_no_upstream_private_name_is_used_outside_compat() -> None:
    own = own_names() | STDLIB
    registered = registered_names()
    found: List[str] = []
    for path, tree in modules(outside_compat=True):
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and is_private(node.attr):
                receiver = node.value.id if isinstance(node.value, ast.Name) else ""
                if node.attr not in own or (node.attr in registered
                                            and receiver not in ("self", "cls")):
                    found.append(f"{where}:{node.lineno}: .{node.attr}")
            elif isinstance(node, ast.ImportFrom) and not (node.module or "").startswith(
                    "tavrida") and node.level == 0:
                found += [f"{where}:{node.lineno}: import {alias.name}"
                          for alias in node.names if is_private(alias.name)]
            elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and node.value in registered):
                found.append(f"{where}:{node.lineno}: {node.value!r}")
    assert found == []


def test_every_private_name_compat_uses_is_registered() -> None:
    registered = registered_names()
    own: Set[str] = set()
    uses: List[Tuple[str, str]] = []
    for path, tree in modules(outside_compat=False):
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and is_private(node.name):
                own.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                own.add(node.id)
            elif isinstance(node, ast.Attribute) and is_private(node.attr):
                receiver = node.value.id if isinstance(node.value, ast.Name) else ""
                if receiver not in ("self", "cls", "fetch"):
                    uses.append((path.name, node.attr))
    unregistered = sorted({f"{module}: {name}" for module, name in uses
                           if name not in registered and name not in own})
    assert unregistered == []


@pytest.mark.parametrize("row", REGISTRY, ids=lambda row: row.name)
def test_every_registered_name_has_its_canary_and_module(row) -> None:
    canaries = CANARIES.read_text(encoding="utf-8")
    assert f"def {row.canary}(" in canaries
    assert (COMPAT / f"{row.module}.py").exists()
    assert row.kind in ("speed", "fix") and row.why and row.fallback


def test_the_switch_defaults_to_the_private_names() -> None:
    assert Compat().private and not Compat.public().private


def test_no_kombu_module_is_over_400_lines() -> None:
    kombu = PACKAGE / "transports" / "kombu"
    long = {path.name for path in kombu.rglob("*.py")
            if len(path.read_text(encoding="utf-8").splitlines()) > 400}
    assert long == set()


def test_public_mode_connects_with_plain_py_amqp_and_holds_no_redis_delays(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENVIRONMENT_VARIABLE, raising=False)
    amqp_url = ConnectionConfig.from_url("amqp://guest:guest@127.0.0.1:25698//")
    redis_url = ConnectionConfig.from_url("redis://127.0.0.1:25699/0")
    private, public = KombuTransport(amqp_url), KombuTransport(amqp_url, compat=Compat.public())
    assert private._connector.params("consume")["transport"] is AMQPTransport
    assert public._connector.params("consume")["transport"] is PlainAMQPTransport
    assert KombuTransport(redis_url).holds_delays is True
    assert KombuTransport(redis_url, compat=Compat.public()).holds_delays is False


def test_the_environment_variable_is_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from tavrida.transports.kombu import compat

    compat._from_environment.cache_clear()
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, "1")
    try:
        assert not Compat.from_environment().private
        monkeypatch.setenv(ENVIRONMENT_VARIABLE, "0")
        assert not Compat.from_environment().private  # read once per process
    finally:
        compat._from_environment.cache_clear()


def test_a_blocking_rabbitmq_service_loads_neither_redis_nor_asyncio() -> None:
    """redis-py (and what it pulls in) is imported for Redis URLs only, asyncio with the
    first ``async def`` handler: 10 MiB and 1.3 MiB of a RabbitMQ service's memory
    (bench scenario 5, service peak RSS)."""
    import subprocess
    import sys

    code = ("import sys, tavrida.server, tavrida.client\n"
            "from tavrida.config import ConnectionConfig\n"
            "from tavrida.transports.kombu import KombuTransport\n"
            "KombuTransport(ConnectionConfig.from_url('amqp://guest:guest@127.0.0.1:25698//'))\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('redis', 'asyncio')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]"
