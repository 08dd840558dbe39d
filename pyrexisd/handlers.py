"""One method per protocol op. Arguments are validated here, at the boundary.

Each handler takes the request's ``args`` map, a stream for events and the
:class:`~pyrexisd.access.Caller` the connection identified, and returns the op's result;
errors are raised as :mod:`protocol.errors` classes and become failure frames in the
server. Handlers see only the core's :class:`~pyrexisd.core.service.Service`, and hand it
the caller: what a caller may see and do is decided there, not here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from protocol import PROTOCOL_VERSION
from protocol.errors import InvalidRequest, Overloaded, ShuttingDown, Timeout
from protocol.models import validation_errors
from protocol.status import ALL_STATUSES, TERMINAL
from pyrexisd import __version__
from pyrexisd.access import Caller
from pyrexisd.core.model import JobRow
from pyrexisd.core.queues import QueueChanges
from pyrexisd.core.service import LOG_PAGE, Service
from pyrexisd.events import (
    EventFilter,
    StoredRange,
    Subscription,
    log_event,
    output_event,
    progress_event,
    state_event,
)
from pyrexisd.prometheus import CONTENT_TYPE
from pyrexisd.server import Handler, Stream

M = TypeVar("M", bound=BaseModel)

MAX_LIST = 10_000


class _Args(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class HelloArgs(_Args):
    protocol: int = PROTOCOL_VERSION
    client: str | None = None


class JobIdArgs(_Args):
    job_id: str = Field(min_length=1)


class WaitArgs(JobIdArgs):
    timeout: float | None = Field(default=None, ge=0)
    events: bool = False


class LogsArgs(JobIdArgs):
    follow: bool = False
    since: int = Field(default=1, ge=1)


class ListArgs(_Args):
    status: Any = None
    task: str | None = None
    queue: str | None = None
    limit: int = Field(default=100, ge=1, le=MAX_LIST)
    after: str | None = None
    all_users: bool = False
    since: float | None = None
    newest_first: bool = False


class WatchArgs(_Args):
    job_id: str | None = Field(default=None, min_length=1)
    task: str | None = None
    queue: str | None = None
    kinds: list[str] | None = None


class CloseArgs(_Args):
    id: int = Field(ge=0)


class SubmitManyArgs(_Args):
    jobs: list[Any] = Field(min_length=1, max_length=MAX_LIST)


class QueueArgs(_Args):
    queue: str | None = Field(default=None, min_length=1, max_length=200)


class UpdateArgs(JobIdArgs):
    priority: int | None = Field(default=None, ge=-1000, le=1000)
    queue: str | None = Field(default=None, min_length=1, max_length=200)


class ConfigureQueueArgs(_Args):
    queue: str = Field(min_length=1, max_length=200)
    weight: float | None = Field(default=None, gt=0)
    max_concurrency: int | None = Field(default=None, ge=1)
    aging: float | None = Field(default=None, ge=0)


def parse(model: type[M], args: dict[str, Any]) -> M:
    try:
        return model.model_validate(args)
    except ValidationError as exc:
        raise InvalidRequest("invalid arguments", {"errors": validation_errors(exc)}) from None


class ScheduleAddArgs(_Args):
    name: str = Field(min_length=1, max_length=200)
    cron: str | None = None
    every: float | None = Field(default=None, gt=0)
    job: dict[str, Any]


class ScheduleNameArgs(_Args):
    name: str = Field(min_length=1)


class CleanArgs(_Args):
    older_than: float | None = Field(default=None, ge=0)
    status: Any = None
    queue: str | None = Field(default=None, min_length=1, max_length=200)
    all_users: bool = False


class CacheArgs(_Args):
    task: str | None = Field(default=None, min_length=1, max_length=200)


class Handlers:
    """The op table's handlers, one method per op, all on one :class:`Service`."""

    def __init__(self, service: Service, max_frame: int) -> None:
        self.service = service
        self.max_frame = max_frame
        self.table: dict[str, Handler] = {
            "hello": self.hello,
            "submit": self.submit,
            "submit_many": self.submit_many,
            "get": self.get,
            "list": self.list,
            "cancel": self.cancel,
            "retry": self.retry,
            "hold": self.hold,
            "release": self.release,
            "update": self.update,
            "wait": self.wait,
            "logs": self.logs,
            "outputs": self.outputs,
            "watch": self.watch,
            "close": self.close,
            "stats": self.stats,
            "tasks": self.tasks,
            "queues": self.queues,
            "pause": self.pause,
            "resume": self.resume,
            "configure_queue": self.configure_queue,
            "schedule_add": self.schedule_add,
            "schedule_list": self.schedule_list,
            "schedule_remove": self.schedule_remove,
            "clean": self.clean,
            "backup": self.backup,
            "reload": self.reload,
            "cache_stats": self.cache_stats,
            "cache_clear": self.cache_clear,
            "metrics": self.metrics,
        }
        """Op name → handler. ``hello`` lists exactly these ops."""

    async def hello(self, args: dict[str, Any], stream: Stream, caller: Caller) -> Any:
        a = parse(HelloArgs, args)
        if a.protocol != PROTOCOL_VERSION:
            raise InvalidRequest(
                f"protocol {a.protocol} is not supported",
                {"errors": [{"loc": ["protocol"], "msg": "unsupported version"}], "supported": [PROTOCOL_VERSION]},
            )
        return {
            "protocol": PROTOCOL_VERSION,
            "server": {"name": "pyrexisd", "version": __version__},
            "max_frame": self.max_frame,
            "ops": sorted(self.table),
        }

    async def submit(self, args: dict[str, Any], stream: Stream, caller: Caller) -> Any:
        return await self.service.submit(caller, args)

    async def submit_many(self, args: dict[str, Any], stream: Stream, caller: Caller) -> Any:
        a = parse(SubmitManyArgs, args)
        return {"jobs": await self.service.submit_many(caller, a.jobs)}

    async def get(self, args: dict[str, Any], stream: Stream, caller: Caller) -> Any:
        return await self.service.get(caller, parse(JobIdArgs, args).job_id)

    async def list(self, args: dict[str, Any], stream: Stream, caller: Caller) -> Any:
        a = parse(ListArgs, args)
        return await self.service.list_jobs(
            caller, statuses_arg(a.status), a.task, a.queue, a.limit, a.after, a.all_users, a.since, a.newest_first
        )

    async def cancel(self, args: dict[str, Any], stream: Stream, caller: Caller) -> Any:
        return await self.service.cancel(caller, parse(JobIdArgs, args).job_id)

    async def retry(self, args: dict[str, Any], stream: Stream, caller: Caller) -> Any:
        return await self.service.retry(caller, parse(JobIdArgs, args).job_id)

    async def hold(self, args: dict[str, Any], stream: Stream, caller: Caller) -> Any:
        return await self.service.hold(caller, parse(JobIdArgs, args).job_id)

    async def release(self, args: dict[str, Any], stream: Stream, caller: Caller) -> Any:
        return await self.service.release(caller, parse(JobIdArgs, args).job_id)

    async def update(self, args: dict[str, Any], stream: Stream, caller: Caller) -> Any:
        a = parse(UpdateArgs, args)
        if a.priority is None and a.queue is None:
            raise InvalidRequest(
                "update needs priority or queue",
                {"errors": [{"loc": ["priority"], "msg": "give priority and/or queue"}]},
            )
        return await self.service.update(caller, a.job_id, a.priority, a.queue)

    async def wait(self, args: dict[str, Any], stream: Stream, caller: Caller) -> Any:
        a = parse(WaitArgs, args)
        service = self.service
        if not a.events:
            return await service.wait(caller, a.job_id, a.timeout)
        stream.begin_stream()
        sub = service.subscribe(caller, EventFilter(job_id=a.job_id))
        try:
            row = await service.current(caller, a.job_id)
            _open_job_stream(service, sub, stream, row, None)
            if row.terminal:
                # It ended while its state was read: what it logged meanwhile still goes out.
                await _send_buffered_ranges(service, sub, stream)
                return row.record()
            deadline = None if a.timeout is None else asyncio.get_running_loop().time() + a.timeout
            ended = await _pump(service, sub, stream, deadline, stop_at_terminal=True)
            if ended in ("terminal", "closed"):
                return await service.get(caller, a.job_id)
            raise Timeout(f"job {a.job_id!r} is not finished after {a.timeout} s")
        finally:
            service.unsubscribe(sub)

    async def logs(self, args: dict[str, Any], stream: Stream, caller: Caller) -> Any:
        a = parse(LogsArgs, args)
        return await _follow_stored(self.service, a, stream, caller, "log")

    async def outputs(self, args: dict[str, Any], stream: Stream, caller: Caller) -> Any:
        a = parse(LogsArgs, args)
        return await _follow_stored(self.service, a, stream, caller, "output")

    async def watch(self, args: dict[str, Any], stream: Stream, caller: Caller) -> Any:
        a = parse(WatchArgs, args)
        service = self.service
        stream.begin_stream()
        kinds = frozenset(a.kinds) if a.kinds is not None else None
        # Subscribed before this handler first awaits: in effect before the next frame is read.
        sub = service.subscribe(caller, EventFilter(a.job_id, a.task, a.queue, kinds))
        try:
            if a.job_id is not None:
                row = await service.current(caller, a.job_id)
                _open_job_stream(service, sub, stream, row, kinds)
            await _pump(service, sub, stream, None, stop_at_terminal=False)
            return {}
        finally:
            service.unsubscribe(sub)

    async def close(self, args: dict[str, Any], stream: Stream, caller: Caller) -> Any:
        a = parse(CloseArgs, args)
        task = stream.close_stream(a.id)
        if task is None:
            return {"closed": False}
        await asyncio.wait([task])
        return {"closed": True}

    async def stats(self, args: dict[str, Any], stream: Stream, caller: Caller) -> Any:
        return self.service.stats(caller)

    async def metrics(self, args: dict[str, Any], stream: Stream, caller: Caller) -> Any:
        return {"text": self.service.metrics_text(caller), "content_type": CONTENT_TYPE}

    async def tasks(self, args: dict[str, Any], stream: Stream, caller: Caller) -> Any:
        return {"tasks": self.service.task_list(caller)}

    async def queues(self, args: dict[str, Any], stream: Stream, caller: Caller) -> Any:
        return {"queues": self.service.queue_rows(caller)}

    async def pause(self, args: dict[str, Any], stream: Stream, caller: Caller) -> Any:
        return {"queues": await self.service.set_paused(caller, parse(QueueArgs, args).queue, True)}

    async def resume(self, args: dict[str, Any], stream: Stream, caller: Caller) -> Any:
        return {"queues": await self.service.set_paused(caller, parse(QueueArgs, args).queue, False)}

    async def configure_queue(self, args: dict[str, Any], stream: Stream, caller: Caller) -> Any:
        a = parse(ConfigureQueueArgs, args)
        given = a.model_fields_set
        changes: QueueChanges = {}
        if "weight" in given and a.weight is not None:
            changes["weight"] = a.weight
        if "max_concurrency" in given:  # None removes the cap
            changes["max_concurrency"] = a.max_concurrency
        if "aging" in given and a.aging is not None:
            changes["aging"] = a.aging
        return await self.service.configure_queue(caller, a.queue, changes)

    async def schedule_add(self, args: dict[str, Any], stream: Stream, caller: Caller) -> Any:
        a = parse(ScheduleAddArgs, args)
        return await self.service.add_schedule(caller, a.name, a.cron, a.every, a.job)

    async def schedule_list(self, args: dict[str, Any], stream: Stream, caller: Caller) -> Any:
        return {"schedules": self.service.list_schedules(caller)}

    async def schedule_remove(self, args: dict[str, Any], stream: Stream, caller: Caller) -> Any:
        await self.service.remove_schedule(caller, parse(ScheduleNameArgs, args).name)
        return {}

    async def clean(self, args: dict[str, Any], stream: Stream, caller: Caller) -> Any:
        a = parse(CleanArgs, args)
        return await self.service.clean(caller, a.older_than, statuses_arg(a.status) or [], a.queue, a.all_users)

    async def backup(self, args: dict[str, Any], stream: Stream, caller: Caller) -> Any:
        chunks = self.service.backup(caller)
        total = 0
        async for chunk in chunks:
            if not total:
                stream.begin_stream()
            await stream.send({"kind": "backup", "offset": total, "data": chunk})
            total += len(chunk)
        return {"bytes": total}

    async def reload(self, args: dict[str, Any], stream: Stream, caller: Caller) -> Any:
        return await self.service.reload(caller)

    async def cache_stats(self, args: dict[str, Any], stream: Stream, caller: Caller) -> Any:
        return self.service.cache_stats(caller, parse(CacheArgs, args).task)

    async def cache_clear(self, args: dict[str, Any], stream: Stream, caller: Caller) -> Any:
        return await self.service.cache_clear(caller, parse(CacheArgs, args).task)


