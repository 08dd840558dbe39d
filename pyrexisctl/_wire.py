"""The half of the client that does no I/O, shared by :class:`~pyrexisctl.client.Client`
and :class:`~pyrexisctl.aio.AsyncClient`.

What lives here is the same whichever way the bytes travel: request ids and framing
(:class:`_Wire`), the sorting of incoming frames (:class:`_Incoming`), the argument maps of
every op and the shape of their answers, the routing of frames to open streams
(:class:`_ClientBase`, :class:`_StreamBase`), and the errors a client finds by itself
(:class:`DaemonUnreachable`, :class:`ConnectionLost`). Nothing in this module touches a
socket or an event loop, so importing it costs neither ``socket`` nor ``asyncio``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Generic, TypeVar

from protocol import PROTOCOL_VERSION
from protocol.errors import FrameTooLarge, PyrexisError, WireError, error_from_wire
from protocol.framing import DEFAULT_MAX_FRAME, HEADER_SIZE, FrameDecoder, decode_body, encode_frame
from protocol.paths import default_socket_path, resolve_socket_path

Record = dict[str, Any]
"""A map the daemon sent: a Job record, a queue row, a ``stats`` answer, ..."""

Event = dict[str, Any]
"""One stream event (``{"kind": "state" | "progress" | "log" | "output", ...}``)."""

RecordList = list[Record]


class _Unset:
    """The type of :data:`UNSET`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()
""""Leave as it is" for an argument where ``None`` has a meaning of its own
(``configure_queue(max_concurrency=None)`` removes the cap)."""

DEFAULT_CONNECT_TIMEOUT = 5.0
_RECV_SIZE = 256 * 1024


class DaemonUnreachable(PyrexisError):
    """No daemon answers on the socket; the message says where we looked and how to start one.

    It is the client's own finding, never an answer of the daemon, so unlike the
    :class:`~protocol.errors.WireError` family it has no ``code``.
    """

    def __init__(self, socket_path: str, reason: str) -> None:
        super().__init__(
            self._describe(socket_path, reason), {"socket": socket_path, "reason": reason}
        )
        self.socket_path = socket_path
        self.reason = reason

    @staticmethod
    def _describe(socket_path: str, reason: str) -> str:
        start = (
            "pyrexisd"
            if socket_path == default_socket_path()
            else f"pyrexisd --socket {socket_path}"
        )
        return f"cannot reach pyrexisd at {socket_path} ({reason}); start the daemon with `{start}`"


class ConnectionLost(DaemonUnreachable):
    """The connection broke (daemon stopped or crashed) while requests or streams were open."""

    @staticmethod
    def _describe(socket_path: str, reason: str) -> str:
        return f"lost the connection to pyrexisd at {socket_path} ({reason})"


class _Incoming:
    """One frame from the daemon, sorted: a stream event, or a final success or failure."""

    # A plain slotted class, not a dataclass: importing dataclasses costs the CLI ~6 ms.
    __slots__ = ("error", "event", "id", "result")

    def __init__(
        self,
        id: int | None,
        *,
        event: Event | None = None,
        result: Any = None,
        error: WireError | None = None,
    ) -> None:
        self.id = id
        self.event = event
        self.result = result
        self.error = error

    def outcome(self) -> Any:
        """The result of a final frame, or raise its error."""
        if self.error is not None:
            raise self.error
        return self.result


