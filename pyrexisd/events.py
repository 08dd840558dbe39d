"""Fan-out of job events to the streams that watch them.

``publish`` is synchronous and cheap: it appends the event to the bounded buffer of each
matching subscription and wakes its reader. A subscription whose reader falls behind
stops buffering once full; its stream then ends with ``overloaded`` and the number of
events it did not deliver. Publishing never waits for a reader, so a slow client can
never slow the daemon, its jobs or other clients.

Log lines and outputs are stored before they are published, so they travel as
:class:`StoredRange` markers ("lines first..last of this job are committed") and the
stream reads them from the store as it sends them. Consecutive markers of one job
merge, so a job printing a million lines costs a subscription one buffer slot, not a
million: a reader that keeps up is never ended by a burst.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # event shapes only read these rows' fields
    from pyrexisd.core.model import JobRow, LogLine, OutputItem

DEFAULT_BUFFER = 4096


@dataclass(slots=True)
class StoredRange:
    """"Items ``first``..``last`` of this job's log (or outputs) are committed": what a
    stream reads from the store and sends as ``log`` (or ``output``) events."""

    kind: str  # "log" or "output"
    job_id: str
    job_seq: int
    first: int
    last: int


Event = dict[str, Any] | StoredRange
"""A ``state`` or ``progress`` event as sent, or a range of stored items to send."""


def kind_of(event: Event) -> str:
    return event.kind if isinstance(event, StoredRange) else str(event["kind"])


@dataclass(frozen=True, slots=True)
class EventFilter:
    """What a subscription wants; ``None`` matches anything. ``visible`` is the job core's
    test of a job's ``owner`` field for a subscriber that may not see every job."""

    job_id: str | None = None
    task: str | None = None
    queue: str | None = None
    kinds: frozenset[str] | None = None
    visible: Callable[[int | None], bool] | None = None

    def matches(self, event: Event, task: str, queue: str, owner: int | None = None) -> bool:
        if self.visible is not None and not self.visible(owner):
            return False
        if self.kinds is not None and kind_of(event) not in self.kinds:
            return False
        if self.task is not None and task != self.task:
            return False
        if self.queue is not None and queue != self.queue:
            return False
        return True


@dataclass(eq=False)
class Subscription:
    """One stream's view of the event flow."""

    filter: EventFilter
    limit: int = DEFAULT_BUFFER
    buffer: deque[Event] = field(default_factory=deque)
    dropped: int = 0
    overflow: asyncio.Event = field(default_factory=asyncio.Event)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def overflowed(self) -> bool:
        return self.dropped > 0

    def push(self, event: Event) -> None:
        if isinstance(event, StoredRange):
            last = self.buffer[-1] if self.buffer else None
            if isinstance(last, StoredRange) and last.job_seq == event.job_seq and last.kind == event.kind:
                last.last = event.last  # the range grows; nothing more to buffer
                self._wake.set()
                return
            event = replace(event)  # it may grow later, and other subscriptions share it
        if self.dropped or len(self.buffer) >= self.limit:
            self.dropped += 1
            self.overflow.set()
        else:
            self.buffer.append(event)
        self._wake.set()

    async def wait(self) -> None:
        """Until there is an event to take (or the buffer overflowed)."""
        while not self.buffer and not self.dropped:
            self._wake.clear()
            await self._wake.wait()

    def take(self) -> list[Event]:
        events = list(self.buffer)
        self.buffer.clear()
        return events

    def lost(self) -> int:
        """Events this stream will not deliver: those dropped and those still buffered."""
        return self.dropped + len(self.buffer)

    def drop_state_events(self) -> None:
        """Forget buffered ``state`` events: a snapshot taken now already reflects them."""
        kept = [e for e in self.buffer if kind_of(e) != "state"]
        self.buffer.clear()
        self.buffer.extend(kept)


class EventHub:
    """Routes each event to the subscriptions that match it."""

    def __init__(self, buffer_limit: int = DEFAULT_BUFFER) -> None:
        self.buffer_limit = buffer_limit
        self._by_job: dict[str, set[Subscription]] = {}
        self._broad: set[Subscription] = set()
        # Of the streams already closed: how many ended overloaded, how many events they lost.
        self._overflowed_streams = 0
        self._dropped_events = 0

    def subscribe(self, flt: EventFilter) -> Subscription:
        sub = Subscription(flt, self.buffer_limit)
        if flt.job_id is not None:
            self._by_job.setdefault(flt.job_id, set()).add(sub)
        else:
            self._broad.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub.dropped:
            self._overflowed_streams += 1
            self._dropped_events += sub.dropped
        job_id = sub.filter.job_id
        if job_id is None:
            self._broad.discard(sub)
            return
        subs = self._by_job.get(job_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._by_job[job_id]

    def drops(self) -> dict[str, int]:
        """Streams open now, and how many streams (open or closed) fell behind and how
        many events they dropped since the start: a reader too slow for its events."""
        open_subs = [*self._broad, *(s for subs in self._by_job.values() for s in subs)]
        return {
            "streams": len(open_subs),
            "overflowed": self._overflowed_streams + sum(1 for s in open_subs if s.dropped),
            "dropped": self._dropped_events + sum(s.dropped for s in open_subs),
        }

    def wants(self, job_id: str) -> bool:
        """Whether anyone might receive an event of ``job_id`` (skip building it if not)."""
        return bool(self._broad) or job_id in self._by_job

    def follows(self, job_id: str) -> bool:
        """Whether a stream of this very job is open (not counting broad watchers)."""
        return job_id in self._by_job

    def publish(self, event: Event, task: str, queue: str, owner: int | None = None) -> None:
        """Hand ``event`` of a job of ``task``, ``queue`` and ``owner`` to the subscriptions
        it matches."""
        job_subs = self._by_job.get(event.job_id if isinstance(event, StoredRange) else event["job_id"])
        if job_subs:
            for sub in job_subs:
                if sub.filter.matches(event, task, queue, owner):
                    sub.push(event)
        for sub in self._broad:
            if sub.filter.matches(event, task, queue, owner):
                sub.push(event)


# -- the contract's event shapes ------------------------------------------------------
def state_event(row: JobRow, now: float) -> dict[str, Any]:
    event: dict[str, Any] = {
        "kind": "state",
        "job_id": row.job_id,
        "status": row.status,
        "attempt": row.attempts,
        "time": now,
    }
    if row.status in ("failed", "cancelled"):
        event["error"] = row.error
    return event


def log_event(job_id: str, line: LogLine) -> dict[str, Any]:
    return {"kind": "log", "job_id": job_id, "seq": line.seq, "stream": line.stream, "line": line.line, "time": line.time}


def output_event(job_id: str, item: OutputItem) -> dict[str, Any]:
    return {"kind": "output", "job_id": job_id, "seq": item.seq, "value": item.value, "time": item.time}


def progress_event(row: JobRow, now: float) -> dict[str, Any] | None:
    if row.progress is None:
        return None
    return {"kind": "progress", "job_id": row.job_id, **row.progress, "time": now}
