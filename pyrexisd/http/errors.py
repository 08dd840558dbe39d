"""The one table from the protocol's error codes to HTTP statuses, and the error body.

An HTTP error answers ``{"error": {"code", "message", "details"}}`` — the same map as a
failure frame's ``error`` — with the status of :data:`STATUS`. ``overloaded`` adds
``Retry-After`` (whole seconds, from ``details.retry_after``, else 1); a missing or wrong
token is ``unauthorized`` with 401 and ``WWW-Authenticate: Bearer``, while
``unauthorized`` from the daemon's rules (an action the caller may not take) is 403.
"""

from __future__ import annotations

import json
import math
from typing import Any

from protocol.errors import WireError

STATUS: dict[str, int] = {
    "bad_frame": 400,
    "invalid_request": 422,
    "unknown_task": 422,
    "unknown_op": 404,
    "not_found": 404,
    "conflict": 409,
    "invalid_state": 409,
    "unauthorized": 403,  # 401 when the request carries no valid token (see guard)
    "timeout": 408,
    "frame_too_large": 413,
    "overloaded": 429,
    "storage_error": 503,
    "shutting_down": 503,
    "internal": 500,
}
"""Every code of the contract, and the HTTP status it answers with."""

UNAUTHENTICATED = 401


def status_of(code: str) -> int:
    """The HTTP status of an error code (500 for a code this table does not know)."""
    return STATUS.get(code, 500)


def dumps(value: Any) -> bytes:
    """JSON as the API writes it: compact, UTF-8; msgpack bytes become base64 strings."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_default).encode()


def _default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        import base64

        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def error_response_parts(exc: WireError, status: int | None = None) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the HTTP answer to ``exc``."""
    code = exc.code
    status = status if status is not None else status_of(code)
    headers = {"content-type": "application/json"}
    if code == "overloaded":
        after = exc.details.get("retry_after") if isinstance(exc.details, dict) else None
        headers["retry-after"] = str(max(1, math.ceil(after))) if isinstance(after, int | float) else "1"
    if status == UNAUTHENTICATED:
        headers["www-authenticate"] = 'Bearer realm="pyrexis"'
    return status, headers, dumps({"error": exc.to_wire()})
