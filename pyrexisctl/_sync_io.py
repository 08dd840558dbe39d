"""The blocking connection core of :class:`~pyrexisctl.client.Client`, and :class:`Stream`.

This is the I/O half that only the blocking client has; the ops built on it
(``_sync_ops``) are generated from the asyncio ones. One plain socket, no reader thread:
the client sends one request at a time and reads until its answer arrives, routing any
event or final frame of an open stream it meets on the way to that stream's buffer, so
streams stay fed while the client waits for other answers.
"""

from __future__ import annotations

import select
import socket
import time
from collections import deque
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, Self

from protocol.errors import PyrexisError
from pyrexisctl._wire import (
    _RECV_SIZE,
    ConnectionLost,
    Event,
    _ClientBase,
    _close_args,
    _closed,
    _connect_error,
    _Incoming,
    _ListenQueueFull,
    _StreamBase,
    _Wire,
)


class _ClosedOnExit:
    """``with`` support for the blocking classes: leaving the block calls ``close()``."""

    def close(self) -> Any:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Stream(_StreamBase["_SyncConnection"], _ClosedOnExit, Iterator[Event]):
    """The events of a streaming op (``logs``, ``wait`` with events, ``watch``).

    Iterating yields event maps until the daemon's final frame: then iteration stops and
    :attr:`result` holds the final result, or the final error is raised. Events that
    arrive while the client waits for another answer are kept for this stream.
    """

    def __init__(self, client: _SyncConnection, stream_id: int, op: str) -> None:
        super().__init__(client, stream_id, op)
        self._events: deque[Event] = deque()
        self._error: PyrexisError | None = None

    def _push(self, event: Event) -> None:
        self._events.append(event)

    def _finish(self, result: Any, error: PyrexisError | None) -> None:
        self._ended = True
        self.result = result
        self._error = error

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> Event:
        while True:
            if self._events:
                return self._events.popleft()
            if self._ended:
                error, self._error = self._error, None
                if error is not None:
                    raise error
                raise StopIteration
            try:
                self._client._pump()
            except PyrexisError:
                # A broken connection also ended this stream: raise that error through
                # the branch above, exactly once.
                if not self._ended:
                    raise

    def close(self) -> Any:
        """End the stream early (``close`` op); returns its final result, drops buffered events."""
        if not self._ended:
            try:
                self._client.close_stream(self)
            except PyrexisError:
                # The connection is gone: forget the stream locally (the daemon ended it
                # when the connection closed).
                pass
            self._end_locally()
        self._events.clear()
        self._error = None
        return self.result


class _SyncConnection(_ClientBase[Stream], _ClosedOnExit):
    """One blocking socket: connecting, sending, reading and routing; the ops sit on top."""

    def _init_connection(self) -> None:
        self._sock: socket.socket | None = None
        self._expected: set[int] = set()
        self._finals: dict[int, _Incoming] = {}

    # -- connection

    @property
    def connected(self) -> bool:
        """Whether a connection is open."""
        return self._sock is not None

    def connect(self) -> None:
        """Open the connection (no-op when open). Raises :class:`DaemonUnreachable`."""
        if self._sock is not None:
            return
        queue_full = _ListenQueueFull(self.connect_timeout)
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(queue_full.remaining())
                sock.connect(self.socket_path)
                # Answers may take as long as the op does (``wait``): no read timeout.
                sock.settimeout(None)
                break
            except BlockingIOError as exc:
                sock.close()
                pause = queue_full.pause()
                if pause is None:
                    raise _connect_error(self.socket_path, exc) from None
                time.sleep(pause)
            except OSError as exc:
                sock.close()
                raise _connect_error(self.socket_path, exc) from None
        self._sock = sock
        self._wire = _Wire(self._max_frame)

    def close(self) -> None:
        """Close the connection; open streams end with :class:`ConnectionLost`."""
        if self._sock is not None:
            self._drop(ConnectionLost(self.socket_path, "closed by the client"))

    def __enter__(self) -> Self:
        self.connect()
        return self

    def _disconnect(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _end_requests(self, error: PyrexisError) -> None:
        # request() learns of the broken connection from _pump, which raised it.
        self._finals.clear()

    def _send(self, op: str, args: Mapping[str, Any] | None) -> int:
        if self._sock is not None and not self._expected and not self._streams and self._ended_while_idle():
            # The daemon closes connections idle for --idle-timeout: nothing was lost, so
            # the request goes on a new one (as the asyncio client's does).
            self._drop(ConnectionLost(self.socket_path, "the daemon closed the idle connection"))
        self.connect()
        assert self._sock is not None
        request_id, frame = self._wire.encode(op, args)
        try:
            self._sock.sendall(frame)
        except OSError as exc:
            error = self._wire.orphan_error or ConnectionLost(self.socket_path, str(exc))
            self._drop(error)
            raise error from None
        return request_id

    def _ended_while_idle(self) -> bool:
        """Whether the daemon closed this connection while nothing was in flight on it
        (what it sent before closing, its reason, is read and kept)."""
        sock = self._sock
        assert sock is not None
        if not select.select([sock], [], [], 0)[0]:
            return False
        sock.setblocking(False)
        try:
            while True:
                data = sock.recv(_RECV_SIZE)
                if not data:
                    return True
                self._wire.feed(data)  # with nothing in flight, only an orphan error
        except BlockingIOError:
            return False
        except (OSError, PyrexisError):
            return True
        finally:
            if self._sock is sock:
                sock.setblocking(True)

    def _pump(self) -> None:
        """Read at least one chunk from the socket and route every complete frame in it."""
        sock = self._sock
        if sock is None:
            raise ConnectionLost(self.socket_path, "not connected")
        try:
            data = sock.recv(_RECV_SIZE)
        except OSError as exc:
            data, reason = b"", str(exc)
        else:
            reason = "the daemon closed the connection"
        if not data:
            error = self._wire.orphan_error or ConnectionLost(self.socket_path, reason)
            self._drop(error)
            raise error
        try:
            incoming = self._wire.feed(data)
        except PyrexisError as exc:
            self._drop(exc)
            raise
        for frame in incoming:
            self._route(frame)

    def _answer(self, request_id: int, frame: _Incoming) -> None:
        if request_id in self._expected:
            self._finals[request_id] = frame
        # Anything else answers a request whose caller gave up (an interrupt): dropped.

    # -- generic ops

    def request(self, op: str, args: Mapping[str, Any] | None = None) -> Any:
        """Send one request, return its result; an error answer raises its protocol.errors class."""
        request_id = self._send(op, args)
        self._expected.add(request_id)
        try:
            while request_id not in self._finals:
                self._pump()
            return self._finals.pop(request_id).outcome()
        finally:
            self._expected.discard(request_id)
            self._finals.pop(request_id, None)

    def stream(self, op: str, args: Mapping[str, Any] | None = None) -> Stream:
        """Start a streaming op, sent before this returns (so a ``watch`` sees later submits)."""
        request_id = self._send(op, args)
        stream = Stream(self, request_id, op)
        self._streams[request_id] = stream
        return stream

    def close_stream(self, stream: Stream | int) -> bool:
        """Ask the daemon to end a stream early; ``False`` when it had already ended."""
        return _closed(self.request("close", _close_args(stream)))