class _Wire:
    """The I/O-free half of a connection: request ids, framing, and parsing of incoming frames."""

    __slots__ = ("_decoder", "_next_id", "orphan_error", "send_limit")

    def __init__(self, max_frame: int) -> None:
        self._decoder = FrameDecoder(max_frame)
        self._next_id = 1
        # The server's max_frame once ``hello`` told us; a larger request would make it
        # drop the whole connection (and every request in flight), so we refuse it here.
        self.send_limit = DEFAULT_MAX_FRAME
        # The last error that came with a nil id (``frame_too_large`` before the server
        # hangs up, say): the best explanation if the connection ends right after.
        self.orphan_error: WireError | None = None

    def encode(self, op: str, args: Mapping[str, Any] | None) -> tuple[int, bytes]:
        """A fresh request id and the frame carrying ``op``; ids are never reused."""
        request_id = self._next_id
        self._next_id += 1
        message: dict[str, Any] = {"id": request_id, "op": op}
        if args is not None:
            message["args"] = dict(args)
        frame = encode_frame(message)
        if len(frame) - HEADER_SIZE > self.send_limit:
            raise FrameTooLarge(
                f"{op} request of {len(frame) - HEADER_SIZE} bytes exceeds the server's "
                f"max_frame {self.send_limit}",
                {"max_frame": self.send_limit},
            )
        return request_id, frame

    def accept_server_limit(self, max_frame: Any) -> None:
        """Adopt the ``max_frame`` of a ``hello`` answer, for sending and receiving."""
        if isinstance(max_frame, int) and not isinstance(max_frame, bool) and max_frame > 0:
            self.send_limit = max_frame
            self._decoder.max_frame = max(self._decoder.max_frame, max_frame)

    def feed(self, data: bytes) -> list[_Incoming]:
        """Parse received bytes; ``FrameTooLarge``/``BadFrame`` when the daemon sent garbage."""
        incoming: list[_Incoming] = []
        for body in self._decoder.feed(data):
            message = decode_body(body)
            raw_id = message.get("id")
            request_id = (
                raw_id if isinstance(raw_id, int) and not isinstance(raw_id, bool) else None
            )
            if "event" in message:
                event = message["event"]
                if request_id is not None and isinstance(event, dict):
                    incoming.append(_Incoming(request_id, event=event))
                continue
            if message.get("ok") is True:
                incoming.append(_Incoming(request_id, result=message.get("result")))
                continue
            error = error_from_wire(message.get("error"))
            if request_id is None:
                self.orphan_error = error
            else:
                incoming.append(_Incoming(request_id, error=error))
        return incoming


def _record(result: Any) -> Record:
    # Ops answer a map where the contract says so; this only tells the type checker.
    record: Record = result
    return record


def _rows(result: Any, key: str) -> RecordList:
    """The list under ``key`` of an answer (``{"jobs": [...]}``, ``{"queues": [...]}``, ...)."""
    rows: RecordList = result[key]
    return rows


def _drop_none(fields: Mapping[str, Any]) -> dict[str, Any]:
    # None stands for "not given": the daemon then applies its default, and a resubmitted
    # client job_id compares equal to the first submission.
    return {key: value for key, value in fields.items() if value is not None}


def _spec(task: str, args: Mapping[str, Any] | None, fields: Mapping[str, Any]) -> dict[str, Any]:
    spec = _drop_none(fields)
    spec["task"] = task
    if args is not None:
        spec["args"] = dict(args)
    return spec


def _hello_args(client: str) -> dict[str, Any]:
    return {"protocol": PROTOCOL_VERSION, "client": client}


def _cache_args(task: str | None) -> dict[str, Any]:
    return _drop_none({"task": task})


def _since_filter(jobs: Any, since: float | None) -> RecordList:
    """The jobs of a ``list`` page created at ``since`` or later. The daemon filters by
    itself; one older than ``since`` ignores the argument (unknown keys are ignored), and
    this keeps the answer right anyway."""
    rows: RecordList = list(jobs or [])
    if since is None:
        return rows
    return [job for job in rows if isinstance(job.get("created_at"), (int, float)) and job["created_at"] >= since]


def _job_args(job_id: str) -> dict[str, Any]:
    return {"job_id": job_id}


