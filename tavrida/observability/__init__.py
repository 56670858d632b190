"""Observability: access log, JSON logs, Prometheus metrics, OpenTelemetry traces, health.

All off unless configured (``[logging]``, ``[metrics]``, ``[tracing]`` and
``[health]`` in a service config, or hooks given to ``Server(hooks=...)``).
Metrics need the ``metrics`` extra and traces the ``otel`` extra; tavrida
imports without them. See ``docs/observability.rst``.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from tavrida.observability.access import AccessLog
from tavrida.observability.health import HealthCheck, HealthFile
from tavrida.observability.hooks import HookList, MessageRecord, ServerHook
from tavrida.observability.http import StatusServer


def build_hooks(access: bool = False, metrics_port: Optional[int] = None,
                metrics_host: str = "0.0.0.0", tracing: bool = False,
                health_file: Optional[str] = None, health_interval: float = 5.0,
                health_port: Optional[int] = None) -> List[ServerHook]:
    """The hooks a service config asks for (an empty list: nothing is on).

    Metrics and health on the same port share one HTTP server.
    """
    hooks: List[ServerHook] = []
    servers: Dict[Tuple[str, int], StatusServer] = {}

    def status(port: int) -> StatusServer:
        key = (metrics_host, port)
        if key not in servers:
            servers[key] = StatusServer(port, metrics_host)
        return servers[key]

    if tracing:
        from tavrida.observability.tracing import Tracing

        hooks.append(Tracing())
    if metrics_port is not None:
        from tavrida.observability.metrics import Metrics

        hooks.append(Metrics(status=status(metrics_port)))
    if access:
        hooks.append(AccessLog())
    if health_file:
        hooks.append(HealthFile(health_file, health_interval))
    if health_port is not None:
        hooks.append(HealthCheck(status(health_port), stale_after=max(3 * health_interval,
                                                                      5.0)))
    return hooks


__all__ = ["AccessLog", "HealthCheck", "HealthFile", "HookList", "MessageRecord",
           "ServerHook", "StatusServer", "build_hooks"]
