"""Connections, framing, pipelining and per-connection backpressure. No SQLite here.

Each request runs as its own task, so a slow op never holds up the others on its
connection. A connection stops being read while it has ``max_inflight`` requests in
flight or while the peer is not reading our replies, so one client cannot make the daemon
buffer without bound.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

from protocol.errors import (
    BadFrame,
    FrameTooLarge,
    Internal,
    InvalidRequest,
    UnknownOp,
    WireError,
)
from protocol.framing import FrameDecoder, decode_body, encode_frame

log = logging.getLogger(__name__)

WRITE_HIGH_WATER = 4 * 1024 * 1024


class Stream(Protocol):
    """What a streaming handler uses to send events before its final frame."""

    closing: asyncio.Event  # set by the ``close`` op: end with the final frame now
    streaming: bool

    async def send(self, event: dict[str, Any]) -> None:
        """Send one event frame, waiting while the peer is not reading."""
        ...

    def send_nowait(self, event: dict[str, Any]) -> None:
        """Send one event frame without waiting."""
        ...

    def writable(self) -> bool:
        """Whether the peer is keeping up with what we send."""
        ...

    async def until_writable(self) -> None: ...

    def close_stream(self, stream_id: int) -> asyncio.Task[None] | None:
        """Ask stream ``stream_id`` of this connection to end; its task, or None."""
        ...


Handler = Callable[[dict[str, Any], Stream], Awaitable[Any]]


class _RequestStream:
    __slots__ = ("conn", "rid", "closing", "streaming")

    def __init__(self, conn: Connection, rid: int) -> None:
        self.conn = conn
        self.rid = rid
        self.closing = asyncio.Event()
        self.streaming = False  # set by handlers of streaming ops; ``close`` ends only those

    async def send(self, event: dict[str, Any]) -> None:
        self.conn.send({"id": self.rid, "event": event})
        await self.conn.writable()

    def send_nowait(self, event: dict[str, Any]) -> None:
        self.conn.send({"id": self.rid, "event": event})

    def writable(self) -> bool:
        return not self.conn._writing_paused

    async def until_writable(self) -> None:
        await self.conn.writable()

    def close_stream(self, stream_id: int) -> asyncio.Task[None] | None:
        target = self.conn.streams.get(stream_id)
        task = self.conn.inflight.get(stream_id)
        if target is None or task is None or target is self or not target.streaming:
            return None
        target.closing.set()
        return task


class Connection(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.decoder = FrameDecoder(server.max_frame)
        self.transport: asyncio.Transport | None = None
        self.inflight: dict[int, asyncio.Task[None]] = {}
        self.streams: dict[int, _RequestStream] = {}
        self._reading_paused = False
        self._writing_paused = False
        self._can_write: asyncio.Event = asyncio.Event()
        self._can_write.set()
        self.closed = False

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        self._can_write.set()
        for task in self.inflight.values():
            task.cancel()

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._can_write.clear()
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._can_write.set()
        self._update_reading()

    def data_received(self, data: bytes) -> None:
        try:
            bodies = self.decoder.feed(data)
            for body in bodies:
                self._request(body)
            if bodies:
                self.decoder.feed(b"")  # an oversized length after these frames shows now
        except FrameTooLarge as exc:
            log.warning("closing a connection: %s", exc.message)
            self.send({"id": None, "ok": False, "error": exc.to_wire()})
            self.close()

    # -- requests ---------------------------------------------------------------------
    def _request(self, body: bytes) -> None:
        try:
            message = decode_body(body)
        except BadFrame as exc:
            self.send({"id": None, "ok": False, "error": exc.to_wire()})
            return
        rid = message.get("id")
        if not isinstance(rid, int) or isinstance(rid, bool) or rid < 0:
            err = InvalidRequest(
                "a request needs an integer id >= 0",
                {"errors": [{"loc": ["id"], "msg": "an integer >= 0 is required"}]},
            )
            # Echo an integer id even when it is out of range, so the client can match it.
            echo = rid if isinstance(rid, int) and not isinstance(rid, bool) else None
            self.send({"id": echo, "ok": False, "error": err.to_wire()})
            return
        op = message.get("op")
        args = message.get("args", {})
        if args is None:
            args = {}
        if not isinstance(op, str):
            self._fail(rid, InvalidRequest("a request needs a string op", {"errors": [{"loc": ["op"], "msg": "a string is required"}]}))
            return
        if not isinstance(args, dict):
            self._fail(rid, InvalidRequest("args must be a map", {"errors": [{"loc": ["args"], "msg": "a map is required"}]}))
            return
        if rid in self.inflight:
            err = InvalidRequest(
                f"id {rid} is already in flight on this connection",
                {"errors": [{"loc": ["id"], "msg": "already in flight"}], "id": rid},
            )
            self.send({"id": None, "ok": False, "error": err.to_wire()})
            return
        handler = self.server.handlers.get(op)
        if handler is None:
            self._fail(rid, UnknownOp(f"unknown op {op!r}", {"op": op}))
            return
        stream = _RequestStream(self, rid)
        task = asyncio.ensure_future(self._run(rid, handler, args, stream))
        self.inflight[rid] = task
        self.streams[rid] = stream
        task.add_done_callback(functools.partial(self._done, rid))
        self._update_reading()

    async def _run(self, rid: int, handler: Handler, args: dict[str, Any], stream: _RequestStream) -> None:
        try:
            result = await handler(args, stream)
        except asyncio.CancelledError:
            self._forget(rid, stream)
            if not self.closed:
                self._fail(rid, Internal("the request was cancelled"))
            raise
        except WireError as exc:
            reply: dict[str, Any] = {"id": rid, "ok": False, "error": exc.to_wire()}
        except Exception as exc:
            log.exception("op failed")
            reply = {"id": rid, "ok": False, "error": Internal(f"internal error: {type(exc).__name__}").to_wire()}
        else:
            reply = {"id": rid, "ok": True, "result": result}
        # The id is free again once its final frame is sent: a client may reuse it at once.
        self._forget(rid, stream)
        self.send(reply)

    def _forget(self, rid: int, stream: _RequestStream) -> None:
        self.inflight.pop(rid, None)
        if self.streams.get(rid) is stream:
            del self.streams[rid]

    def _done(self, rid: int, task: asyncio.Task[None]) -> None:
        if self.inflight.get(rid) is task:
            del self.inflight[rid]
        self._update_reading()

    def _fail(self, rid: int | None, exc: WireError) -> None:
        self.send({"id": rid, "ok": False, "error": exc.to_wire()})

    # -- output -----------------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        """Write one frame; a reply that would exceed ``max_frame`` becomes an error."""
        if self.closed or self.transport is None:
            return
        try:
            frame = encode_frame(message)
        except (TypeError, ValueError, OverflowError) as exc:
            log.error("cannot encode a reply: %s", exc)
            frame = encode_frame({"id": message.get("id"), "ok": False, "error": Internal(f"cannot encode the reply: {exc}").to_wire()})
        if len(frame) - 4 > self.server.max_frame:
            frame = encode_frame(
                {"id": message.get("id"), "ok": False, "error": Internal("the reply would exceed max_frame").to_wire()}
            )
        self.transport.write(frame)

    async def writable(self) -> None:
        """Wait while the peer is not reading our frames."""
        if self._writing_paused and not self.closed:
            await self._can_write.wait()

    def _update_reading(self) -> None:
        if self.transport is None or self.closed:
            return
        should_pause = self._writing_paused or len(self.inflight) >= self.server.max_inflight
        if should_pause and not self._reading_paused:
            self.transport.pause_reading()
            self._reading_paused = True
        elif not should_pause and self._reading_paused:
            self.transport.resume_reading()
            self._reading_paused = False

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()


class Server:
    """Listens on a Unix socket and serves the ops in ``handlers``."""

    def __init__(self, handlers: dict[str, Handler], max_frame: int, max_inflight: int) -> None:
        self.handlers = handlers
        self.max_frame = max_frame
        self.max_inflight = max_inflight
        self.connections: set[Connection] = set()
        self._server: asyncio.AbstractServer | None = None
        self.path: str | None = None

    async def listen(self, path: str | None = None, sock: socket.socket | None = None) -> None:
        """Serve on ``sock`` (socket activation) or a new owner-only socket at ``path``."""
        loop = asyncio.get_running_loop()
        if sock is None:
            if path is None:
                raise ValueError("a path or a socket is needed")
            sock = bind_unix_socket(path)
            self.path = path
        self._server = await loop.create_unix_server(lambda: Connection(self), sock=sock)

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        """Close every connection (after the final frames have been written)."""
        self.stop_accepting()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            except TimeoutError:
                pass
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def bind_unix_socket(path: str, backlog: int = 512) -> socket.socket:
    """A listening Unix socket at ``path``, created owner-only (umask, not chmod after)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


__all__ = ["Connection", "Handler", "Server", "Stream", "bind_unix_socket"]
