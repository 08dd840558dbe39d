"""The job row, its log lines and outputs, and the pure rules that change a row.

A plain slotted dataclass rather than a pydantic model: a row is built and changed on the
hot path of every job. The wire shape is produced by :meth:`JobRow.record`. Nothing here
does I/O or reads a clock: every rule is handed the time it applies at, so the rules are
tested without a daemon.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field, fields
from typing import Any

import msgpack

from protocol.errors import Internal
from protocol.status import TERMINAL, is_legal
from pyrexisd.config import MAX_MESSAGE
from pyrexisd.executors.base import Outcome, too_large
from pyrexisd.retry import Backoff, retries_left

# Waiting statuses the scheduler tracks (held and blocked jobs wait outside it).
WAITING_IN_SCHEDULER = frozenset({"pending", "scheduled", "retrying"})


class IllegalTransition(Internal):
    """A status change the contract forbids: always a bug in the daemon."""


@dataclass(slots=True)
class JobRow:
    seq: int
    job_id: str
    task: str
    args: dict[str, Any]
    queue: str
    priority: int
    mode: str
    status: str
    created_at: float
    max_retries: int
    on_interrupt: str
    dependency_policy: str = "all_completed"
    depends_on: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    attempts: int = 0
    round_base: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    run_at: float | None = None
    enqueued_at: float = 0.0
    result: Any = None
    error: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None
    log_seq: int = 0
    spec_digest: bytes = b""
    output_seq: int = 0
    pid: int | None = None  # the process running the attempt (shell and process modes)
    pid_start: int | None = None  # its start time, so a recycled pid is never mistaken for it
    sched_key: float | None = None  # the scheduler's static key while pending (the store pages by it)
    owner: int | None = None  # the submitter's uid; None for jobs older than ownership
    # A pipeline job's last checkpoint: per-stage figures and where a resume starts.
    pipeline: dict[str, Any] | None = None
    cached_from: str | None = None  # answered from the result cache: the job whose result it is
    # ``args`` never change after submit: packed once, written as is on every change.
    args_blob: bytes | None = field(default=None, repr=False, compare=False)
    # The args as the task's model validated them at submit (not stored): the first
    # attempt in this daemon runs with them instead of validating the args again.
    kwargs: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def memento(self) -> tuple[Any, ...]:
        """Every field's value, to :meth:`restore` if a change cannot be committed."""
        return _ALL_FIELDS(self)

    def restore(self, memento: tuple[Any, ...]) -> None:
        for name, value in zip(_FIELD_NAMES, memento, strict=False):
            setattr(self, name, value)

    def move(self, new: str) -> None:
        """Change status, refusing anything the contract's table does not allow."""
        if not is_legal(self.status, new):
            raise IllegalTransition(
                f"job {self.job_id}: illegal status change {self.status} -> {new}",
                {"status": self.status},
            )
        self.status = new

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def record(self) -> dict[str, Any]:
        """The contract's Job record."""
        return {
            "job_id": self.job_id,
            "task": self.task,
            "args": self.args,
            "queue": self.queue,
            "priority": self.priority,
            "mode": self.mode,
            "status": self.status,
            "attempts": self.attempts,
            "max_retries": self.max_retries,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "run_at": self.run_at,
            "result": self.result if self.status == "completed" else None,
            "error": self.error,
            "progress": self.progress,
            "depends_on": self.depends_on,
            "dependency_policy": self.dependency_policy,
            "labels": self.labels,
            "on_interrupt": self.on_interrupt,
            "timeout": self.timeout,
            "owner": self.owner,
            "pipeline": self.pipeline,
            "cached": self.cached_from is not None,
            "cached_from": self.cached_from,
        }


_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(JobRow))
_ALL_FIELDS = operator.attrgetter(*_FIELD_NAMES)


@dataclass(frozen=True, slots=True)
class LogLine:
    """One stored line of a job's log; ``seq`` counts from 1 per job, across attempts."""

    job_seq: int
    seq: int
    stream: str
    line: str
    time: float


