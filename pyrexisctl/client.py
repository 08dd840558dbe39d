"""The Python library for talking to ``pyrexisd``: :class:`Client` and :class:`AsyncClient`.

Both speak protocol v1 (``shared/design/protocol-v1.md``) over one Unix socket connection
and offer the same methods. :class:`AsyncClient` pipelines: any number of requests may be
in flight at once, and a reader task hands each response and stream event to whoever
waits for that id. :class:`Client` is a plain blocking socket for scripts; it sends one
request at a time but still keeps streams it has opened fed while it waits for other
answers.

Errors the daemon answers with are raised as the classes of :mod:`protocol.errors`
(``NotFound``, ``InvalidState``, ...). A daemon that cannot be reached raises
:class:`DaemonUnreachable`; a connection that breaks afterwards raises
:class:`ConnectionLost` (a subclass, so one ``except DaemonUnreachable`` covers both).

Streaming ops return a :class:`Stream` (an iterator of event maps; :class:`AsyncStream` for
``async for``) whose ``result`` holds the final frame's result once iteration stops:
:meth:`Client.wait_events` (the job's events, then its terminal record),
:meth:`Client.follow_logs` (log lines as they are written, then ``{"next": seq}``) and
:meth:`Client.watch` (matching events until closed). ``stream.close()`` ends one early.

Neither client is thread-safe: use one per thread (or per event loop).
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Generic, Self, TypeVar

from protocol import PROTOCOL_VERSION
from protocol.errors import FrameTooLarge, PyrexisError, WireError, error_from_wire
from protocol.framing import DEFAULT_MAX_FRAME, HEADER_SIZE, FrameDecoder, decode_body, encode_frame
from protocol.paths import default_socket_path, resolve_socket_path

if TYPE_CHECKING:
    # asyncio takes ~50 ms to import and the CLI only uses the blocking Client, so
    # AsyncClient imports it in the methods that need it rather than at module level.
    import asyncio

__all__ = [
    "UNSET",
    "AsyncClient",
    "AsyncStream",
    "Client",
    "ConnectionLost",
    "DaemonUnreachable",
    "Event",
    "Record",
    "Stream",
]

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
) -> dict[str, Any]:
    if status is not None and not isinstance(status, str):
        status = [str(s) for s in status]
    return _drop_none(
        {"status": status, "task": task, "queue": queue, "limit": limit, "after": after}
    )


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
    """The answer of :meth:`Client.logs` from a ``logs`` stream's lines and final result."""
    next_seq = final.get("next") if isinstance(final, dict) else None
    return {"lines": lines, "next": next_seq if isinstance(next_seq, int) else since}


def _watch_args(
    job_id: str | None, task: str | None, queue: str | None, kinds: Sequence[str] | None
) -> dict[str, Any]:
    kind_list = None if kinds is None else [str(kind) for kind in kinds]
    return _drop_none({"job_id": job_id, "task": task, "queue": queue, "kinds": kind_list})


def _close_args(stream: Stream | AsyncStream | int) -> dict[str, Any]:
    return {"id": stream if isinstance(stream, int) else stream.id}


def _closed(result: Any) -> bool:
    """Whether a ``close`` answer says the stream was still open."""
    return bool(isinstance(result, dict) and result.get("closed"))


def _connect_error(socket_path: str, exc: OSError) -> DaemonUnreachable:
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


# --------------------------------------------------------------------------- shared

_C = TypeVar("_C", bound="_ClientBase[Any]")
_S = TypeVar("_S", bound="_StreamBase[Any]")


class _StreamBase(Generic[_C]):
    """What :class:`Stream` and :class:`AsyncStream` share: identity, result, and ending."""

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


class _ClientBase(Generic[_S]):
    """What :class:`Client` and :class:`AsyncClient` share: settings, the I/O-free wire,
    and the routing of incoming frames to open streams. Subclasses do the I/O."""

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


# --------------------------------------------------------------------------- blocking


class Stream(_StreamBase["Client"], _ClosedOnExit, Iterator[Event]):
    """The events of a streaming op (``logs``, ``wait`` with events, ``watch``).

    Iterating yields event maps until the daemon's final frame: then iteration stops and
    :attr:`result` holds the final result, or the final error is raised. Events that
    arrive while the client waits for another answer are kept for this stream.
    """

    def __init__(self, client: Client, stream_id: int, op: str) -> None:
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


