"""One attempt of a job while it runs, and what it reports: log lines, outputs, progress.

Lines and outputs are batched per loop iteration into one store write, and reach
watchers only once committed, so a ``seq`` a client saw is never reused after a crash.
Progress is coalesced: at most one event per :data:`PROGRESS_EVERY` seconds per job, and
the latest value always arrives. An :class:`AttemptEvents` is handed only what it needs:
the store to write to, the ledger's publisher of committed lines, the event hub for
progress, and the limits.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pyrexisd.config import MAX_PROGRESS_MESSAGE
from pyrexisd.core.model import JobRow, LogLine, OutputItem, stored_problem
from pyrexisd.events import EventHub, progress_event
from pyrexisd.executors.base import JobCall, Outcome, split_lines
from pyrexisd.store import Store

log = logging.getLogger(__name__)

PROGRESS_EVERY = 0.1  # seconds between progress events of one job
PROGRESS_FLUSH = 0.5  # seconds between progress writes of the running jobs

PublishStored = Callable[[JobRow, Sequence[LogLine], Sequence[OutputItem]], None]


class LockView(Protocol):
    """What the progress writer asks of the ledger."""

    def is_locked(self, seq: int) -> bool: ...


@dataclass(frozen=True, slots=True)
class AttemptLimits:
    max_log_bytes: int  # per attempt; later lines are dropped, with a note
    max_result: int  # per output item, as for a result


class Attempt:
    """An attempt that is running (or, once ``ended``, still winding down)."""

    __slots__ = ("row", "call", "events", "task", "timer", "ended", "progress_dirty")

    def __init__(self, row: JobRow) -> None:
        self.row = row
        self.call: JobCall | None = None
        self.events: AttemptEvents | None = None
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.ended = False  # its outcome is decided; a late result is discarded
        self.progress_dirty = False  # progress changed since it was last written


class AttemptEvents:
    """The :class:`~pyrexisd.executors.base.JobEvents` of one attempt, on the loop's thread."""

    __slots__ = (
        "attempt", "store", "publish_stored", "hub", "limits", "clock", "on_progress",
        "_lines", "_outputs", "_flush", "_last_write", "_progress_at", "_progress_handle",
        "_log_bytes", "dropped_lines", "output_problem",
    )  # fmt: skip

    def __init__(
        self,
        attempt: Attempt,
        store: Store,
        publish_stored: PublishStored,
        hub: EventHub,
        limits: AttemptLimits,
        clock: Callable[[], float],
        on_progress: Callable[[], None],
    ) -> None:
        self.attempt = attempt
        self.store = store
        self.publish_stored = publish_stored
        self.hub = hub
        self.limits = limits
        self.clock = clock
        self.on_progress = on_progress  # progress changed: it is written within a while
        self._lines: list[LogLine] = []
        self._outputs: list[OutputItem] = []
        self._flush: asyncio.Handle | None = None
        self._last_write: asyncio.Future[None] | None = None
        self._progress_at = 0.0
        self._progress_handle: asyncio.TimerHandle | None = None
        self._log_bytes = 0
        self.dropped_lines = 0
        self.output_problem: Outcome | None = None  # an item that could not be kept fails the attempt

    def log(self, stream: str, text: str) -> None:
        """Store ``text`` as log lines: split at line ends, cut at MAX_LINE characters."""
        if self.attempt.ended:
            return  # a thread still printing after its cancel or timeout: discarded
        for line in split_lines(text):
            self._log_line(stream, line)

    def keeps_logs(self) -> bool:
        return self._log_bytes <= self.limits.max_log_bytes

    def skipped_lines(self, count: int) -> None:
        self.dropped_lines += count

    def _log_line(self, stream: str, line: str) -> None:
        limit = self.limits.max_log_bytes
        self._log_bytes += (len(line) if line.isascii() else len(line.encode("utf-8", "replace"))) + 1
        if self._log_bytes > limit:
            # A job printing without end must not fill the disk: keep the first part only.
            if not self.dropped_lines:
                self._append("log", f"[pyrexis] log limit of {limit} bytes per attempt reached; "
                             "further lines of this attempt are dropped")
            self.dropped_lines += 1
            return
        self._append(stream, line)

    def _append(self, stream: str, line: str) -> None:
        row = self.attempt.row
        row.log_seq += 1
        self._lines.append(LogLine(row.seq, row.log_seq, stream, line, self.clock()))
        self._schedule_flush()

    def output(self, value: Any) -> None:
        if self.attempt.ended or self.output_problem is not None:
            return
        self.output_problem = stored_problem(value, "an output", self.limits.max_result)
        if self.output_problem is not None:
            return
        row = self.attempt.row
        row.output_seq += 1
        self._outputs.append(OutputItem(row.seq, row.output_seq, value, self.clock()))
        self._schedule_flush()

    def spawned(self, pid: int, started: int | None) -> None:
        row = self.attempt.row
        row.pid, row.pid_start = pid, started
        self.store.write(pids=[(row.seq, pid, started)]).add_done_callback(
            functools.partial(log_write_failure, [row.job_id])
        )

    def _schedule_flush(self) -> None:
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write the lines and outputs gathered so far; watchers see them once committed."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if not self._lines and not self._outputs:
            return
        lines, self._lines = self._lines, []
        outputs, self._outputs = self._outputs, []
        fut = self.store.write(logs=lines, outputs=outputs)
        row = self.attempt.row

        def stored(f: asyncio.Future[None]) -> None:
            if f.cancelled() or f.exception() is not None:
                log.warning("log lines and outputs of job %s not stored: %s", row.job_id,
                            None if f.cancelled() else f.exception(), extra={"job_id": row.job_id})
                return
            self.publish_stored(row, lines, outputs)

        fut.add_done_callback(stored)
        self._last_write = fut

    async def drain(self) -> None:
        self.flush()
        fut = self._last_write
        if fut is not None and not fut.done():
            await asyncio.gather(asyncio.shield(fut), return_exceptions=True)

    def progress(self, fraction: float | None, message: str | None) -> None:
        attempt = self.attempt
        if attempt.ended:
            return
        if message is not None and len(message) > MAX_PROGRESS_MESSAGE:
            message = message[: MAX_PROGRESS_MESSAGE - 1] + "…"
        attempt.row.progress = {"fraction": fraction, "message": message}
        attempt.progress_dirty = True
        self.on_progress()
        if self._progress_handle is not None:
            return  # a trailing publish is already due and will carry this value
        wait = self._progress_at + PROGRESS_EVERY - time.monotonic()
        if wait <= 0:
            self._publish_progress()
        else:
            self._progress_handle = asyncio.get_running_loop().call_later(wait, self._publish_progress)

    def flush_progress(self) -> None:
        """The attempt is ending: a progress event still held back goes out now."""
        if self._progress_handle is not None:
            self._progress_handle.cancel()
            self._publish_progress(ending=True)

    def _publish_progress(self, ending: bool = False) -> None:
        self._progress_handle = None
        self._progress_at = time.monotonic()
        row = self.attempt.row
        if (self.attempt.ended and not ending) or not self.hub.wants(row.job_id):
            return
        event = progress_event(row, self.clock())
        if event is not None:
            self.hub.publish(event, row.task, row.queue, row.owner)


