"""A streaming op as Server-Sent Events.

The socket's streaming handlers (``logs``, ``watch``, ``wait`` with events) run unchanged:
they are handed an :class:`SseStream` instead of a connection's stream. Each event they
send becomes one SSE message named by its ``kind`` (``state``, ``progress``, ``log``,
``output``), its data the event as JSON; ``log`` messages of a ``logs`` stream carry the
line's ``seq`` as their ``id``, so a client that reconnects with ``Last-Event-ID`` resumes
after it. The stream ends with one ``end`` message whose data is the socket's final frame
in JSON: ``{"ok": true, "result": …}`` or ``{"ok": false, "error": {…}}``.

Backpressure is the socket's: the stream holds at most :data:`HIGH_WATER` events not yet
written to the client; past that the handler stops reading its subscription, whose own
bounded buffer then ends the stream ``overloaded`` if the client still does not read.
A client that goes away ends the handler (its subscription is dropped at once). A
comment line every :data:`HEARTBEAT` seconds keeps idle streams open through proxies
and shows a dead client.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from protocol.errors import Internal, Overloaded, WireError
from pyrexisd.access import Caller
from pyrexisd.http.errors import dumps
from pyrexisd.metrics import Metrics
from pyrexisd.server import Handler

log = logging.getLogger(__name__)

HIGH_WATER = 256  # events taken from the subscription but not yet written to the client
HEARTBEAT = 15.0  # seconds of silence before a keep-alive comment


class StreamSlots:
    """Server-Sent Events streams open at once, all clients together (``--http-max-streams``)."""

    def __init__(self, limit: int, metrics: Metrics) -> None:
        self.limit = limit
        self.metrics = metrics

    def acquire(self) -> None:
        if self.metrics.http_streams >= self.limit:
            raise Overloaded(
                f"{self.limit} event streams are open already (--http-max-streams)",
                {"limit": "http_streams", "value": self.limit, "retry_after": 5},
            )
        self.metrics.http_streams += 1

    def release(self) -> None:
        self.metrics.http_streams -= 1


class SseStream:
    """The :class:`~pyrexisd.server.Stream` a handler writes to; the response reads it."""

    def __init__(self, resume_ids: bool = False) -> None:
        self.closing = asyncio.Event()  # the client went away
        self.streaming = False
        self.resume_ids = resume_ids  # log events carry their seq as the message id
        self.pending: deque[dict[str, Any]] = deque()
        self._room = asyncio.Event()
        self._room.set()
        self._waiter: asyncio.Future[None] | None = None

    # -- what handlers call -------------------------------------------------------------
    def begin_stream(self) -> None:
        self.streaming = True  # the slot was taken before the response began

    def send_nowait(self, event: dict[str, Any]) -> None:
        self.pending.append(event)
        if len(self.pending) >= HIGH_WATER:
            self._room.clear()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def send(self, event: dict[str, Any]) -> None:
        self.send_nowait(event)
        await self.until_writable()

    def writable(self) -> bool:
        return len(self.pending) < HIGH_WATER

    async def until_writable(self) -> None:
        while not self.writable() and not self.closing.is_set():
            await self._room.wait()

    def close_stream(self, stream_id: int) -> asyncio.Task[None] | None:
        return None  # one stream per request: nothing else to close

    # -- what the response calls --------------------------------------------------------
    def take(self) -> list[dict[str, Any]]:
        events = list(self.pending)
        self.pending.clear()
        self._room.set()
        return events

    def arrival(self) -> asyncio.Future[None]:
        """Resolves when the handler sends something."""
        self._waiter = asyncio.get_running_loop().create_future()
        if self.pending:
            self._waiter.set_result(None)
        return self._waiter

    def message(self, event: dict[str, Any]) -> bytes:
        head = f"event: {event.get('kind', 'message')}\n"
        if self.resume_ids and event.get("kind") == "log":
            head += f"id: {event['seq']}\n"
        return head.encode() + b"data: " + dumps(event) + b"\n\n"


def end_message(final: dict[str, Any]) -> bytes:
    return b"event: end\ndata: " + dumps(final) + b"\n\n"


async def sse_body(
    handler: Handler, args: dict[str, Any], stream: SseStream, caller: Caller, release: Callable[[], None]
) -> AsyncIterator[bytes]:
    """The response body of a streaming op: its events, then ``end``. Calls ``release``
    (the route's stream slot) however the stream ends."""
    task = asyncio.ensure_future(handler(args, stream, caller))
    try:
        while True:
            for event in stream.take():
                yield stream.message(event)
            if task.done():
                break
            arrival = stream.arrival()
            done, _ = await asyncio.wait({task, arrival}, timeout=HEARTBEAT, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                yield b": keep-alive\n\n"
        for event in stream.take():
            yield stream.message(event)
        try:
            final: dict[str, Any] = {"ok": True, "result": task.result()}
        except WireError as exc:
            final = {"ok": False, "error": exc.to_wire()}
        except Exception as exc:  # a bug: the stream still ends with a frame, as on the socket
            log.exception("a stream's handler failed")
            final = {"ok": False, "error": Internal(f"internal error: {type(exc).__name__}").to_wire()}
        yield end_message(final)
    finally:
        stream.closing.set()
        if not task.done():
            task.cancel()
        release()
