"""What a running task sees of PYREXIS: its context, and the exceptions it may raise."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol


class Retry(Exception):
    """Raise from a task to fail this attempt as retryable, optionally after ``delay`` s.

    The delay replaces the backoff for this retry; the job's ``max_retries`` still applies.
    """

    def __init__(self, message: str = "retry requested", delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class Fatal(Exception):
    """Raise from a task to fail the job at once: no retry, whatever ``max_retries`` says."""


class EventSink(Protocol):
    """Where a context's progress and log lines go; each mode brings its own."""

    def progress(self, fraction: float | None, message: str | None) -> None: ...

    def log(self, line: str) -> None: ...


class TaskContext:
    """Handed to a task that declares a ``ctx: TaskContext`` parameter.

    ``progress`` and ``log`` work the same in thread, process and async mode.
    ``inputs`` maps each dependency's job id to its result.
    ``cancelled`` becomes true when the job is cancelled or times out: a thread task
    should check it and return early, since a thread cannot be stopped from outside.
    """

    __slots__ = ("job_id", "attempt", "inputs", "_sink", "_cancel")

    def __init__(
        self,
        job_id: str,
        attempt: int,
        sink: EventSink,
        cancel: threading.Event | None = None,
        inputs: dict[str, Any] | None = None,
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.inputs: dict[str, Any] = inputs or {}  # dependency job_id -> its result
        self._sink = sink
        self._cancel = cancel if cancel is not None else threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def progress(self, fraction: float | None = None, message: str | None = None) -> None:
        """Report how far the job is (``fraction`` in 0..1) and/or what it is doing."""
        if fraction is not None:
            fraction = min(1.0, max(0.0, float(fraction)))
        self._sink.progress(fraction, None if message is None else str(message))

    def log(self, line: str) -> None:
        """Add a line to the job's stored log (stream ``log``)."""
        self._sink.log(str(line))

    def __repr__(self) -> str:
        return f"TaskContext(job_id={self.job_id!r}, attempt={self.attempt})"


class CallbackSink:
    """An :class:`EventSink` made of two callables (thread and async modes)."""

    __slots__ = ("_progress", "_log")

    def __init__(
        self,
        progress: Callable[[float | None, str | None], Any],
        log: Callable[[str], Any],
    ) -> None:
        self._progress = progress
        self._log = log

    def progress(self, fraction: float | None, message: str | None) -> None:
        self._progress(fraction, message)

    def log(self, line: str) -> None:
        self._log(line)