def log_write_failure(job_ids: list[str], fut: asyncio.Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        shown = ", ".join(job_ids[:5]) + (" ..." if len(job_ids) > 5 else "")
        log.warning("a progress or pid update of job %s was not stored: %s", shown, fut.exception(),
                    extra={"job_id": job_ids[0] if len(job_ids) == 1 else None})


class ProgressWriter:
    """Running jobs' latest progress, written at most every :data:`PROGRESS_FLUSH`
    seconds in one write (a progress value lost in a crash costs nothing: the next attempt
    starts afresh)."""

    def __init__(self, store: Store, ledger: LockView, active: Mapping[int, Attempt]) -> None:
        self.store = store
        self.ledger = ledger
        self.active = active  # dispatch's running attempts, by seq
        self._timer: asyncio.TimerHandle | None = None

    def changed(self) -> None:
        """An attempt's progress changed: it is written within PROGRESS_FLUSH seconds."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(PROGRESS_FLUSH, self._write)

    def _write(self) -> None:
        self._timer = None
        rows = []
        for attempt in self.active.values():
            # A row being changed is written by that change, with its progress.
            if attempt.progress_dirty and not attempt.ended and not self.ledger.is_locked(attempt.row.seq):
                attempt.progress_dirty = False
                rows.append(attempt.row)
        if rows:
            self.store.write(jobs=rows).add_done_callback(
                functools.partial(log_write_failure, [row.job_id for row in rows])
            )

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
