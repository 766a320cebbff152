"""Length-prefixed messages on a pipe or a socket: what the fork server and a grade's shards speak.

A frame is a 4-byte big-endian length, then that many bytes; the codec (JSON, pickle) is the caller's.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

HEADER = struct.Struct("!I")


def frame(data: bytes) -> bytes:
    return HEADER.pack(len(data)) + data


def unframe(buffer: bytearray) -> Iterator[bytes]:
    """Every whole frame at the start of ``buffer``, taken out of it; a partial one stays for later."""
    while len(buffer) >= HEADER.size:
        (size,) = HEADER.unpack_from(buffer)
        if len(buffer) < HEADER.size + size:
            return
        data = bytes(buffer[HEADER.size : HEADER.size + size])
        del buffer[: HEADER.size + size]
        yield data
