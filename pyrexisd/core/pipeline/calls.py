"""One call of a stage's task on its executor: an item (or a batch), with the stage's
retries, timeout and cache.

A call is a :class:`~pyrexisd.executors.base.JobCall` of the pipeline job, run on the
executor of the stage's mode: a thread, a process worker (killable alone), the loop, or
a shell command that reads its items as JSON lines on stdin and writes one JSON result
per line on stdout. What a call made is mapped back onto the items it took:

* one item, plain function: its return value (``None`` drops the item);
* one item, generator: every value it yielded (none drops the item);
* a batch: a list with one value per item (``None`` drops that item);
* a shell command: each stdout line is one value; for a batch, one line per item.

The result cache is one call site: :class:`ItemCache` is asked before a call runs and
told of each successful call's value. The default, :class:`NoCache`, keeps nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from protocol.errors import InvalidRequest
from pyrexisd.core.pipeline.figures import StageFigures
from pyrexisd.core.pipeline.plan import StagePlan
from pyrexisd.core.pipeline.sinks import JSON_LINE
from pyrexisd.executors.base import Executor, JobCall, Outcome, RunAs
from pyrexisd.tasks.builtin import ShellCommand, shell
from pyrexisd.tasks.registry import TaskDef, make_task


@dataclass(frozen=True, slots=True)
class Cached:
    """A value the cache holds for a call."""

    value: Any


class CachedValue(Protocol):
    """What a lookup answers: the value kept for a call."""

    @property
    def value(self) -> Any: ...


class ItemCache(Protocol):
    """The result cache as a stage uses it, per call: ``args`` are the call's arguments
    (for a shell stage, its command's args plus ``"stdin"``: the items it reads)."""

    async def lookup(self, task: TaskDef, args: dict[str, Any]) -> CachedValue | None: ...

    def store(self, task: TaskDef, args: dict[str, Any], value: Any) -> None: ...


class NoCache:
    """No cache: every call runs."""

    async def lookup(self, task: TaskDef, args: dict[str, Any]) -> CachedValue | None:
        return None

    def store(self, task: TaskDef, args: dict[str, Any], value: Any) -> None:
        return None


@dataclass(frozen=True, slots=True)
class ItemFailure:
    """A call that failed for good (its retries spent, or not retryable)."""

    error_type: str
    message: str


class Stopped(Exception):
    """The pipeline is stopping: a call in progress was cancelled, its items stay in flight."""


def _stdin_command(cmd: Any, cwd: Any = None, env: Any = None) -> ShellCommand:
    """A shell stage's command, its stdin read from the file ``$PYREXIS_STDIN`` names."""
    inner = shell(cmd, cwd, env)
    argv = ["/bin/sh", "-c", 'exec "$@" < "$PYREXIS_STDIN"', "pyrexis-stage", *inner.argv]
    return ShellCommand(argv, inner.cwd, inner.env)


STDIN_SHELL = make_task(_stdin_command, name="shell", mode="shell")


class ItemEvents:
    """The :class:`~pyrexisd.executors.base.JobEvents` of one call: its values are kept,
    its log lines go to the pipeline's log; a shell stage's stdout lines are its values."""

    __slots__ = ("label", "log_line", "drain_log", "shell", "outputs", "problem", "timed_out")

    def __init__(
        self, label: str, log_line: Callable[[str, str], None], drain_log: Callable[[], Awaitable[None]], shell: bool
    ) -> None:
        self.label = label
        self.log_line = log_line
        self.drain_log = drain_log
        self.shell = shell
        self.outputs: list[Any] = []
        self.problem: str | None = None
        self.timed_out = False

    def log(self, stream: str, line: str) -> None:
        if self.shell and stream == "stdout":
            if self.problem is not None or not line.strip():
                return
            try:
                self.outputs.append(json.loads(line))
            except ValueError as exc:
                self.problem = f"stdout line {len(self.outputs) + 1} is not one JSON value ({exc}): {line[:200]!r}"
            return
        self.log_line(stream, f"[{self.label}] {line}")

    def progress(self, fraction: float | None, message: str | None) -> None:
        return None  # a pipeline's progress is its items, not a call's own

    def output(self, value: Any) -> None:
        self.outputs.append(value)

    def keeps_logs(self) -> bool:
        return True  # a shell stage's stdout is its results: always read

    def skipped_lines(self, count: int) -> None:
        return None

    def spawned(self, pid: int, started: int | None) -> None:
        return None  # a stage's command dies with the spawn helper, which dies with the daemon

    async def drain(self) -> None:
        await self.drain_log()


class StageCaller:
    """Runs the calls of one stage and maps what they made onto their items."""

    def __init__(
        self,
        plan: StagePlan,
        executor: Executor,
        job_id: str,
        attempt: int,
        figures: StageFigures,
        log_line: Callable[[str, str], None],
        drain_log: Callable[[], Awaitable[None]],
        cache: ItemCache,
        run_as: RunAs | None = None,
    ) -> None:
        self.plan = plan
        self.executor = executor
        self.job_id = job_id
        self.attempt = attempt
        self.figures = figures
        self.log_line = log_line
        self.drain_log = drain_log
        self.cache = cache
        self.run_as = run_as
        self.workdir: str = getattr(executor, "workdir", None) or tempfile.gettempdir()
        self.stopping = False
        self._live: set[JobCall] = set()

    def stop(self) -> None:
        """The pipeline stops: calls in progress are cancelled (a thread's only told)."""
        self.stopping = True
        for call in list(self._live):
            call.cancel()

    async def call(self, values: list[Any]) -> list[list[Any]] | ItemFailure:
        """The values made from ``values`` (the items of one call), one list per item;
        or the failure that remains after the stage's retries. Raises :class:`Stopped`."""
        plan = self.plan
        key = self._cache_key(values)
        if key is not None:
            hit = await self.cache.lookup(plan.task, key)
            if hit is not None:
                mapped = self._per_item(values, hit.value)
                if not isinstance(mapped, ItemFailure):
                    self.figures.cached += len(values)
                    return mapped
        tries = 0
        while True:
            started = time.monotonic()
            outcome, made = await self._once(values)
            self.figures.timed(time.monotonic() - started, len(values))
            if self.stopping:
                raise Stopped
            if outcome.ok:
                mapped = self._per_item(values, made)
                if not isinstance(mapped, ItemFailure) and key is not None:
                    self.cache.store(plan.task, key, made)
                return mapped
            if not outcome.retryable or tries >= plan.retries:
                return ItemFailure(outcome.error_type, outcome.message)
            tries += 1
            self.figures.retries += 1
            delay = outcome.retry_after if outcome.retry_after is not None else plan.backoff.delay(tries)
            await asyncio.sleep(delay)
            if self.stopping:
                raise Stopped

    def _cache_key(self, values: list[Any]) -> dict[str, Any] | None:
        plan = self.plan
        if plan.item_param is None:
            return {**plan.args, "stdin": values}
        return {**plan.args, plan.item_param: values if plan.batched else values[0]}

    async def _once(self, values: list[Any]) -> tuple[Outcome, Any]:
        """One try: the executor's outcome and what the call made (its return value, or
        the values it yielded or wrote)."""
        plan = self.plan
        events = ItemEvents(plan.name, self.log_line, self.drain_log, plan.mode == "shell")
        stdin_path: str | None = None
        if plan.item_param is None:
            try:
                stdin_path = self._write_stdin(values)
            except (OSError, TypeError, ValueError) as exc:
                return Outcome.failure("exception", f"the items cannot be written as JSON lines: {exc}", retryable=False), None
            call = JobCall(self.job_id, self.attempt, STDIN_SHELL, plan.args, events, dict(plan.args))
            call.env["PYREXIS_STDIN"] = stdin_path
            call.run_as = self.run_as
        else:
            args = {**plan.args, plan.item_param: values if plan.batched else values[0]}
            try:
                kwargs = TaskDef.model_kwargs(plan.task.validate_args(args))
            except InvalidRequest as exc:
                detail = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in (exc.details or {}).get("errors", []))
                return Outcome.failure("exception", f"invalid item for task {plan.task.name!r}: {detail}", retryable=False), None
            call = JobCall(self.job_id, self.attempt, plan.task, args, events, kwargs)
        timer = None
        if plan.timeout is not None:
            timer = asyncio.get_running_loop().call_later(plan.timeout, _time_out, call, events)
        self._live.add(call)
        try:
            outcome = await self.executor.run(call)
        finally:
            self._live.discard(call)
            if timer is not None:
                timer.cancel()
            if stdin_path is not None:
                _unlink(stdin_path)
        if events.timed_out and not self.stopping:
            return Outcome.failure("timeout", f"timed out after {plan.timeout} s"), None
        if outcome.ok and events.problem is not None:
            return Outcome.failure("exception", events.problem, retryable=False), None
        if not outcome.ok:
            return outcome, None
        made = events.outputs if (plan.fans_out or plan.mode == "shell") else outcome.result
        return outcome, made

    def _write_stdin(self, values: list[Any]) -> str:
        data = "".join(JSON_LINE.encode(v) + "\n" for v in values).encode()
        path = os.path.join(self.workdir, f"pyrexis-stdin-{secrets.token_hex(8)}.jsonl")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            if self.run_as is not None:  # the command reads it as its own user
                os.fchown(fd, self.run_as.uid, self.run_as.gid)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        return path

    def _per_item(self, values: list[Any], made: Any) -> list[list[Any]] | ItemFailure:
        plan = self.plan
        if not plan.batched:
            if plan.fans_out or plan.mode == "shell":
                return [[v for v in made if v is not None]]
            return [[] if made is None else [made]]
        if made is None and plan.mode != "shell":
            return [[] for _ in values]
        if not isinstance(made, (list, tuple)) or len(made) != len(values):
            what = "result lines" if plan.mode == "shell" else "values"
            got = f"{len(made)} {what}" if isinstance(made, (list, tuple)) else f"a {type(made).__name__}"
            return ItemFailure("exception", f"a batch of {len(values)} items must make one value per item, not {got}")
        return [[] if v is None else [v] for v in made]


def _time_out(call: JobCall, events: ItemEvents) -> None:
    events.timed_out = True
    call.cancel()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
