"""Hostile input and secrets.

* Generated messages (hypothesis) and fixed nasty ones, published byte for
  byte: every one is handled, answered with an Error or dead-lettered with
  its reason; count in equals count out, the service keeps answering and no
  pickle is ever loaded.
* With DEBUG logging on, a run (with cuts, errors, a wrong password) logs no
  password, URL credential or authorization header value.
"""

from __future__ import annotations

import pytest

from soak import hostile, secrets

EXAMPLES = 500


def test_hostile_input_is_handled_answered_or_dead_lettered(amqp_url, report) -> None:
    report(hostile.hostile(amqp_url, EXAMPLES))


@pytest.mark.parametrize("broker", ["amqp", "redis"])
def test_no_secret_in_debug_logs(request, broker, report) -> None:
    url = request.getfixturevalue(f"{broker}_url")
    result = secrets.secrets(url)
    if result.figures.get("skipped"):
        pytest.skip(result.figures["skipped"])
    report(result)
