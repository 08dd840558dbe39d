"""Job statuses, execution modes and the legal status changes of the contract."""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):  # noqa: UP042 - kept as is: switching to StrEnum is not a typing change
    PENDING = "pending"
    BLOCKED = "blocked"
    SCHEDULED = "scheduled"
    RETRYING = "retrying"
    HELD = "held"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


WAITING: frozenset[str] = frozenset({"pending", "blocked", "scheduled", "retrying", "held"})
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
ALL_STATUSES: tuple[str, ...] = tuple(s.value for s in Status)

MODES: tuple[str, ...] = ("thread", "process", "async", "shell", "dask")
# A pipeline is a job of the built-in task "pipeline", run in a mode of its own (its
# stages' calls run in the modes above).
PIPELINE_TASK = "pipeline"
PIPELINE_MODE = "pipeline"

ERROR_TYPES: tuple[str, ...] = (
    "exception",
    "exit_code",
    "timeout",
    "interrupted",
    "worker_died",
    "cancelled",
    "dependency_failed",
    "result_too_large",
    "scheduler_lost",
)

# ``None`` stands for "not yet stored": the statuses a submit may create. ``completed``
# only for a hit of the result cache (an agreed addition: the job never runs).
TRANSITIONS: dict[str | None, frozenset[str]] = {
    None: frozenset({"pending", "blocked", "scheduled", "running", "completed"}),
    "pending": frozenset({"running", "held", "cancelled"}),
    "blocked": frozenset({"pending", "cancelled", "held"}),
    "scheduled": frozenset({"pending", "held", "cancelled"}),
    "retrying": frozenset({"pending", "held", "cancelled"}),
    "held": frozenset({"pending", "blocked", "scheduled", "cancelled"}),
    "running": frozenset({"completed", "failed", "retrying", "cancelled", "pending"}),
    "failed": frozenset({"pending", "blocked", "scheduled"}),
    "cancelled": frozenset({"pending", "blocked", "scheduled"}),
    "completed": frozenset(),
}


def is_legal(old: str | None, new: str) -> bool:
    """Whether the contract allows a job to go from ``old`` to ``new``."""
    allowed = TRANSITIONS.get(old)
    return allowed is not None and new in allowed
