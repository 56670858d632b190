"""Topic matching as RabbitMQ does it, shared by the memory and kombu transports.

``*`` is exactly one word, ``#`` zero or more; words are split on ``.``.
The memory transport routes with it, and the kombu adapter installs it on
kombu's virtual transports (Redis, ``kombu+memory://``), whose own ``#``
needs at least one word.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable

__all__ = ["is_wildcard", "topic_matcher", "topic_matches"]


def _match_everything(routing_key: str) -> bool:
    return True


@functools.lru_cache(maxsize=4096)
def topic_matcher(pattern: str) -> Callable[[str], bool]:
    """Compile a binding key into a fast predicate on routing keys.

    Keys are split into words on ``.`` exactly as RabbitMQ does: ``""`` has
    no words, ``"a."`` has the words ``a`` and ``""``. The regex runs on
    ``"." + key`` so that every word, empty ones too, is ``\\.[^.]*``.
    """
    words: list[str] = []
    for word in pattern.split(".") if pattern else ():
        if not (word == "#" and words and words[-1] == "#"):
            words.append(word)
    if words == ["#"]:
        return _match_everything
    if "#" not in words and "*" not in words:
        return functools.partial(operator.eq, pattern)
    parts = []
    for word in words:
        if word == "#":
            parts.append(r"(?:\.[^.]*)*")
        elif word == "*":
            parts.append(r"\.[^.]*")
        else:
            parts.append(r"\." + re.escape(word))
    fullmatch = re.compile("".join(parts), re.DOTALL).fullmatch

    def matches(routing_key: str) -> bool:
        # A pattern with a word other than "#" needs at least one word.
        return bool(routing_key) and fullmatch("." + routing_key) is not None

    return matches


def topic_matches(pattern: str, routing_key: str) -> bool:
    """True when topic binding key ``pattern`` matches ``routing_key``."""
    return topic_matcher(pattern)(routing_key)


def is_wildcard(pattern: str) -> bool:
    return any(word in ("*", "#") for word in pattern.split("."))