class Client(_ClientBase[Stream], _ClosedOnExit):
    """A blocking client on one Unix socket connection.

    It connects on first use (or explicitly with :meth:`connect` / ``with Client() as c``).
    ``socket_path`` defaults to the contract's resolution: ``PYREXIS_SOCKET``, then the
    per-user default. Not thread-safe.
    """

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
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.connect_timeout)
            sock.connect(self.socket_path)
            # Answers may take as long as the op does (``wait``): no read timeout.
            sock.settimeout(None)
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

    # -- ops of the contract

    def hello(self, client: str | None = None) -> Record:
        """Handshake: ``{protocol, server, max_frame, ops}``, also kept in :attr:`server`."""
        result = self.request("hello", _hello_args(client or self.client_name))
        return self._accept_hello(_record(result))

    def submit(self, task: str, args: Mapping[str, Any] | None = None, **spec: Any) -> Record:
        """Submit one job, return its record. ``spec``: JobSpec fields (``None`` = not given)."""
        return _record(self.request("submit", _spec(task, args, spec)))

    def submit_many(self, specs: Iterable[Mapping[str, Any]]) -> RecordList:
        """Submit a batch all-or-nothing; returns the records in the same order."""
        return _rows(self.request("submit_many", _submit_many_args(specs)), "jobs")

    def get(self, job_id: str) -> Record:
        """The job's record (``NotFound`` when there is none)."""
        return _record(self.request("get", _job_args(job_id)))

    def list(
        self,
        status: str | Sequence[str] | None = None,
        task: str | None = None,
        queue: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> Record:
        """One page of jobs, oldest first: ``{"jobs": [...], "next": cursor or None}``."""
        return _record(self.request("list", _list_args(status, task, queue, limit, after)))

    def iter_jobs(
        self,
        status: str | Sequence[str] | None = None,
        task: str | None = None,
        queue: str | None = None,
        page_size: int | None = None,
    ) -> Iterator[Record]:
        """Every matching job, oldest first, walking all pages of ``list``."""
        after: str | None = None
        while True:
            page = self.list(status, task, queue, page_size, after)
            yield from page.get("jobs") or []
            after = page.get("next")
            if after is None:
                return

    def cancel(self, job_id: str) -> Record:
        """Cancel a job; returns its ``cancelled`` record (``InvalidState`` if already terminal)."""
        return _record(self.request("cancel", _job_args(job_id)))

    def retry(self, job_id: str) -> Record:
        """Start a new round of a ``failed`` or ``cancelled`` job; returns its record."""
        return _record(self.request("retry", _job_args(job_id)))

    def wait(self, job_id: str, timeout: float | None = None) -> Record:
        """Block until the job is terminal; returns its record (``Timeout`` after ``timeout`` s)."""
        return _record(self.request("wait", _wait_args(job_id, timeout)))

    def wait_events(self, job_id: str, timeout: float | None = None) -> Stream:
        """Wait for the job while streaming its events.

        The stream opens with a ``state`` event of the job's current status (and its
        latest ``progress``), then yields its live ``state``, ``progress``, ``log`` and
        ``output`` events. Iteration stops once the job is terminal; ``stream.result`` is
        then its record. After ``timeout`` s iteration raises ``Timeout``. Closing the
        stream early leaves ``result`` as the record at that moment.
        """
        return self.stream("wait", _wait_args(job_id, timeout, events=True))

    def logs(self, job_id: str, since: int = 1, follow: bool = False) -> Record:
        """The job's log lines with ``seq >= since``: ``{"lines": [log events], "next": seq}``.

        With ``follow`` it returns once the job is terminal and its log drained; to
        process lines as they come, iterate :meth:`follow_logs` instead.
        """
        stream = self.stream("logs", _logs_args(job_id, since, follow))
        lines = [event for event in stream if event.get("kind") == "log"]
        return _logs_page(lines, stream.result, since)

    def follow_logs(self, job_id: str, since: int = 1) -> Stream:
        """The job's ``log`` events with ``seq >= since``: the stored ones, then live ones.

        Iteration stops once the job is terminal and its log drained; ``stream.result``
        is then ``{"next": seq}`` (the ``since`` to resume from). ``stream.close()``
        detaches early; the job is not affected.
        """
        return self.stream("logs", _logs_args(job_id, since, True))

    def watch(
        self,
        job_id: str | None = None,
        task: str | None = None,
        queue: str | None = None,
        kinds: Sequence[str] | None = None,
    ) -> Stream:
        """Stream the events matching every given filter, from now on, until closed.

        ``kinds``: event kinds (``state``, ``progress``, ``log``, ``output``). With
        ``job_id`` the stream opens with the job's current ``state`` (and ``progress``).
        The subscription is in effect for any request sent after this returns.
        """
        return self.stream("watch", _watch_args(job_id, task, queue, kinds))

    def hold(self, job_id: str) -> Record:
        """Keep a waiting job from starting until :meth:`release`; returns its ``held`` record."""
        return _record(self.request("hold", _job_args(job_id)))

    def release(self, job_id: str) -> Record:
        """Let a ``held`` job wait again (``pending``, ``blocked`` or ``scheduled``); its record."""
        return _record(self.request("release", _job_args(job_id)))

    def update(self, job_id: str, priority: int | None = None, queue: str | None = None) -> Record:
        """Change a waiting (or held) job's priority and/or queue; returns its record."""
        return _record(self.request("update", _update_args(job_id, priority, queue)))

    def stats(self) -> Record:
        """Counters of the daemon: ``uptime``, ``by_status``, ``slots``, latencies, ..."""
        return _record(self.request("stats"))

    def tasks(self) -> RecordList:
        """The registered tasks: ``{name, modes, default_mode, description, schema}`` each."""
        return _rows(self.request("tasks"), "tasks")

    def queues(self) -> RecordList:
        """Queue rows: ``{queue, paused, weight, max_concurrency, aging, waiting, running}``."""
        return _rows(self.request("queues"), "queues")

    def pause(self, queue: str | None = None) -> RecordList:
        """Pause one queue, or all (future ones too) when ``queue`` is None; returns queue rows."""
        return _rows(self.request("pause", _queue_arg(queue)), "queues")

    def resume(self, queue: str | None = None) -> RecordList:
        """Undo :meth:`pause` for one queue, or for every queue; returns queue rows."""
        return _rows(self.request("resume", _queue_arg(queue)), "queues")

    def configure_queue(
        self,
        queue: str,
        *,
        weight: float | None = None,
        max_concurrency: int | None | _Unset = UNSET,
        aging: float | None = None,
    ) -> Record:
        """Set a queue's fair-share ``weight``, ``max_concurrency`` and ``aging``; its queue row.

        Arguments left out keep their value; ``max_concurrency=None`` removes the cap.
        The queue is created if it does not exist yet. The setting is durable.
        """
        args = _queue_config(queue, weight, max_concurrency, aging)
        return _record(self.request("configure_queue", args))

    def schedule_add(
        self,
        name: str,
        task: str,
        args: Mapping[str, Any] | None = None,
        *,
        cron: str | None = None,
        every: float | None = None,
        **spec: Any,
    ) -> Record:
        """Submit a job of ``task`` by ``cron`` (5 fields, the daemon's local time) or ``every`` s.

        Give exactly one of ``cron`` and ``every``. ``spec``: JobSpec fields except
        ``job_id``, ``run_at``, ``delay`` and ``depends_on``. Returns the schedule record
        ``{name, cron, every, job, next_run, last_run, last_job_id}``; a name in use is
        ``Conflict``.
        """
        schedule = _schedule_args(name, task, args, cron, every, spec)
        return _record(self.request("schedule_add", schedule))

    def schedule_list(self) -> RecordList:
        """Every schedule record, by name."""
        return _rows(self.request("schedule_list"), "schedules")

    def schedule_remove(self, name: str) -> None:
        """Delete a schedule (``NotFound`` when there is none); jobs it submitted stay."""
        self.request("schedule_remove", {"name": name})


# --------------------------------------------------------------------------- asyncio


class _End:
    """Queued after a stream's last event: its final result or error."""

    __slots__ = ("error",)

    def __init__(self, error: PyrexisError | None) -> None:
        self.error = error


class AsyncStream(_StreamBase["AsyncClient"], AsyncIterator[Event]):
    """The events of a streaming op, for ``async for``.

    Iteration ends at the daemon's final frame: :attr:`result` then holds the final
    result, or the final error is raised. Events are buffered without bound on the client
    side so a slow consumer never stalls the connection's other requests.
    """

    def __init__(self, client: AsyncClient, stream_id: int, op: str) -> None:
        import asyncio

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


class AsyncClient(_ClientBase[AsyncStream]):
    """An asyncio client on one Unix socket connection, with pipelining.

    Any number of coroutines may call it at once; each request gets its own id and the
    reader task matches answers to callers, so a slow ``wait`` never holds up a ``get``.
    It connects on first use (or with :meth:`connect` / ``async with AsyncClient() as c``).
    """

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
        import asyncio

        if self._writer is not None:
            return
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._writer is not None:
                return
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_unix_connection(self.socket_path), self.connect_timeout
                )
            except OSError as exc:
                raise _connect_error(self.socket_path, exc) from None
            self._wire = _Wire(self._max_frame)
            self._writer = writer
            self._reader_task = asyncio.create_task(
                self._read_loop(reader), name=f"pyrexis-reader:{self.socket_path}"
            )

    async def close(self) -> None:
        """Close the connection; requests in flight and open streams end with ConnectionLost."""
        import asyncio

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
        import asyncio

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

    # -- ops of the contract

    async def hello(self, client: str | None = None) -> Record:
        """Handshake: ``{protocol, server, max_frame, ops}``, also kept in :attr:`server`."""
        result = await self.request("hello", _hello_args(client or self.client_name))
        return self._accept_hello(_record(result))

    async def submit(self, task: str, args: Mapping[str, Any] | None = None, **spec: Any) -> Record:
        """Submit one job, return its record. ``spec``: JobSpec fields (``None`` = not given)."""
        return _record(await self.request("submit", _spec(task, args, spec)))

    async def submit_many(self, specs: Iterable[Mapping[str, Any]]) -> RecordList:
        """Submit a batch all-or-nothing; returns the records in the same order."""
        return _rows(await self.request("submit_many", _submit_many_args(specs)), "jobs")

    async def get(self, job_id: str) -> Record:
        """The job's record (``NotFound`` when there is none)."""
        return _record(await self.request("get", _job_args(job_id)))

    async def list(
        self,
        status: str | Sequence[str] | None = None,
        task: str | None = None,
        queue: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> Record:
        """One page of jobs, oldest first: ``{"jobs": [...], "next": cursor or None}``."""
        return _record(await self.request("list", _list_args(status, task, queue, limit, after)))

    async def iter_jobs(
        self,
        status: str | Sequence[str] | None = None,
        task: str | None = None,
        queue: str | None = None,
        page_size: int | None = None,
    ) -> AsyncIterator[Record]:
        """Every matching job, oldest first, walking all pages of ``list``."""
        after: str | None = None
        while True:
            page = await self.list(status, task, queue, page_size, after)
            for job in page.get("jobs") or []:
                yield job
            after = page.get("next")
            if after is None:
                return

    async def cancel(self, job_id: str) -> Record:
        """Cancel a job; returns its ``cancelled`` record (``InvalidState`` if already terminal)."""
        return _record(await self.request("cancel", _job_args(job_id)))

    async def retry(self, job_id: str) -> Record:
        """Start a new round of a ``failed`` or ``cancelled`` job; returns its record."""
        return _record(await self.request("retry", _job_args(job_id)))

    async def wait(self, job_id: str, timeout: float | None = None) -> Record:
        """Wait until the job is terminal; returns its record (``Timeout`` after ``timeout`` s)."""
        return _record(await self.request("wait", _wait_args(job_id, timeout)))

    async def wait_events(self, job_id: str, timeout: float | None = None) -> AsyncStream:
        """Wait for the job while streaming its events (see :meth:`Client.wait_events`).

        ``async for`` stops once the job is terminal; ``stream.result`` is its record.
        """
        return await self.stream("wait", _wait_args(job_id, timeout, events=True))

    async def logs(self, job_id: str, since: int = 1, follow: bool = False) -> Record:
        """The job's log lines with ``seq >= since``: ``{"lines": [log events], "next": seq}``.

        With ``follow`` it returns once the job is terminal and its log drained; to
        process lines as they come, iterate :meth:`follow_logs` instead.
        """
        stream = await self.stream("logs", _logs_args(job_id, since, follow))
        lines = [event async for event in stream if event.get("kind") == "log"]
        return _logs_page(lines, stream.result, since)

    async def follow_logs(self, job_id: str, since: int = 1) -> AsyncStream:
        """The job's ``log`` events with ``seq >= since``, stored then live (see
        :meth:`Client.follow_logs`); ``stream.result`` ends as ``{"next": seq}``."""
        return await self.stream("logs", _logs_args(job_id, since, True))

    async def watch(
        self,
        job_id: str | None = None,
        task: str | None = None,
        queue: str | None = None,
        kinds: Sequence[str] | None = None,
    ) -> AsyncStream:
        """Stream the events matching every given filter, from now on, until closed.

        See :meth:`Client.watch`; the subscription is in effect for any request sent
        after this returns.
        """
        return await self.stream("watch", _watch_args(job_id, task, queue, kinds))

    async def hold(self, job_id: str) -> Record:
        """Keep a waiting job from starting until :meth:`release`; returns its ``held`` record."""
        return _record(await self.request("hold", _job_args(job_id)))

    async def release(self, job_id: str) -> Record:
        """Let a ``held`` job wait again (``pending``, ``blocked`` or ``scheduled``); its record."""
        return _record(await self.request("release", _job_args(job_id)))

    async def update(
        self, job_id: str, priority: int | None = None, queue: str | None = None
    ) -> Record:
        """Change a waiting (or held) job's priority and/or queue; returns its record."""
        return _record(await self.request("update", _update_args(job_id, priority, queue)))

    async def stats(self) -> Record:
        """Counters of the daemon: ``uptime``, ``by_status``, ``slots``, latencies, ..."""
        return _record(await self.request("stats"))

    async def tasks(self) -> RecordList:
        """The registered tasks: ``{name, modes, default_mode, description, schema}`` each."""
        return _rows(await self.request("tasks"), "tasks")

    async def queues(self) -> RecordList:
        """Queue rows: ``{queue, paused, weight, max_concurrency, aging, waiting, running}``."""
        return _rows(await self.request("queues"), "queues")

    async def pause(self, queue: str | None = None) -> RecordList:
        """Pause one queue, or all (future ones too) when ``queue`` is None; returns queue rows."""
        return _rows(await self.request("pause", _queue_arg(queue)), "queues")

    async def resume(self, queue: str | None = None) -> RecordList:
        """Undo :meth:`pause` for one queue, or for every queue; returns queue rows."""
        return _rows(await self.request("resume", _queue_arg(queue)), "queues")

    async def configure_queue(
        self,
        queue: str,
        *,
        weight: float | None = None,
        max_concurrency: int | None | _Unset = UNSET,
        aging: float | None = None,
    ) -> Record:
        """Set a queue's ``weight``, ``max_concurrency`` and ``aging``; its queue row.

        See :meth:`Client.configure_queue`: ``max_concurrency=None`` removes the cap.
        """
        args = _queue_config(queue, weight, max_concurrency, aging)
        return _record(await self.request("configure_queue", args))

    async def schedule_add(
        self,
        name: str,
        task: str,
        args: Mapping[str, Any] | None = None,
        *,
        cron: str | None = None,
        every: float | None = None,
        **spec: Any,
    ) -> Record:
        """Submit a job of ``task`` by ``cron`` or ``every`` s; the schedule record.

        See :meth:`Client.schedule_add`.
        """
        schedule = _schedule_args(name, task, args, cron, every, spec)
        return _record(await self.request("schedule_add", schedule))

    async def schedule_list(self) -> RecordList:
        """Every schedule record, by name."""
        return _rows(await self.request("schedule_list"), "schedules")

    async def schedule_remove(self, name: str) -> None:
        """Delete a schedule (``NotFound`` when there is none); jobs it submitted stay."""
        await self.request("schedule_remove", {"name": name})