async def _follow_stored(service: Service, a: LogsArgs, stream: Stream, caller: Caller, kind: str) -> dict[str, int]:
    """``logs`` and ``outputs``: the stored ``kind`` events from ``since``, then (with
    ``follow``) the ones committed later, until the job is terminal and drained."""
    stream.begin_stream()
    row = await service.current(caller, a.job_id)
    read = service.read_logs if kind == "log" else service.read_outputs
    make = log_event if kind == "log" else output_event
    next_seq = a.since
    while True:
        signal = service.log_signal(row.seq)
        now = await service.find(caller, a.job_id)
        finished = now is None or now.terminal or not a.follow
        while True:
            items: Sequence[Any] = await read(row.seq, next_seq)
            for item in items:
                await stream.send(make(a.job_id, item))
                next_seq = item.seq + 1
            if len(items) < LOG_PAGE:
                break
        if finished or stream.closing.is_set():
            return {"next": next_seq}
        await _first(signal, stream.closing.wait(), service.stopping.wait())
        if service.stopping.is_set():
            raise ShuttingDown("the daemon is stopping")


async def _first(*aws: Any) -> None:
    """Wait until the first of ``aws`` is done; cancel the others."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()


def _open_job_stream(
    service: Service, sub: Subscription, stream: Stream, row: JobRow, kinds: frozenset[str] | None
) -> None:
    """A job stream starts where the job is: its state, and its latest progress."""
    # The snapshot reflects every state change buffered so far.
    sub.drop_state_events()
    now = service.clock()
    opening = [state_event(row, now), progress_event(row, now)]
    for event in opening:
        if event is not None and (kinds is None or event["kind"] in kinds):
            stream.send_nowait(event)


async def _pump(
    service: Service, sub: Subscription, stream: Stream, deadline: float | None, stop_at_terminal: bool
) -> str:
    """Forward a subscription's events until the job ends, ``close``, or the deadline.

    Events are written without waiting for the reader; while the reader lags, the
    subscription buffers up to its bound, and past that the stream ends ``overloaded``.
    """
    loop = asyncio.get_running_loop()
    cursors: dict[tuple[int, str], int] = {}
    while True:
        if sub.overflowed:
            raise Overloaded(
                "the stream's reader fell behind",
                {"limit": "stream_buffer", "dropped": sub.lost()},
            )
        for event in sub.take():
            if isinstance(event, StoredRange):
                await _send_stored(service, stream, event, cursors)
                continue
            stream.send_nowait(event)
            if stop_at_terminal and event["kind"] == "state" and event["status"] in TERMINAL:
                return "terminal"
        if stream.closing.is_set():
            return "closed"
        if service.stopping.is_set():
            raise ShuttingDown("the daemon is stopping")
        waits: list[Any] = [stream.closing.wait(), service.stopping.wait(), sub.overflow.wait()]
        # While the peer is not reading, wake when it reads again (or the buffer overflows).
        waits.append(sub.wait() if stream.writable() else stream.until_writable())
        if deadline is not None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return "deadline"
            waits.append(asyncio.sleep(remaining))
        await _first(*waits)


async def _send_buffered_ranges(service: Service, sub: Subscription, stream: Stream) -> None:
    """Send the log lines and outputs a subscription holds ranges of (the rest is stale)."""
    cursors: dict[tuple[int, str], int] = {}
    for event in sub.take():
        if isinstance(event, StoredRange):
            await _send_stored(service, stream, event, cursors)


async def _send_stored(
    service: Service, stream: Stream, stored: StoredRange, cursors: dict[tuple[int, str], int]
) -> None:
    """Send the stored log lines or outputs a range stands for, read from the store."""
    key = (stored.job_seq, stored.kind)
    start = max(cursors.get(key, stored.first), stored.first)
    read = service.read_logs if stored.kind == "log" else service.read_outputs
    while start <= stored.last:
        page: list[Any] = await read(stored.job_seq, start)
        sent = False
        for item in page:
            if item.seq > stored.last:
                break
            event = log_event(stored.job_id, item) if stored.kind == "log" else output_event(stored.job_id, item)
            await stream.send(event)
            start = item.seq + 1
            sent = True
        if not sent:
            break
    cursors[key] = start


def statuses_arg(value: Any) -> list[str] | None:
    """The ``status`` filter of ``list``: one status or a list of them."""
    if value is None:
        return None
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise InvalidRequest("status must be a string or a list of strings", {"errors": [{"loc": ["status"], "msg": "bad type"}]})
    unknown = [v for v in values if v not in ALL_STATUSES]
    if unknown:
        raise InvalidRequest(
            f"unknown status {unknown[0]!r}", {"errors": [{"loc": ["status"], "msg": f"one of {', '.join(ALL_STATUSES)}"}]}
        )
    return values
