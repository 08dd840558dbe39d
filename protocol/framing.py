"""Frames: a 4-byte big-endian length, then one msgpack map with string keys."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import msgpack

from protocol.errors import BadFrame, FrameTooLarge

DEFAULT_MAX_FRAME = 16 * 1024 * 1024
HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size
# msgpack's C unpacker refuses containers nested deeper than this; we document it as ours.
MAX_DEPTH = 1024


def encode_frame(message: Mapping[str, Any]) -> bytes:
    """One frame holding ``message``."""
    body: bytes = msgpack.packb(message, use_bin_type=True)
    return HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> dict[str, Any]:
    """The map in a frame body, or :class:`BadFrame` saying why it is not one."""
    try:
        value = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except msgpack.ExtraData:
        raise BadFrame("trailing bytes after the msgpack value") from None
    except msgpack.StackError:
        raise BadFrame(f"nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        # TypeError: a map key that cannot be hashed (a list or a map).
        raise BadFrame(f"not valid msgpack: {type(exc).__name__}") from None
    if not isinstance(value, dict):
        raise BadFrame(f"a frame must hold a map, not {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise BadFrame("map keys must be strings")
    return value


class FrameDecoder:
    """Splits a byte stream into frame bodies, never trusting a length above ``max_frame``.

    ``feed`` returns the complete bodies so far. A length above ``max_frame`` raises
    :class:`FrameTooLarge`; the stream cannot be resynchronised after that, so the
    caller must drop the connection.
    """

    __slots__ = ("_buffer", "max_frame", "_error")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._error: FrameTooLarge | None = None

    def feed(self, data: bytes) -> list[bytes]:
        """Complete frame bodies so far. Frames that arrived before an oversized length
        are returned first; the :class:`FrameTooLarge` is raised by the next call (feed
        ``b""`` to see it)."""
        if self._error is not None:
            raise self._error
        buf = self._buffer
        buf += data
        bodies: list[bytes] = []
        pos = 0
        end = len(buf)
        while end - pos >= HEADER_SIZE:
            (length,) = HEADER.unpack_from(buf, pos)
            if length > self.max_frame:
                self._error = FrameTooLarge(
                    f"frame of {length} bytes exceeds max_frame {self.max_frame}",
                    {"max_frame": self.max_frame},
                )
                del buf[:]
                if bodies:
                    return bodies
                raise self._error
            if end - pos - HEADER_SIZE < length:
                break
            start = pos + HEADER_SIZE
            bodies.append(bytes(buf[start : start + length]))
            pos = start + length
        if pos:
            del buf[:pos]
        return bodies

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buffer)