@dataclass(frozen=True, slots=True)
class OutputItem:
    """One partial result a job yielded; ``seq`` counts from 1 per job."""

    job_seq: int
    seq: int
    value: Any
    time: float


# -- the rules that change a row ------------------------------------------------------
def interrupt(row: JobRow, now: float, why: str) -> None:
    """Apply ``on_interrupt`` to a job whose attempt was lost (the attempt stays counted)."""
    if row.on_interrupt == "retry":
        row.move("pending")
        row.enqueued_at = now
        row.started_at = None
    else:
        row.move("failed")
        row.finished_at = now
        row.error = {"type": "interrupted", "message": why, "retryable": False}


def waiting_status(row: JobRow, now: float) -> str:
    """The waiting status that applies to a job leaving ``held``, ``failed`` or ``cancelled``."""
    if row.depends_on:
        return "blocked"  # evaluated right after its commit
    if row.run_at is not None and row.run_at > now:
        return "scheduled"
    return "pending"


def start_attempt(row: JobRow, now: float) -> None:
    """A waiting job takes a slot: its next attempt begins."""
    row.move("running")
    row.attempts += 1
    row.started_at = now
    row.finished_at = None
    row.progress = None
    row.error = None  # kept while retrying (why it retries), gone once it runs again


def stored_problem(value: Any, what: str, max_result: int) -> Outcome | None:
    """Why a result or an output cannot be kept (not msgpack, or too large), if it cannot."""
    try:
        size = len(msgpack.packb(value, use_bin_type=True))
    except (TypeError, ValueError, OverflowError) as exc:
        return Outcome.failure("exception", f"{what} cannot be stored: {exc}", retryable=False)
    if size > max_result:
        return too_large(what, size, max_result)
    return None


def apply_outcome(row: JobRow, outcome: Outcome, now: float, backoff: Backoff, max_result: int) -> None:
    """Turn an attempt's outcome into the job's next status: completed, retrying (with
    its backoff deadline), failed or cancelled."""
    if outcome.ok:
        problem = stored_problem(outcome.result, "the result", max_result)
        if problem is None:
            row.move("completed")
            row.result = outcome.result
            row.error = None
            row.finished_at = now
            return
        outcome = problem
    message = outcome.message
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 1] + "…"  # the full text is in the log's traceback
    row.error = {"type": outcome.error_type, "message": message, "retryable": outcome.retryable}
    if outcome.retryable and retries_left(row.attempts, row.round_base, row.max_retries) > 0:
        retry_number = row.attempts - row.round_base
        delay = outcome.retry_after if outcome.retry_after is not None else backoff.delay(retry_number)
        row.move("retrying")
        row.run_at = now + max(0.0, delay)
    else:
        row.move("cancelled" if outcome.error_type == "cancelled" else "failed")
        row.finished_at = now


def cancel_waiting(row: JobRow, now: float) -> None:
    """A client cancels a job that is not running."""
    row.move("cancelled")
    row.finished_at = now
    row.error = {"type": "cancelled", "message": "cancelled by a client", "retryable": False}


def reopen(row: JobRow, now: float) -> None:
    """A failed or cancelled job waits again, with a fresh round of retries."""
    row.move(waiting_status(row, now))  # a future run_at still holds: scheduled
    row.round_base = row.attempts
    row.error = None
    row.result = None
    row.finished_at = None
    row.started_at = None
    row.progress = None
    row.enqueued_at = now


def unhold(row: JobRow, now: float) -> None:
    """A held job goes back to the waiting status that now applies."""
    row.move(waiting_status(row, now))
    row.enqueued_at = now


def dependency_failed(row: JobRow, now: float, culprit: str, culprit_status: str | None) -> None:
    """A blocked job whose dependency failed, was cancelled or is gone is cancelled."""
    row.move("cancelled")
    row.finished_at = now
    row.error = {
        "type": "dependency_failed",
        "message": f"dependency {culprit} {culprit_status or 'is gone'}",
        "retryable": False,
    }


def become_pending(row: JobRow, now: float) -> None:
    """A blocked, scheduled or retrying job's wait is over: it is ready to start."""
    row.move("pending")
    row.enqueued_at = now
