"""A service for tests/integration/test_cli_e2e.py, run by ``tavrida run CONFIG``.

The config file names ``svc_cli:Calc`` and chooses the queue and exchanges,
so each test run has names of its own. ``calc`` answers ``add``, fails in
``fail``, and makes its casts and the notifications it hears visible by
publishing notifications of its own (``local_publisher.calc``).
"""

from __future__ import annotations

from tavrida import dispatcher, service


class CalcFailure(Exception):
    code = 7


@dispatcher.rpc_service("calc")
class Calc(service.ServiceController):

    @dispatcher.rpc_method(service="calc", method="add")
    def add(self, request, proxy, a, b):
        return {"sum": a + b}

    @dispatcher.rpc_method(service="calc", method="fail")
    def fail(self, request, proxy, reason):
        raise CalcFailure(reason)

    @dispatcher.rpc_method(service="calc", method="note")
    def note(self, request, proxy, text):
        proxy.publish(noted=text)

    @dispatcher.subscription_method(service="ticker", method="tick")
    def on_tick(self, notification, proxy, n):
        proxy.publish(tick=n)
