"""One function per protocol op. Arguments are validated here, at the boundary.

Each handler takes the request's ``args`` map and a stream for events, and returns the
op's result; errors are raised as :mod:`protocol.errors` classes and become failure
frames in the server.
"""

from __future__ import annotations

from typing import Any, Optional, TypeVar

import msgpack
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from protocol import PROTOCOL_VERSION
from protocol.errors import InvalidRequest
from protocol.models import validation_errors
from pyrexisd import __version__
from pyrexisd.engine import Engine, encode_cursor, statuses_arg
from pyrexisd.server import Handler, Stream

M = TypeVar("M", bound=BaseModel)

MAX_LIST = 10_000
LIST_FRAME_MARGIN = 64 * 1024  # room for the frame's envelope around a page of records


class _Args(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class HelloArgs(_Args):
    protocol: int = PROTOCOL_VERSION
    client: Optional[str] = None


class JobIdArgs(_Args):
    job_id: str = Field(min_length=1)


class WaitArgs(JobIdArgs):
    timeout: Optional[float] = Field(default=None, ge=0)
    events: bool = False


class LogsArgs(JobIdArgs):
    follow: bool = False
    since: int = Field(default=1, ge=1)


class ListArgs(_Args):
    status: Any = None
    task: Optional[str] = None
    queue: Optional[str] = None
    limit: int = Field(default=100, ge=1, le=MAX_LIST)
    after: Optional[str] = None


class SubmitManyArgs(_Args):
    jobs: list[Any] = Field(min_length=1, max_length=MAX_LIST)


class QueueArgs(_Args):
    queue: Optional[str] = Field(default=None, min_length=1, max_length=200)


class ConfigureQueueArgs(_Args):
    queue: str = Field(min_length=1, max_length=200)
    weight: Optional[float] = Field(default=None, gt=0)
    max_concurrency: Optional[int] = Field(default=None, ge=1)
    aging: Optional[float] = Field(default=None, ge=0)


def parse(model: type[M], args: dict[str, Any]) -> M:
    try:
        return model.model_validate(args)
    except ValidationError as exc:
        raise InvalidRequest("invalid arguments", {"errors": validation_errors(exc)}) from None


def make_handlers(engine: Engine, max_frame: int) -> dict[str, Handler]:
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
        records, cursor, rows = await engine.list(statuses, a.task, a.queue, a.limit, a.after)
        # No frame may exceed max_frame: return a shorter page when the records are big.
        budget = max_frame - LIST_FRAME_MARGIN
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
        if a.events:
            raise InvalidRequest(
                "wait with events is not supported by this daemon yet",
                {"errors": [{"loc": ["events"], "msg": "not supported yet"}]},
            )
        return await engine.wait(a.job_id, a.timeout)

    async def logs(args: dict[str, Any], stream: Stream) -> Any:
        a = parse(LogsArgs, args)
        if a.follow:
            raise InvalidRequest(
                "logs with follow is not supported by this daemon yet",
                {"errors": [{"loc": ["follow"], "msg": "not supported yet"}]},
            )
        job_seq, lines = await engine.logs(a.job_id, a.since)
        next_seq = a.since
        while lines:
            for line in lines:
                await stream.send(
                    {"kind": "log", "job_id": a.job_id, "seq": line.seq, "stream": line.stream, "line": line.line, "time": line.time}
                )
                next_seq = line.seq + 1
            lines = await engine.more_logs(job_seq, next_seq)
        return {"next": next_seq}

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
        changes = {k: getattr(a, k) for k in ("weight", "max_concurrency", "aging") if k in a.model_fields_set}
        if "weight" in changes and changes["weight"] is None:
            del changes["weight"]
        if "aging" in changes and changes["aging"] is None:
            del changes["aging"]
        return await engine.configure_queue(a.queue, changes)

    handlers: dict[str, Handler] = {
        "hello": hello,
        "submit": submit,
        "submit_many": submit_many,
        "get": get,
        "list": list_,
        "cancel": cancel,
        "retry": retry,
        "wait": wait,
        "logs": logs,
        "stats": stats,
        "tasks": tasks,
        "queues": queues,
        "pause": pause,
        "resume": resume,
        "configure_queue": configure_queue,
    }
    return handlers


def _packed_size(value: Any) -> int:
    return len(msgpack.packb(value, use_bin_type=True))