def _submit_many_args(specs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    return {"jobs": [dict(spec) for spec in specs]}


def _queue_arg(queue: str | None) -> dict[str, Any]:
    return _drop_none({"queue": queue})


def _wait_args(job_id: str, timeout: float | None, events: bool = False) -> dict[str, Any]:
    return _drop_none({"job_id": job_id, "timeout": timeout, "events": True if events else None})


def _logs_args(job_id: str, since: int, follow: bool) -> dict[str, Any]:
    args: dict[str, Any] = {"job_id": job_id, "since": since}
    if follow:
        args["follow"] = True
    return args


def _list_args(
    status: str | Sequence[str] | None,
    task: str | None,
    queue: str | None,
    limit: int | None,
    after: str | None,
    all_users: bool = False,
    since: float | None = None,
) -> dict[str, Any]:
    if status is not None and not isinstance(status, str):
        status = [str(s) for s in status]
    args = _drop_none(
        {"status": status, "task": task, "queue": queue, "limit": limit, "after": after, "since": since}
    )
    if all_users:  # sent only when asked: a daemon older than ownership ignores it anyway
        args["all_users"] = True
    return args


def _update_args(job_id: str, priority: int | None, queue: str | None) -> dict[str, Any]:
    return _drop_none({"job_id": job_id, "priority": priority, "queue": queue})


def _queue_config(
    queue: str, weight: float | None, max_concurrency: int | None | _Unset, aging: float | None
) -> dict[str, Any]:
    args = _drop_none({"queue": queue, "weight": weight, "aging": aging})
    if not isinstance(max_concurrency, _Unset):
        args["max_concurrency"] = max_concurrency  # None (nil): no cap
    return args


def _schedule_args(
    name: str,
    task: str,
    args: Mapping[str, Any] | None,
    cron: str | None,
    every: float | None,
    spec: Mapping[str, Any],
) -> dict[str, Any]:
    return _drop_none({"name": name, "cron": cron, "every": every, "job": _spec(task, args, spec)})


def _logs_page(lines: RecordList, final: Any, since: int) -> Record:
    """The answer of the ``logs`` method from a ``logs`` stream's lines and final result."""
    next_seq = final.get("next") if isinstance(final, dict) else None
    return {"lines": lines, "next": next_seq if isinstance(next_seq, int) else since}


def _outputs_page(items: RecordList, final: Any, since: int) -> Record:
    """The answer of the ``outputs`` method from an ``outputs`` stream's events and final result."""
    next_seq = final.get("next") if isinstance(final, dict) else None
    return {"outputs": items, "next": next_seq if isinstance(next_seq, int) else since}


def _watch_args(
    job_id: str | None, task: str | None, queue: str | None, kinds: Sequence[str] | None
) -> dict[str, Any]:
    kind_list = None if kinds is None else [str(kind) for kind in kinds]
    return _drop_none({"job_id": job_id, "task": task, "queue": queue, "kinds": kind_list})


def _close_args(stream: _StreamBase[Any] | int) -> dict[str, Any]:
    return {"id": stream if isinstance(stream, int) else stream.id}


def _closed(result: Any) -> bool:
    """Whether a ``close`` answer says the stream was still open."""
    return bool(isinstance(result, dict) and result.get("closed"))


class _ListenQueueFull:
    """When to try a connect again that the daemon's listen queue refused (EAGAIN: full
    for a moment, under a burst of connections), until the connect timeout runs out."""

    def __init__(self, timeout: float | None) -> None:
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self._pause = 0.005

    def remaining(self) -> float | None:
        """Seconds left for one attempt (None: no limit)."""
        return None if self.deadline is None else max(0.001, self.deadline - time.monotonic())

    def pause(self) -> float | None:
        """How long to wait before the next attempt, or None to give up."""
        pause = self._pause
        if self.deadline is not None and time.monotonic() + pause > self.deadline:
            return None
        self._pause = min(0.1, pause * 2)
        return pause


def _connect_error(socket_path: str, exc: OSError) -> DaemonUnreachable:
    if isinstance(exc, BlockingIOError):
        return DaemonUnreachable(socket_path, "its listen queue stayed full (the daemon is swamped with connections)")
    if isinstance(exc, FileNotFoundError):
        reason = "no such socket"
    elif isinstance(exc, ConnectionRefusedError):
        reason = "connection refused: stale socket, no daemon listening"
    elif isinstance(exc, PermissionError):
        reason = "permission denied"
    elif isinstance(exc, TimeoutError):
        reason = "timed out"
    else:
        reason = exc.strerror or str(exc)
    return DaemonUnreachable(socket_path, reason)


_C = TypeVar("_C", bound="_ClientBase[Any]")
_S = TypeVar("_S", bound="_StreamBase[Any]")


class _StreamBase(Generic[_C]):
    """What :class:`~pyrexisctl.client.Stream` and :class:`~pyrexisctl.aio.AsyncStream` share:
    identity, result, and ending."""

    def __init__(self, client: _C, stream_id: int, op: str) -> None:
        self.id = stream_id
        self.op = op
        self.result: Any = None
        self._client = client
        self._ended = False

    @property
    def ended(self) -> bool:
        """Whether the final frame has arrived (events may still be buffered)."""
        return self._ended

    def _push(self, event: Event) -> None:
        raise NotImplementedError

    def _finish(self, result: Any, error: PyrexisError | None) -> None:
        raise NotImplementedError

    def _end_locally(self) -> None:
        """After a ``close`` that did not end the stream (the connection is gone): forget it
        here, as the daemon did when the connection closed."""
        if not self._ended:
            self._client._forget_stream(self.id)
            self._finish(None, None)


class _ClientBase(Generic[_S]):
    """What both clients share: settings, the I/O-free wire, and the routing of incoming
    frames to open streams. The connection cores (``_sync_io``, ``_async_io``) do the I/O."""

    def __init__(
        self,
        socket_path: str | None = None,
        *,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        max_frame: int = DEFAULT_MAX_FRAME,
        client_name: str = "pyrexisctl",
    ) -> None:
        self.socket_path = resolve_socket_path(socket_path)
        self.connect_timeout = connect_timeout
        self.client_name = client_name
        self.server: Record | None = None
        """The daemon's ``hello`` answer, once :meth:`hello` was called."""
        self._max_frame = max_frame
        self._wire = _Wire(max_frame)
        self._streams: dict[int, _S] = {}
        self._init_connection()

    def _init_connection(self) -> None:
        """Set up the subclass's connection state (not connected)."""
        raise NotImplementedError

    def _disconnect(self) -> None:
        """Close the transport, if open."""
        raise NotImplementedError

    def _end_requests(self, error: PyrexisError) -> None:
        """End the requests waiting for an answer with ``error`` (the connection is gone)."""
        raise NotImplementedError

    def _answer(self, request_id: int, frame: _Incoming) -> None:
        """Hand the final frame of a plain request to whoever waits for it."""
        raise NotImplementedError

    def _drop(self, error: PyrexisError) -> None:
        self._disconnect()
        self._end_requests(error)
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream._finish(None, error)

    def _route(self, frame: _Incoming) -> None:
        assert frame.id is not None
        stream = self._streams.get(frame.id)
        if frame.event is not None:
            if stream is not None:
                stream._push(frame.event)
        elif stream is not None:
            del self._streams[frame.id]
            stream._finish(frame.result, frame.error)
        else:
            self._answer(frame.id, frame)

    def _forget_stream(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)

    def _accept_hello(self, result: Record) -> Record:
        self.server = result
        self._wire.accept_server_limit(result.get("max_frame"))
        return result



def _clean_args(
    older_than: float | None, status: str | Sequence[str] | None, queue: str | None, all_users: bool
) -> dict[str, Any]:
    if status is not None and not isinstance(status, str):
        status = [str(s) for s in status]
    args = _drop_none({"older_than": older_than, "status": status, "queue": queue})
    if all_users:
        args["all_users"] = True
    return args


class _BackupFile:
    """Where a ``backup`` stream's chunks go: ``path + ".part"`` until the stream ended
    well, then renamed to ``path`` (an interrupted backup never looks complete)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.part = path + ".part"
        self.written = 0
        self._fh: Any = None

    def __enter__(self) -> _BackupFile:
        self._fh = open(self.part, "wb")  # noqa: SIM115 - closed in __exit__
        return self

    def write(self, event: Mapping[str, Any]) -> None:
        data = event.get("data")
        if event.get("kind") != "backup" or not isinstance(data, bytes):
            return
        if event.get("offset") != self.written:
            raise PyrexisError(f"backup: a chunk at offset {event.get('offset')} after {self.written} bytes")
        self._fh.write(data)
        self.written += len(data)

    def done(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self.part, self.path)

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if not self._fh.closed:
            self._fh.close()
        if exc_type is not None and os.path.exists(self.part):
            os.unlink(self.part)
