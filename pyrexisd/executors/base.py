"""One interface for every way of running a job: thread, process, async, shell, dask."""

from __future__ import annotations

import os
import pwd
import threading
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from pyrexisd.tasks.context import Fatal, Retry
from pyrexisd.tasks.registry import TaskDef


class JobEvents(Protocol):
    """The core's side of a running job: called on the event loop's thread only."""

    def log(self, stream: str, line: str) -> None: ...

    def progress(self, fraction: float | None, message: str | None) -> None: ...

    def output(self, value: Any) -> None:
        """A partial result: one item a generator task yielded."""
        ...

    def keeps_logs(self) -> bool:
        """False once this attempt's log limit is reached: further lines are dropped."""
        ...

    def skipped_lines(self, count: int) -> None:
        """``count`` lines were dropped without being passed to :meth:`log`."""
        ...

    def spawned(self, pid: int, started: int | None) -> None:
        """The attempt runs in process ``pid`` (start time ``started``): recorded so that
        a daemon restarting after a crash can kill it if it outlived the daemon."""
        ...

    async def drain(self) -> None:
        """Wait until buffered log lines are stored (backpressure for chatty jobs)."""
        ...


class TaskExit(Exception):
    """A task raised ``SystemExit`` or ``KeyboardInterrupt``.

    Carried as an ordinary exception so it fails the job: raised inside the event loop,
    either would stop the daemon itself.
    """

    def __init__(self, original: BaseException) -> None:
        super().__init__(f"{type(original).__name__}: {original}" if str(original) else type(original).__name__)
        self.original = original


async def contained(awaitable: Any) -> Any:
    """Await a task's coroutine with ``SystemExit``/``KeyboardInterrupt`` made harmless."""
    try:
        return await awaitable
    except (SystemExit, KeyboardInterrupt) as exc:
        raise TaskExit(exc) from exc


@dataclass(frozen=True, slots=True)
class RunAs:
    """The account a command runs as when it is not the daemon's own: set by the job core
    for a root daemon running another user's shell job, and applied by the shell
    executor when it spawns the command (the process gets exactly these ids and groups,
    and its environment's HOME, USER, LOGNAME and SHELL)."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    user: str
    home: str
    shell: str

    @classmethod
    def account(cls, uid: int) -> RunAs | None:
        """The account of ``uid`` from the user database (its primary group and every
        group it belongs to), or None when it has none."""
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            return None
        try:
            groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
        except OSError:
            groups = (entry.pw_gid,)
        return cls(uid, entry.pw_gid, groups, entry.pw_name, entry.pw_dir or "/", entry.pw_shell or "/bin/sh")


class JobCall:
    """One attempt of one job, as an executor sees it."""

    __slots__ = (
        "job_id", "attempt", "task", "args", "events", "env", "inputs", "kwargs", "run_as",
        "_cancelled", "_event", "_on_cancel",
    )  # fmt: skip

    def __init__(
        self,
        job_id: str,
        attempt: int,
        task: TaskDef,
        args: dict[str, Any],
        events: JobEvents,
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.task = task
        self.args = args
        self.events = events
        self.env: dict[str, str] = {}
        self.inputs: dict[str, Any] = {}  # dependency job_id -> result
        self.run_as: RunAs | None = None  # another account to run a command as (shell mode)
        # The args as the task's model made them at submit, when still fresh (first attempt
        # in this daemon): the function's keyword arguments without validating again.
        self.kwargs = kwargs
        self._cancelled = False
        self._event: threading.Event | None = None  # made only for a task that asks for it
        self._on_cancel: Callable[[], Any] | None = None

    def function_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the task's function (without the context)."""
        return self.task.kwargs(self.args, self.inputs, self.kwargs)

    @property
    def cancel_event(self) -> threading.Event:
        """A flag a thread can watch: set when the attempt is cancelled (made on first use)."""
        if self._event is None:
            self._event = threading.Event()
            if self._cancelled:
                self._event.set()
        return self._event

    def on_cancel(self, hook: Callable[[], Any]) -> None:
        """Set how the executor stops this attempt; runs at once if already cancelled."""
        self._on_cancel = hook
        if self._cancelled:
            hook()

    def cancel(self) -> None:
        """Stop the attempt: sets the context's flag, then the executor's own means."""
        if self._cancelled:
            return
        self._cancelled = True
        if self._event is not None:
            self._event.set()
        if self._on_cancel is not None:
            self._on_cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancelled


@dataclass(slots=True)
class Outcome:
    """How an attempt ended. Executors return it; they never raise for a task's failure."""

    ok: bool
    result: Any = None
    error_type: str = ""
    message: str = ""
    retryable: bool = True
    retry_after: float | None = None
    traceback: str | None = None

    @classmethod
    def success(cls, result: Any) -> Outcome:
        return cls(True, result)

    @classmethod
    def failure(
        cls, error_type: str, message: str, retryable: bool = True, tb: str | None = None
    ) -> Outcome:
        return cls(False, None, error_type, message, retryable, None, tb)

    @classmethod
    def from_exception(cls, exc: BaseException) -> Outcome:
        """A task's exception: ``Fatal`` is final, ``Retry`` may set the delay."""
        tb = "".join(traceback.format_exception(exc))
        if isinstance(exc, TaskExit):
            exc = exc.original
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if isinstance(exc, Fatal):
            return cls(False, None, "exception", message, False, None, tb)
        if isinstance(exc, Retry):
            return cls(False, None, "exception", message, True, exc.delay, tb)
        return cls(False, None, "exception", message, True, None, tb)


CANCELLED = Outcome(False, None, "cancelled", "cancelled", False)


def too_large(what: str, size: int, max_result: int) -> Outcome:
    """The failure of a result (or an output) of ``size`` bytes above ``max_result``:
    final, since a new attempt would most likely make the same."""
    return Outcome.failure(
        "result_too_large", f"{what} is {size} bytes, above max_result ({max_result})", retryable=False
    )

MAX_LINE = 16 * 1024  # a log line longer than this is stored as several lines


def generator_result(items: list[Any], returned: Any) -> Any:
    """A generator task's result: its return value when it has one, else its items."""
    return items if returned is None else returned


class Executor(ABC):
    """Runs attempts of one mode. ``run`` returns when the work has really stopped."""

    mode: ClassVar[str]

    def __init__(self, slots: int) -> None:
        self.slots = slots
        # Set by the job core: told when the slot count changes while the daemon runs.
        self.on_slots: Callable[[int], None] | None = None

    def set_slots(self, slots: int) -> None:
        """The executor's capacity changed (a cluster grew, shrank or went away): the
        scheduler starts jobs of this mode up to the new count; running ones go on."""
        if slots != self.slots:
            self.slots = slots
            if self.on_slots is not None:
                self.on_slots(slots)

    def state(self) -> dict[str, Any] | None:
        """What ``stats`` shows of this executor beyond its slots (None: nothing)."""
        return None

    async def start(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Acquire resources (pools, workers) before the first job."""

    async def shutdown(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Release resources; running attempts have been cancelled already."""

    @abstractmethod
    async def run(self, call: JobCall) -> Outcome:
        """Run one attempt to its end. After ``call.cancel()`` it returns once the work
        has stopped (for threads: once the thread returns)."""


def split_lines(text: str) -> list[str]:
    """A task's log text as stored lines: no line endings, none longer than MAX_LINE."""
    out: list[str] = []
    for line in text.split("\n"):
        line = line.removesuffix("\r")
        if len(line) <= MAX_LINE:
            out.append(line)
        else:
            out.extend(line[i : i + MAX_LINE] for i in range(0, len(line), MAX_LINE))
    if len(out) > 1 and out[-1] == "" and text.endswith("\n"):
        out.pop()
    return out
