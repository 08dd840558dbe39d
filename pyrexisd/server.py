"""Connections, framing, pipelining and per-connection backpressure. No SQLite here.

Each request runs as its own task, so a slow op never holds up the others on its
connection. A connection stops being read while it has ``max_inflight`` requests in
flight or while the peer is not reading our replies, so one client cannot make the daemon
buffer without bound.

Every connection is identified when it is accepted (``SO_PEERCRED``, see
:mod:`pyrexisd.access`): a peer the policy refuses gets one ``unauthorized`` frame and is
closed; the others carry their :class:`~pyrexisd.access.Caller` into every request.
What one peer can make the daemon hold is bounded before it is spent (:class:`Limits`):
connections (the next one is told ``overloaded`` and closed), frame size (refused from
the length prefix), nesting and declared sizes (refused before unpacking), unfinished
frames (all connections together hold at most ``max_buffered`` bytes of them; past that,
the connection that adds more is not read until others finish), the time a frame may
take once its first byte came (slow senders are closed), requests in flight and open
streams per connection, and connections idle longer than ``idle_timeout``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from protocol.errors import (
    BadFrame,
    FrameTooLarge,
    Internal,
    InvalidRequest,
    Overloaded,
    Timeout,
    Unauthorized,
    UnknownOp,
    WireError,
)
from protocol.framing import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_FRAME,
    FrameDecoder,
    decode_body,
    encode_frame,
)
from pyrexisd.access import AccessPolicy, Caller, peer_of

log = logging.getLogger(__name__)

WRITE_HIGH_WATER = 4 * 1024 * 1024
MIN_BACKLOG = 512  # connections the kernel queues while the loop is busy, at least


@dataclass(frozen=True, slots=True)
class Limits:
    """What one peer, and all peers together, may make the server hold (see the module
    docstring; ``pyrexisd --help`` names the flag of each)."""

    max_frame: int = DEFAULT_MAX_FRAME
    max_depth: int = DEFAULT_MAX_DEPTH
    max_inflight: int = 1024
    max_streams: int = 128
    max_connections: int = 1024
    frame_timeout: float = 30.0
    idle_timeout: float = 600.0  # 0: never
    max_buffered: int = 256 * 1024 * 1024

    @property
    def backlog(self) -> int:
        """The listen backlog: room for every allowed connection to be queued at once."""
        return max(MIN_BACKLOG, self.max_connections)


class _Throttled:
    """A warning logged at most once per ``every`` seconds, with how many were folded in:
    a flood of refused connections must not become a flood of log lines."""

    def __init__(self, every: float = 5.0) -> None:
        self.every = every
        self._last = 0.0
        self._folded = 0

    def warning(self, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.every:
            self._folded += 1
            return
        if self._folded:
            msg += f" (and {self._folded} more since the last report)"
        self._folded = 0
        self._last = now
        log.warning(msg, *args)


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

    def begin_stream(self) -> None:
        """This request streams events: count it against the connection's open streams
        (``overloaded`` when there are ``max_streams`` already)."""
        ...


Handler = Callable[[dict[str, Any], Stream, Caller], Awaitable[Any]]


class _RequestStream:
    __slots__ = ("conn", "rid", "closing", "streaming")

    def __init__(self, conn: Connection, rid: int) -> None:
        self.conn = conn
        self.rid = rid
        self.closing = asyncio.Event()
        self.streaming = False  # set by begin_stream; ``close`` ends only streams

    def begin_stream(self) -> None:
        if self.streaming:
            return
        conn = self.conn
        limit = conn.server.limits.max_streams
        if conn.open_streams >= limit:
            raise Overloaded(
                f"this connection has {limit} streams open already", {"limit": "streams", "value": limit}
            )
        conn.open_streams += 1
        self.streaming = True

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
        self.decoder = FrameDecoder(server.limits.max_frame)
        self.transport: asyncio.Transport | None = None
        self.caller: Caller | None = None  # set once the peer check admits the peer
        self.inflight: dict[int, asyncio.Task[None]] = {}
        self.streams: dict[int, _RequestStream] = {}
        self.open_streams = 0
        self._reading_paused = False
        self._writing_paused = False
        self._budget_paused = False  # not read until other connections' frames finish
        self._can_write: asyncio.Event = asyncio.Event()
        self._can_write.set()
        self.closed = False
        self.held = 0  # bytes of an unfinished frame, counted in the server's budget
        self.partial_since: float | None = None  # when the unfinished frame's first byte came
        self.last_active = 0.0

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        server = self.server
        try:
            peer = peer_of(cast(socket.socket, transport.get_extra_info("socket")))
        except OSError as exc:
            log.warning("closing a connection whose peer cannot be identified: %s", exc)
            self._refuse(Unauthorized("the daemon cannot identify this peer"))
            return
        caller = server.access.admit(peer)
        if caller is None:
            server.refusals.warning("refused a connection from uid %d (pid %d): not allowed", peer.uid, peer.pid)
            self._refuse(Unauthorized(f"uid {peer.uid} may not use this daemon"))
            return
        limit = server.limits.max_connections
        if len(server.connections) >= limit:
            server.overloads.warning("refused a connection from uid %d (pid %d): %d connections open", peer.uid, peer.pid, limit)
            self._refuse(Overloaded(f"the daemon serves {limit} connections already", {"limit": "connections", "value": limit}))
            return
        self.caller = caller
        self.last_active = server.now()
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        server.connections.add(self)

    def _refuse(self, error: WireError) -> None:
        """One error frame (id nil), then the connection ends; nothing it sends is read."""
        assert self.transport is not None
        self.transport.pause_reading()
        self._reading_paused = True
        self.send({"id": None, "ok": False, "error": error.to_wire()})
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        server = self.server
        server.connections.discard(self)
        if self.held:
            server.hold_bytes(-self.held)
            self.held = 0
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
        if self.caller is None:
            return  # refused: already answered and closing
        server = self.server
        now = server.now()
        self.last_active = now
        try:
            bodies = self.decoder.feed(data)
            for body in bodies:
                self._request(body)
            if bodies:
                self.decoder.feed(b"")  # an oversized length after these frames shows now
        except FrameTooLarge as exc:
            log.warning("closing a connection from uid %d: %s", self.caller.uid, exc.message)
            self.send({"id": None, "ok": False, "error": exc.to_wire()})
            self.close()
            return
        buffered = self.decoder.buffered
        if buffered == 0:
            self.partial_since = None
        elif bodies or self.partial_since is None:
            self.partial_since = now  # the unfinished frame began in this chunk
        if buffered != self.held:
            server.hold_bytes(buffered - self.held)
            self.held = buffered
            # Only while others hold bytes too: a frame of its own is bounded by max_frame,
            # and pausing its only holder would wait on nobody.
            over = server.buffered > server.limits.max_buffered and server.buffered > buffered
            if buffered and over and not self._budget_paused:
                self._budget_paused = True
                server.wait_for_budget(self)
                self._update_reading()

    # -- requests ---------------------------------------------------------------------
    def _request(self, body: bytes) -> None:
        try:
            message = decode_body(body, self.server.limits.max_depth)
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
        assert self.caller is not None
        try:
            result = await handler(args, stream, self.caller)
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
        if self._writing_paused:
            # Replies wait while the peer does not read: a client that pipelines requests
            # and never reads cannot make the daemon buffer their answers without bound.
            await self.writable()
        # The id is free again once its final frame is sent: a client may reuse it at once.
        self._forget(rid, stream)
        self.send(reply)

    def _forget(self, rid: int, stream: _RequestStream) -> None:
        self.inflight.pop(rid, None)
        if self.streams.get(rid) is stream:
            del self.streams[rid]
        if stream.streaming:
            stream.streaming = False
            self.open_streams -= 1

    def _done(self, rid: int, task: asyncio.Task[None]) -> None:
        if self.inflight.get(rid) is task:
            del self.inflight[rid]
        self.last_active = self.server.now()
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
        """Wait while the peer is not reading our frames (each waiter looks again when it
        wakes: the one before it may have filled the buffer already)."""
        while self._writing_paused and not self.closed:
            await self._can_write.wait()

    def _update_reading(self) -> None:
        if self.transport is None or self.closed or self.caller is None:
            return
        # Our own backpressure: the unfinished frame's time does not run meanwhile (it is
        # not the peer's fault that we stopped reading).
        ours = self._writing_paused or len(self.inflight) >= self.server.limits.max_inflight
        should_pause = ours or self._budget_paused
        if should_pause and not self._reading_paused:
            self.transport.pause_reading()
            self._reading_paused = True
            if ours:
                self.partial_since = None
        elif not should_pause and self._reading_paused:
            self.transport.resume_reading()
            self._reading_paused = False
            if self.decoder.buffered and self.partial_since is None:
                self.partial_since = self.server.now()

    def budget_freed(self) -> None:
        """The server's budget for unfinished frames has room again: read this one again."""
        self._budget_paused = False
        self._update_reading()

    def expire(self, now: float) -> None:
        """Close the connection if its unfinished frame is late or it has been idle too long."""
        limits = self.server.limits
        since = self.partial_since
        if since is not None and now - since > limits.frame_timeout and (self._budget_paused or not self._reading_paused):
            log.warning("closing a connection from uid %s: a frame did not arrive whole within %s s",
                        self.caller.uid if self.caller else "?", limits.frame_timeout)
            self._end_with(Timeout(
                f"a frame must arrive whole within {limits.frame_timeout} s of its first byte",
                {"limit": "frame_timeout", "value": limits.frame_timeout},
            ))
        elif (
            limits.idle_timeout
            and not self.inflight
            and since is None
            and now - self.last_active > limits.idle_timeout
        ):
            log.debug("closing a connection idle for %s s", limits.idle_timeout)
            self._end_with(Timeout(
                f"the connection was idle for {limits.idle_timeout} s",
                {"limit": "idle_timeout", "value": limits.idle_timeout},
            ))

    def _end_with(self, error: WireError) -> None:
        self.send({"id": None, "ok": False, "error": error.to_wire()})
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()


