"""AMQP frames as bytes on a socket, and a socket that records what each ``recv`` asked."""

from __future__ import annotations

import socket
import struct
from typing import List, Tuple

Frame = Tuple[int, int, bytes]


def wire(*frames: Frame) -> bytes:
    """Frames as they come on the socket."""
    return b"".join(struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"
                    for kind, channel, payload in frames)


class RecordingSocket:
    """A socket whose recv records the sizes asked (and fileno, for a poll)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.asked: List[int] = []

    def recv(self, size: int, *flags: int) -> bytes:
        self.asked.append(size)
        return self.sock.recv(size, *flags)

    def fileno(self) -> int:
        return self.sock.fileno()
