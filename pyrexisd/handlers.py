"""One function per protocol op. Arguments are validated here, at the boundary.

Each handler takes the request's ``args`` map and a stream for events, and returns the
op's result; errors are raised as :mod:`protocol.errors` classes and become failure
frames in the server.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

import msgpack
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from protocol import PROTOCOL_VERSION
from protocol.errors import InvalidRequest, Overloaded, ShuttingDown, Timeout
from protocol.models import validation_errors
from protocol.status import ALL_STATUSES, TERMINAL
from pyrexisd import __version__
from pyrexisd.config import FRAME_ENVELOPE
from pyrexisd.engine import LOG_PAGE, Engine, encode_cursor
from pyrexisd.events import (
    EventFilter,
    Subscription,
    log_event,
    output_event,
    progress_event,
    state_event,
)
from pyrexisd.jobs import JobRow
from pyrexisd.recurring import Recurring
from pyrexisd.server import Handler, Stream
from pyrexisd.store import QueueChanges

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


def make_handlers(engine: Engine, max_frame: int, recurring: Recurring) -> dict[str, Handler]:
    """The op table: op name → handler. ``hello`` lists exactly these ops."""

    async def hello(args: dict[str, Any], stream: Stream) -> Any:
        a = parse(HelloArgs, args)
        if a.protocol != PROTOCOL_VERSION:
            raise InvalidRequest(
                f"protocol {a.protocol} is not supported",
                {"errors": [{"loc": ["protocol"], "msg": "unsupported version"}], "supported": [PROTOCOL_VERSION]},
            )
        return {
            "protocol": PROTOCOL_VERSION,
            "server": {"name": "pyrexisd", "version": __version__},
            "max_frame": max_frame,
            "ops": sorted(handlers),
        }

    async def submit(args: dict[str, Any], stream: Stream) -> Any:
        return await engine.submit(args)

    async def submit_many(args: dict[str, Any], stream: Stream) -> Any:
        a = parse(SubmitManyArgs, args)
        return {"jobs": await engine.submit_many(a.jobs)}

    async def get(args: dict[str, Any], stream: Stream) -> Any:
        return await engine.get(parse(JobIdArgs, args).job_id)

    async def list_(args: dict[str, Any], stream: Stream) -> Any:
        a = parse(ListArgs, args)
        statuses = statuses_arg(a.status)
        records, cursor, rows = await engine.list_jobs(statuses, a.task, a.queue, a.limit, a.after)
        # No frame may exceed max_frame: return a shorter page when the records are big.
        # One record always fits (submit refuses specs whose record could not).
        budget = max_frame - FRAME_ENVELOPE
        size = 0
        for i, record in enumerate(records):
            size += _packed_size(record)
            if size > budget:
                keep = max(1, i)
                return {"jobs": records[:keep], "next": encode_cursor(rows[keep - 1])}
        return {"jobs": records, "next": cursor}

    async def cancel(args: dict[str, Any], stream: Stream) -> Any:
        return await engine.cancel(parse(JobIdArgs, args).job_id)

    async def retry(args: dict[str, Any], stream: Stream) -> Any:
        return await engine.retry(parse(JobIdArgs, args).job_id)

    async def wait(args: dict[str, Any], stream: Stream) -> Any:
        a = parse(WaitArgs, args)
        if not a.events:
            return await engine.wait(a.job_id, a.timeout)
        stream.streaming = True
        sub = engine.hub.subscribe(EventFilter(job_id=a.job_id))
        try:
            row = await engine.snapshot(a.job_id)
            await _open_job_stream(engine, sub, stream, row, None)
            if row.terminal:
                return row.record()
            deadline = None if a.timeout is None else asyncio.get_running_loop().time() + a.timeout
            while True:
                ended = await _pump(engine, sub, stream, deadline, stop_at_terminal=True)
                if ended == "terminal":
                    return await engine.get(a.job_id)
                if ended == "closed":
                    return await engine.get(a.job_id)
                raise Timeout(f"job {a.job_id!r} is not finished after {a.timeout} s")
        finally:
            engine.hub.unsubscribe(sub)

    async def logs(args: dict[str, Any], stream: Stream) -> Any:
        a = parse(LogsArgs, args)
        stream.streaming = True
        row = await engine.snapshot(a.job_id)
        next_seq = a.since
        while True:
            signal = engine.log_signal(row.seq)
            current = await engine.store.get_job(a.job_id)
            finished = current is None or current.terminal or not a.follow
            while True:
                lines = await engine.more_logs(row.seq, next_seq)
                for line in lines:
                    await stream.send(log_event(a.job_id, line))
                    next_seq = line.seq + 1
                if len(lines) < LOG_PAGE:
                    break
            if finished or stream.closing.is_set():
                return {"next": next_seq}
            await _first(signal, stream.closing.wait(), engine.stopping_event.wait())
            if engine.stopping_event.is_set():
                raise ShuttingDown("the daemon is stopping")

    async def watch(args: dict[str, Any], stream: Stream) -> Any:
        a = parse(WatchArgs, args)
        stream.streaming = True
        kinds = frozenset(a.kinds) if a.kinds is not None else None
        # Subscribed before this handler first awaits: in effect before the next frame is read.
        sub = engine.hub.subscribe(EventFilter(a.job_id, a.task, a.queue, kinds))
        try:
            if a.job_id is not None:
                row = await engine.snapshot(a.job_id)
                await _open_job_stream(engine, sub, stream, row, kinds)
            await _pump(engine, sub, stream, None, stop_at_terminal=False)
            return {}
        finally:
            engine.hub.unsubscribe(sub)

    async def close(args: dict[str, Any], stream: Stream) -> Any:
        a = parse(CloseArgs, args)
        task = stream.close_stream(a.id)
        if task is None:
            return {"closed": False}
        await asyncio.wait([task])
        return {"closed": True}

    async def hold(args: dict[str, Any], stream: Stream) -> Any:
        return await engine.hold(parse(JobIdArgs, args).job_id)

    async def release(args: dict[str, Any], stream: Stream) -> Any:
        return await engine.release(parse(JobIdArgs, args).job_id)

    async def update(args: dict[str, Any], stream: Stream) -> Any:
        a = parse(UpdateArgs, args)
        if a.priority is None and a.queue is None:
            raise InvalidRequest(
                "update needs priority or queue",
                {"errors": [{"loc": ["priority"], "msg": "give priority and/or queue"}]},
            )
        return await engine.update(a.job_id, a.priority, a.queue)

    async def schedule_add(args: dict[str, Any], stream: Stream) -> Any:
        a = parse(ScheduleAddArgs, args)
        engine._check_open()
        return await recurring.add(a.name, a.cron, a.every, a.job)

    async def schedule_list(args: dict[str, Any], stream: Stream) -> Any:
        return {"schedules": recurring.list()}

    async def schedule_remove(args: dict[str, Any], stream: Stream) -> Any:
        await recurring.remove(parse(ScheduleNameArgs, args).name)
        return {}

    async def stats(args: dict[str, Any], stream: Stream) -> Any:
        return engine.stats()

    async def tasks(args: dict[str, Any], stream: Stream) -> Any:
        return {"tasks": engine.task_list()}

    async def queues(args: dict[str, Any], stream: Stream) -> Any:
        return {"queues": engine.queue_rows()}

    async def pause(args: dict[str, Any], stream: Stream) -> Any:
        return {"queues": await engine.set_paused(parse(QueueArgs, args).queue, True)}

    async def resume(args: dict[str, Any], stream: Stream) -> Any:
        return {"queues": await engine.set_paused(parse(QueueArgs, args).queue, False)}

    async def configure_queue(args: dict[str, Any], stream: Stream) -> Any:
        a = parse(ConfigureQueueArgs, args)
        given = a.model_fields_set
        changes: QueueChanges = {}
        if "weight" in given and a.weight is not None:
            changes["weight"] = a.weight
        if "max_concurrency" in given:  # None removes the cap
            changes["max_concurrency"] = a.max_concurrency
        if "aging" in given and a.aging is not None:
            changes["aging"] = a.aging
        return await engine.configure_queue(a.queue, changes)

    handlers: dict[str, Handler] = {
        "hello": hello,
        "submit": submit,
        "submit_many": submit_many,
        "get": get,
        "list": list_,
        "cancel": cancel,
        "retry": retry,
        "hold": hold,
        "release": release,
        "update": update,
        "wait": wait,
        "logs": logs,
        "watch": watch,
        "close": close,
        "stats": stats,
        "tasks": tasks,
        "queues": queues,
        "pause": pause,
        "resume": resume,
        "configure_queue": configure_queue,
        "schedule_add": schedule_add,
        "schedule_list": schedule_list,
        "schedule_remove": schedule_remove,
    }
    return handlers


async def _first(*aws: Any) -> None:
    """Wait until the first of ``aws`` is done; cancel the others."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()


