"""Frames: a 4-byte big-endian length, then one msgpack map with string keys.

A body is checked before it is unpacked (:func:`check_body`): one walk over its bytes
that builds no object. msgpack's unpacker allocates a container's slots from the count
its header *declares*, before the elements arrive, so a few bytes declaring a huge array
or map, or a deep stack of them, would make it allocate far more than the frame holds (a
"msgpack bomb"). The walk refuses a count larger than the bytes left in the body, a
string or binary longer than them, and nesting deeper than the reader's limit; only a
body that passes is unpacked, and then every slot it allocates has an element behind it.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from typing import Any

import msgpack

from protocol.errors import BadFrame, FrameTooLarge

DEFAULT_MAX_FRAME = 16 * 1024 * 1024
HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size
# The deepest nesting any reader of ours accepts (msgpack's C unpacker stops at 1024). A
# daemon reading its clients uses a much smaller limit (DEFAULT_MAX_DEPTH, --max-depth);
# clients reading the daemon, which they trust, and the worker channel use this one.
MAX_DEPTH = 1000
DEFAULT_MAX_DEPTH = 100  # what pyrexisd accepts from a client unless told otherwise

# What each first byte of a msgpack value is (see the msgpack spec's format table):
_SCALAR = 0  # the value is this one byte (fixints, nil, true, false)
_FIXED = 1  # ``n`` more bytes follow (numbers, fixstr)
_SIZED = 2  # an ``n``-byte length, then that many bytes (str, bin)
_EXT = 3  # an ``n``-byte length, a type byte, then that many bytes
_FIXARRAY = 4  # an array of ``n`` elements
_FIXMAP = 5  # a map of ``n`` pairs
_ARRAY = 6  # an ``n``-byte element count, then the elements
_MAP = 7  # an ``n``-byte pair count, then the pairs
_NEVER = 8  # 0xc1: never used


def _format_table() -> tuple[tuple[int, int], ...]:
    table: list[tuple[int, int]] = []
    sized = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}
    ext = {0xC7: 1, 0xC8: 2, 0xC9: 4}
    fixed = {
        0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8, 0xD0: 1, 0xD1: 2, 0xD2: 4,
        0xD3: 8, 0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17,
    }  # fmt: skip
    for b in range(256):
        if b <= 0x7F or b >= 0xE0 or b in (0xC0, 0xC2, 0xC3):
            table.append((_SCALAR, 0))
        elif b <= 0x8F:
            table.append((_FIXMAP, b & 0x0F))
        elif b <= 0x9F:
            table.append((_FIXARRAY, b & 0x0F))
        elif b <= 0xBF:
            table.append((_FIXED, b & 0x1F))
        elif b in sized:
            table.append((_SIZED, sized[b]))
        elif b in ext:
            table.append((_EXT, ext[b]))
        elif b in fixed:
            table.append((_FIXED, fixed[b]))
        elif b in (0xDC, 0xDD):
            table.append((_ARRAY, 2 if b == 0xDC else 4))
        elif b in (0xDE, 0xDF):
            table.append((_MAP, 2 if b == 0xDE else 4))
        else:
            table.append((_NEVER, 0))
    return tuple(table)


_FORMATS = _format_table()
# A run of one-byte values (an array of small ints, say) is stepped over in one regex
# match, in C, instead of one loop turn per byte.
_SCALAR_RUN = re.compile(rb"[\x00-\x7f\xc0\xc2\xc3\xe0-\xff]+")


def check_body(body: bytes | bytearray | memoryview, max_depth: int = MAX_DEPTH) -> None:
    """Refuse (:class:`BadFrame`) a body that is not exactly one complete msgpack value
    nested at most ``max_depth`` containers deep, without building any object.

    Every container's declared count and every string's declared length is checked
    against the bytes that are really left, so what :func:`decode_body` allocates next is
    bounded by the body's own size. The top-level value counts as level 1.
    """
    size = len(body)
    formats = _FORMATS
    pos = 0
    todo = 1  # values still to read in the innermost open container (or at the top)
    stack: list[int] = []  # the ``todo`` of each enclosing container
    while True:
        if not todo:
            if not stack:
                break
            todo = stack.pop()
            continue
        if pos >= size:
            raise BadFrame("truncated msgpack value")
        kind, n = formats[body[pos]]
        if kind == _SCALAR:
            if todo > 4:
                match = _SCALAR_RUN.match(body, pos)
                step = min(match.end() - pos, todo) if match is not None else 1
            else:
                step = 1
            pos += step
            todo -= step
            continue
        todo -= 1
        pos += 1
        if kind == _FIXED:
            pos += n
            continue
        if kind == _SIZED or kind == _EXT:
            if pos + n > size:
                raise BadFrame("truncated msgpack value")
            length = int.from_bytes(body[pos : pos + n], "big")
            pos += n + length + (kind == _EXT)
            if pos > size:
                raise BadFrame(f"a string of {length} bytes does not fit in the frame")
            continue
        if kind == _FIXARRAY or kind == _FIXMAP:
            count = n
        elif kind == _ARRAY or kind == _MAP:
            if pos + n > size:
                raise BadFrame("truncated msgpack value")
            count = int.from_bytes(body[pos : pos + n], "big")
            pos += n
        else:
            raise BadFrame("not valid msgpack: reserved byte 0xc1")
        if kind == _FIXMAP or kind == _MAP:
            count *= 2  # a key and a value per entry
        if count > size - pos:  # every element takes at least one byte
            raise BadFrame(f"a container declares {count} elements; the frame holds fewer")
        if len(stack) >= max_depth:  # this container would be level len(stack) + 1
            raise BadFrame(f"nested deeper than {max_depth} levels")
        stack.append(todo)
        todo = count
    if pos != size:
        raise BadFrame("trailing bytes after the msgpack value" if pos < size else "truncated msgpack value")


def encode_frame(message: Mapping[str, Any]) -> bytes:
    """One frame holding ``message``."""
    body: bytes = msgpack.packb(message, use_bin_type=True)
    return HEADER.pack(len(body)) + body


def decode_body(body: bytes, max_depth: int | None = MAX_DEPTH) -> dict[str, Any]:
    """The map in a frame body, or :class:`BadFrame` saying why it is not one.

    The body is checked first (:func:`check_body`): nothing is unpacked from a body that
    is truncated, declares more than it holds, or nests deeper than ``max_depth``.
    ``max_depth=None`` skips the walk, for a peer the reader started itself (the daemon's
    worker processes): msgpack's own checks still apply.
    """
    # A body no longer than the depth limit cannot nest deeper, and msgpack already caps a
    # declared count at the body's length: what a walk would refuse costs at most a few
    # tens of KiB there. Small requests, the common ones, skip the walk.
    if max_depth is not None and len(body) > max_depth:
        check_body(body, max_depth)
    try:
        value = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except msgpack.ExtraData:
        raise BadFrame("trailing bytes after the msgpack value") from None
    except msgpack.StackError:
        raise BadFrame(f"nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        # TypeError: a map key that cannot be hashed (a list or a map); ValueError: text
        # that is not UTF-8. Whatever the walk let through is refused the same way.
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
