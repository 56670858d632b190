"""examples/fastapi_app.py with FastAPI's test client; World runs on a thread of its own."""

from __future__ import annotations

import importlib.util
import pathlib
import sys
import threading

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

EXAMPLES = pathlib.Path(__file__).resolve().parents[3] / "examples"


def load(name):
    sys.path.insert(0, str(EXAMPLES))
    try:
        spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(EXAMPLES))


@pytest.fixture
def world(cluster):
    hello_world = load("hello_world")
    srv = hello_world.world_server(cluster.config)
    srv.start()
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    yield
    srv.stop()
    thread.join(10)


def test_the_endpoint_awaits_the_services_answer(cluster, world):
    app = load("fastapi_app").create_app(cluster.config)
    with TestClient(app) as http:
        ok = http.get("/world/hi")
        failed = http.get("/world/fail")
    assert ok.status_code == 200
    assert ok.json() == {"param": "world response"}
    assert failed.status_code == 502
    assert "world fails (param=fail)" in failed.json()["detail"]


def test_no_answer_is_a_gateway_timeout(cluster, broker):
    broker.spy("test_world_exchange")  # takes the request, never answers
    app = load("fastapi_app").create_app(cluster.config)
    with TestClient(app) as http:
        response = http.get("/world/hi")
    assert response.status_code == 504