async def _open_job_stream(
    engine: Engine, sub: Subscription, stream: Stream, row: JobRow, kinds: frozenset[str] | None
) -> None:
    """A job stream starts where the job is: its state, and its latest progress."""
    # The snapshot reflects every state change buffered so far.
    sub.drop_state_events()
    now = engine.clock()
    opening = [state_event(row, now), progress_event(row, now)]
    for event in opening:
        if event is not None and (kinds is None or event["kind"] in kinds):
            stream.send_nowait(event)


async def _pump(
    engine: Engine, sub: Subscription, stream: Stream, deadline: float | None, stop_at_terminal: bool
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
            if "_to" in event:
                await _send_stored(engine, stream, event, cursors)
                continue
            stream.send_nowait(event)
            if stop_at_terminal and event["kind"] == "state" and event["status"] in TERMINAL:
                return "terminal"
        if stream.closing.is_set():
            return "closed"
        if engine.stopping_event.is_set():
            raise ShuttingDown("the daemon is stopping")
        waits: list[Any] = [stream.closing.wait(), engine.stopping_event.wait(), sub.overflow.wait()]
        # While the peer is not reading, wake when it reads again (or the buffer overflows).
        waits.append(sub.wait() if stream.writable() else stream.until_writable())
        if deadline is not None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return "deadline"
            waits.append(asyncio.sleep(remaining))
        await _first(*waits)


async def _send_stored(
    engine: Engine, stream: Stream, marker: dict[str, Any], cursors: dict[tuple[int, str], int]
) -> None:
    """Send the stored log lines or outputs a range marker stands for, read from the store."""
    job_seq, kind, job_id = marker["_seq"], marker["kind"], marker["job_id"]
    key = (job_seq, kind)
    start = max(cursors.get(key, marker["_from"]), marker["_from"])
    end = marker["_to"]
    while start <= end:
        page: list[Any] = await (engine.more_logs if kind == "log" else engine.more_outputs)(job_seq, start)
        sent = False
        for item in page:
            if item.seq > end:
                break
            await stream.send(log_event(job_id, item) if kind == "log" else output_event(job_id, item))
            start = item.seq + 1
            sent = True
        if not sent:
            break
    cursors[key] = start


def _packed_size(value: Any) -> int:
    return len(msgpack.packb(value, use_bin_type=True))


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
