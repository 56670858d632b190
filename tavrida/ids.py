"""Ids: message, request and correlation ids, random and never repeated.

Ids come from the operating system's generator (os.urandom), never from the
global ``random`` module: user code seeds that one (``random.seed(1)``), and
two processes seeded alike would send the same ids (answers matched to the
wrong caller, distinct messages dropped as duplicates). They are read 64 ids
at a time: os.urandom lets other threads run while it reads, so one read per
id handed the interpreter to a waiting thread at every message. The child of a
fork drops what its parent read ahead (os.register_at_fork), so it never
repeats the parent's ids.
"""

from __future__ import annotations

import collections
import os

_urandom = os.urandom
#: Ids read from the operating system at a time.
_IDS_PER_READ = 64
#: Random 16-byte blocks read ahead; popleft() hands each to one thread only.
_random_blocks: collections.deque[bytes] = collections.deque()
os.register_at_fork(after_in_child=_random_blocks.clear)
# The uuid4 variant digit (10xx in binary) for each hex digit of random bits.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def _random16() -> bytes:
    """16 random bytes from the operating system's generator, never handed out twice."""
    try:
        return _random_blocks.popleft()
    except IndexError:
        block = _urandom(16 * _IDS_PER_READ)
        _random_blocks.extend([block[i:i + 16] for i in range(16, len(block), 16)])
        return block[:16]


def new_id() -> str:
    """A fresh message or request id: 32 lowercase hex characters (128 random bits)."""
    return _random16().hex()


def new_correlation_id() -> str:
    """A fresh correlation id, spelled as tavrida 1.0 does (36 characters, uuid4 form)."""
    h = _random16().hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"
