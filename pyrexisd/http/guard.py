"""What every HTTP request passes before the app sees it (an ASGI middleware).

In order, each refusal an error of the contract (:mod:`pyrexisd.http.errors`):

1. **Rate**: a token bucket per client address (``--http-rate`` requests per second,
   bursts of twice that; all clients of a Unix socket share one) → 429 ``overloaded``
   with ``Retry-After``.
2. **Host** (loopback listeners without a token): the ``Host`` header must name the
   loopback (``localhost``, ``127.x.x.x``, ``[::1]``), so that a web page whose domain
   is made to resolve to 127.0.0.1 (DNS rebinding) cannot reach the API → 403.
3. **Origin**: a request that changes something (not GET or HEAD) and comes from a web
   page of another origin than the listener's own is refused (cross-site request
   forgery: CORS is off, so browsers already refuse to show other origins the answers,
   but a "simple" POST would still be sent) → 403.
4. **Token** (with ``--http-token-file``): ``Authorization: Bearer <token>``, compared in
   constant time, on every route but the dashboard's static files, the API description
   and ``/healthz`` (they hold no data) → 401 ``unauthorized``.
5. **Body**: at most ``--http-max-body`` bytes (refused from ``Content-Length`` before
   anything is read, or as soon as the bytes pass it) → 413 ``frame_too_large``; a body
   must be JSON → 422 ``invalid_request``.

It also counts each answer by method, route template and status for the metrics.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from protocol.errors import FrameTooLarge, InvalidRequest, Overloaded, Unauthorized, WireError
from pyrexisd.http.errors import UNAUTHENTICATED, error_response_parts
from pyrexisd.metrics import Metrics

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PUBLIC_PATHS = frozenset({"/", "/docs", "/openapi.json", "/healthz", "/favicon.ico"})
PUBLIC_PREFIX = "/static/"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
METHODS = frozenset({*SAFE_METHODS, "POST", "PUT", "PATCH", "DELETE"})  # label values; others are OTHER
MAX_CLIENTS = 10_000  # rate buckets kept; the least recently seen are forgotten first


class RateLimiter:
    """Token buckets per client key: ``rate`` tokens a second, at most ``burst`` saved."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = MAX_CLIENTS) -> None:  # fmt: skip
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> float:
        """0 when ``key`` may go on (a token is spent), else the seconds until it may."""
        now = self.clock()
        buckets = self._buckets
        tokens, last = buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        buckets[key] = (tokens, now)
        if len(buckets) > self.max_clients:
            buckets.popitem(last=False)
        return wait


@dataclass(frozen=True)
class GuardSettings:
    """The guard's share of the configuration."""

    token: bytes | None  # None: no token asked (a loopback or Unix listener)
    max_body: int
    rate: float | None  # requests/s per client; None: no limit
    check_host: bool  # a loopback TCP listener without a token: refuse foreign Host headers


def is_loopback_host(host: str) -> bool:
    """Whether a ``Host`` header (``name[:port]`` or ``[v6][:port]``) names the loopback."""
    if host.startswith("["):
        name = host[1:].partition("]")[0]
    else:
        name = host.rpartition(":")[0] if host.count(":") == 1 else host
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Guard:
    """The ASGI middleware in front of the app (see the module docstring)."""

    def __init__(self, app: ASGIApp, settings: GuardSettings, metrics: Metrics) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        rate = settings.rate
        self.limiter = RateLimiter(rate, 2 * rate) if rate is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await _answer(counted, *refusal)
                return
            receive_next = await self._read_body(scope, receive, counted)
            if receive_next is None:
                return
            await self.app(scope, receive_next, counted)
        except Exception:
            # A bug (the app has answered 500 internal already, when it could): logged, and
            # the connection serves on.
            log.exception("HTTP %s %s failed", scope["method"], scope["path"])
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            self.metrics.http_requests[(method, template, status)] += 1

    def _refusal(self, scope: Scope) -> tuple[int, dict[str, str], bytes] | None:
        settings = self.settings
        headers = _headers(scope)
        if self.limiter is not None:
            client = scope.get("client")
            wait = self.limiter.take(client[0] if client else "unix")
            if wait > 0:
                rate = self.limiter.rate
                return error_response_parts(Overloaded(
                    f"more than {rate:g} requests a second from this client",
                    {"limit": "http_rate", "value": rate, "retry_after": math.ceil(wait * 1000) / 1000},
                ))  # fmt: skip
        host = headers.get("host", "")
        if settings.check_host and not is_loopback_host(host):
            return error_response_parts(Unauthorized(f"this listener serves the loopback; Host {host!r} is not"))
        origin = headers.get("origin")
        if origin is not None and scope["method"] not in SAFE_METHODS and urlsplit(origin).netloc != host:
            return error_response_parts(Unauthorized(f"a request from the web page of {origin!r} may not change anything here"))
        if settings.token is not None and not _public(scope["path"]):
            given = headers.get("authorization", "")
            scheme, _, credential = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(credential.strip().encode(), settings.token):
                return error_response_parts(
                    Unauthorized("this listener needs Authorization: Bearer <token>"), UNAUTHENTICATED
                )
        return None

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """A body is read whole (it is small: ``max_body``) and replayed to the app;
        None when it was refused (and answered)."""
        if scope["method"] in SAFE_METHODS:
            return receive
        limit = self.settings.max_body
        headers = _headers(scope)
        declared = headers.get("content-length")
        too_large = FrameTooLarge(
            f"the request body exceeds {limit} bytes (--http-max-body)", {"limit": "http_max_body", "value": limit}
        )
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _answer(send, *error_response_parts(too_large))
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _answer(send, *error_response_parts(too_large))
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body:
            media = headers.get("content-type", "").partition(";")[0].strip().lower()
            if media != "application/json":
                error: WireError = InvalidRequest(
                    "the body must be JSON (Content-Type: application/json)",
                    {"errors": [{"loc": ["body"], "msg": "Content-Type must be application/json"}]},
                )
                await _answer(send, *error_response_parts(error))
                return None
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # the disconnect, when it comes

        return replay


def _public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIX)


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


async def _answer(send: Send, status: int, headers: dict[str, str], body: bytes) -> None:
    raw = [(k.encode(), v.encode()) for k, v in headers.items()]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
