"""The asyncio connection core of :class:`~pyrexisctl.aio.AsyncClient`, and :class:`AsyncStream`.

This is the I/O half that only the asyncio client has; its ops (``_async_ops``) are
written once on top of it and the blocking ones are generated from them. A reader task
owns the receiving side and hands each final frame to the future of the request that
waits for it, and each event to its stream's queue, so any number of requests share the
connection at once.

Importing this module imports ``asyncio`` (tens of milliseconds): the blocking client,
and so the CLI, never imports it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
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


class _End:
    """Queued after a stream's last event: its final result or error."""

    __slots__ = ("error",)

    def __init__(self, error: PyrexisError | None) -> None:
        self.error = error


class AsyncStream(_StreamBase["_AsyncConnection"], AsyncIterator[Event]):
    """The events of a streaming op, for ``async for``.

    Iteration ends at the daemon's final frame: :attr:`result` then holds the final
    result, or the final error is raised. Events are buffered without bound on the client
    side so a slow consumer never stalls the connection's other requests.
    """

    def __init__(self, client: _AsyncConnection, stream_id: int, op: str) -> None:
        super().__init__(client, stream_id, op)
        self._queue: asyncio.Queue[Event | _End] = asyncio.Queue()
        self._exhausted = False

    def _push(self, event: Event) -> None:
        self._queue.put_nowait(event)

    def _finish(self, result: Any, error: PyrexisError | None) -> None:
        if not self._ended:
            self._ended = True
            self.result = result
            self._queue.put_nowait(_End(error))

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        if self._exhausted:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, _End):
            self._exhausted = True
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        return item

    async def aclose(self) -> Any:
        """End the stream early (``close`` op); returns its final result, drops buffered events."""
        if not self._ended:
            try:
                await self._client.close_stream(self)
            except PyrexisError:
                # The connection is gone: forget the stream locally (the daemon ended it
                # when the connection closed).
                pass
            self._end_locally()
        self._exhausted = True
        return self.result

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class _AsyncConnection(_ClientBase[AsyncStream]):
    """One socket shared by every coroutine: connecting, a reader task that routes what
    arrives, and futures for the requests in flight; the ops sit on top."""

    def _init_connection(self) -> None:
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting: asyncio.Lock | None = None
        self._pending: dict[int, asyncio.Future[_Incoming]] = {}

    # -- connection

    @property
    def connected(self) -> bool:
        """Whether a connection is open."""
        return self._writer is not None

    async def connect(self) -> None:
        """Open the connection and start the reader task; may raise :class:`DaemonUnreachable`."""
        if self._writer is not None:
            return
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._writer is not None:
                return
            queue_full = _ListenQueueFull(self.connect_timeout)
            while True:
                try:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_unix_connection(self.socket_path), queue_full.remaining()
                    )
                    break
                except BlockingIOError as exc:  # the daemon's listen queue is full for now
                    pause = queue_full.pause()
                    if pause is None:
                        raise _connect_error(self.socket_path, exc) from None
                    await asyncio.sleep(pause)
                except OSError as exc:
                    raise _connect_error(self.socket_path, exc) from None
            self._wire = _Wire(self._max_frame)
            self._writer = writer
            self._reader_task = asyncio.create_task(
                self._read_loop(reader), name=f"pyrexis-reader:{self.socket_path}"
            )

    async def close(self) -> None:
        """Close the connection; requests in flight and open streams end with ConnectionLost."""
        task, self._reader_task = self._reader_task, None
        self._drop(ConnectionLost(self.socket_path, "closed by the client"))
        # asyncio locks bind to the loop that first waits on them: start afresh so the
        # client can be connected again from another event loop.
        self._connecting = None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _disconnect(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def _end_requests(self, error: PyrexisError) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        error: PyrexisError
        try:
            while True:
                data = await reader.read(_RECV_SIZE)
                if not data:
                    error = ConnectionLost(self.socket_path, "the daemon closed the connection")
                    break
                for frame in self._wire.feed(data):
                    self._route(frame)
        except PyrexisError as exc:
            error = exc  # garbage from the daemon: the stream cannot be trusted any more
        except OSError as exc:
            error = ConnectionLost(self.socket_path, str(exc))
        self._reader_task = None
        self._drop(self._wire.orphan_error or error)

    def _answer(self, request_id: int, frame: _Incoming) -> None:
        future = self._pending.pop(request_id, None)
        # A missing or cancelled future is a caller that gave up: drop its answer.
        if future is not None and not future.done():
            future.set_result(frame)

    async def _send(self, op: str, args: Mapping[str, Any] | None) -> tuple[int, bytes]:
        await self.connect()
        return self._wire.encode(op, args)

    async def _write(self, frame: bytes) -> None:
        writer = self._writer
        if writer is None:
            raise self._wire.orphan_error or ConnectionLost(self.socket_path, "not connected")
        writer.write(frame)
        try:
            await writer.drain()
        except OSError as exc:
            raise self._wire.orphan_error or ConnectionLost(self.socket_path, str(exc)) from None

    # -- generic ops

    async def request(self, op: str, args: Mapping[str, Any] | None = None) -> Any:
        """Send one request, return its result; an error answer raises its protocol.errors class."""
        request_id, frame = await self._send(op, args)
        future: asyncio.Future[_Incoming] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self._write(frame)
            incoming = await future
        finally:
            self._pending.pop(request_id, None)
        return incoming.outcome()

    async def stream(self, op: str, args: Mapping[str, Any] | None = None) -> AsyncStream:
        """Start a streaming op and return its events as an async iterator.

        The request is written before this returns, so a ``watch`` opened first sees the
        jobs submitted after it on the same connection.
        """
        request_id, frame = await self._send(op, args)
        stream = AsyncStream(self, request_id, op)
        self._streams[request_id] = stream
        try:
            await self._write(frame)
        except BaseException:
            self._streams.pop(request_id, None)
            raise
        return stream

    async def close_stream(self, stream: AsyncStream | int) -> bool:
        """Ask the daemon to end a stream early; ``False`` when it had already ended."""
        return _closed(await self.request("close", _close_args(stream)))