class Server:
    """Listens on a Unix socket and serves the ops in ``handlers`` to the peers ``access``
    admits, within ``limits``."""

    def __init__(self, handlers: dict[str, Handler], limits: Limits, access: AccessPolicy) -> None:
        self.handlers = handlers
        self.limits = limits
        self.access = access
        self.connections: set[Connection] = set()
        self.buffered = 0  # bytes of unfinished frames, all connections together
        self._budget_waiters: deque[Connection] = deque()
        self.refusals = _Throttled()
        self.overloads = _Throttled()
        self._server: asyncio.AbstractServer | None = None
        self._remove: Callable[[], None] | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def max_frame(self) -> int:
        return self.limits.max_frame

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    async def listen(self, sock: socket.socket, remove: Callable[[], None] | None = None) -> None:
        """Serve on the listening ``sock``; ``remove`` deletes its file at :meth:`close`
        (None for a socket systemd owns)."""
        self._remove = remove
        loop = self._loop = asyncio.get_running_loop()
        # asyncio listens again with its own backlog (100) unless told: keep the bind's.
        self._server = await loop.create_unix_server(lambda: Connection(self), sock=sock, backlog=self.limits.backlog)
        self._arm_sweeper()

    # -- the budget of unfinished frames --------------------------------------------------
    def hold_bytes(self, delta: int) -> None:
        """Unfinished frames now hold ``delta`` more bytes (or fewer, when negative)."""
        self.buffered += delta
        if delta < 0:
            waiters = self._budget_waiters
            # Room again, or only the first waiter's own bytes are left: read it again.
            while waiters and (self.buffered <= self.limits.max_buffered or self.buffered <= waiters[0].held):
                conn = waiters.popleft()
                if not conn.closed:
                    conn.budget_freed()

    def wait_for_budget(self, conn: Connection) -> None:
        self._budget_waiters.append(conn)

    # -- deadlines --------------------------------------------------------------------
    def _arm_sweeper(self) -> None:
        limits = self.limits
        shortest = min(limits.frame_timeout, limits.idle_timeout or limits.frame_timeout)
        assert self._loop is not None
        self._sweeper = self._loop.call_later(min(1.0, max(0.05, shortest / 4)), self._sweep)

    def _sweep(self) -> None:
        now = self.now()
        for conn in list(self.connections):
            conn.expire(now)
        self._arm_sweeper()

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        """Close every connection (after the final frames have been written)."""
        self.stop_accepting()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            except TimeoutError:
                pass
        if self._remove is not None:
            self._remove()


__all__ = ["Connection", "Handler", "Limits", "Server", "Stream"]
