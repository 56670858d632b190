"""The header names live in tavrida.headers; the old names stay importable."""

import pathlib

from tavrida import headers, messages, retries, server
from tavrida.transports import base

TAVRIDA = pathlib.Path(headers.__file__).parent


def test_no_module_spells_a_tavrida_header_itself():
    # (the kombu transport is being restructured elsewhere; it moves to these names then)
    spelled = [str(path.relative_to(TAVRIDA)) for path in TAVRIDA.rglob("*.py")
               if path.name != "headers.py" and "kombu" not in path.parts
               and '"x-tavrida-' in path.read_text()]
    assert spelled == []


def test_the_documented_old_names_are_the_same_headers():
    assert messages.REPLY_EXCHANGE_HEADER == headers.REPLY_EXCHANGE == "x-tavrida-reply-exchange"
    assert messages.EXPIRES_AT_HEADER == headers.EXPIRES_AT == "x-tavrida-expires-at"
    assert messages.TAVRIDA_HEADERS == headers.TAVRIDA_1
    assert retries.ATTEMPTS_HEADER == headers.ATTEMPTS == "x-tavrida-attempts"
    assert base.DEAD_LETTER_REASON_HEADER == headers.DEAD_LETTER_REASON == "x-tavrida-dead-reason"
    assert base.DEAD_LETTER_QUEUE_HEADER == "x-tavrida-original-queue"
    assert base.DEAD_LETTER_EXCHANGE_HEADER == "x-tavrida-original-exchange"
    assert base.DEAD_LETTER_ROUTING_KEY_HEADER == "x-tavrida-original-routing-key"
    assert server.DEAD_LETTER_DROPPED_HEADER == headers.DEAD_LETTER_DROPPED


def test_tavridas_own_headers_are_told_from_the_users():
    assert headers.is_tavridas("correlation_id")
    assert headers.is_tavridas("x-tavrida-attempts")
    assert not headers.is_tavridas("x-user-thing")
