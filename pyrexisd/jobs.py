"""The job row: the daemon's in-memory form of a job record, and its status changes.

A plain slotted dataclass rather than a pydantic model: it is built and changed on the
hot path of every job. The wire shape is produced by :meth:`JobRow.record`.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field, fields
from typing import Any

from protocol.errors import Internal
from protocol.status import TERMINAL, is_legal


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
    # ``args`` never change after submit: packed once, written as is on every change.
    args_blob: bytes | None = field(default=None, repr=False, compare=False)

    def snapshot(self) -> tuple[Any, ...]:
        """Every field's value, to :meth:`restore` if a change cannot be committed."""
        return _ALL_FIELDS(self)

    def restore(self, snapshot: tuple[Any, ...]) -> None:
        for name, value in zip(_FIELD_NAMES, snapshot, strict=False):
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
        }


_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(JobRow))
_ALL_FIELDS = operator.attrgetter(*_FIELD_NAMES)
