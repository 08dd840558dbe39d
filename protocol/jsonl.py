"""The JSONL line format PYREXIS reads and writes: job specs in, job records out, items of
pipeline inputs and outputs.

One JSON value per line, UTF-8, ended by ``\\n`` (or ``\\r\\n``); a line holding only
whitespace is skipped but still counted, so line numbers are what an editor shows.
msgpack ``bin`` values, which JSON has no type for, are written as ``{"$base64": "..."}``
and read back as bytes. Nothing here does I/O: callers hand lines in and take text out,
so a file of a million lines is read one line at a time.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Iterator
from typing import Any

from protocol.errors import PyrexisError

BASE64_KEY = "$base64"


class JsonlError(PyrexisError):
    """A line that is not one JSON value (or not valid UTF-8); ``line`` is its number."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.reason = message


def _default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {BASE64_KEY: base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return repr(value)


def dumps(value: Any) -> str:
    """``value`` as one line of JSON, without its line ending."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_default)


def _bytes_back(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and isinstance(obj.get(BASE64_KEY), str):
        try:
            return base64.b64decode(obj[BASE64_KEY], validate=True)
        except (binascii.Error, ValueError):
            return obj
    return obj


def loads(text: str, line: int = 1) -> Any:
    """The value of one line (``JsonlError`` naming ``line`` when it is not JSON)."""
    try:
        return json.loads(text, object_hook=_bytes_back)
    except json.JSONDecodeError as exc:
        raise JsonlError(line, f"not valid JSON: {exc.msg} (column {exc.colno})") from None
    except RecursionError:
        raise JsonlError(line, "nested too deeply") from None


def read(lines: Iterable[str | bytes], first: int = 1) -> Iterator[tuple[int, Any, int]]:
    """``(line number, value, bytes of the line)`` of each line that is not blank."""
    number = first - 1
    for raw in lines:
        number += 1
        if isinstance(raw, bytes):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise JsonlError(number, f"not UTF-8 (byte {exc.start + 1})") from None
            size = len(raw)
        else:
            text = raw
            size = len(raw.encode("utf-8", "surrogatepass"))
        if not text.strip():
            continue
        yield number, loads(text, number), size
