"""The job lifecycle: submit → schedule → dispatch → finish → retry.

The engine is where the rooms meet: it asks the scheduler what to start, writes every
change through the store's group commit, starts attempts on the executors and wakes the
clients waiting on jobs. Its rules:

* Durable before told: the in-memory view of a job changes only after its commit; a
  client is answered, and work starts, only after the commit of the state it implies.
* One change at a time per job: while a change of job ``seq`` is being committed,
  ``_locks[seq]`` holds the commit's future, and any op on that job waits for it first.
* A finished attempt's commit carries the starts the freed slot allows, so a busy
  daemon spends one fsync for "A finished, B started".
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Unpack

import msgpack
from pydantic import ValidationError

from protocol.errors import (
    Conflict,
    Internal,
    InvalidRequest,
    InvalidState,
    NotFound,
    PyrexisError,
    ShuttingDown,
    StorageError,
    Timeout,
    UnknownTask,
)
from protocol.models import JobSpec, validation_errors
from protocol.status import WAITING
from pyrexisd import dependencies, procs
from pyrexisd.config import FRAME_ENVELOPE, MAX_MESSAGE, MAX_PROGRESS_MESSAGE, Config
from pyrexisd.events import EventHub, progress_event, state_event
from pyrexisd.executors.base import Executor, JobCall, Outcome, split_lines
from pyrexisd.jobs import JobRow
from pyrexisd.metrics import Metrics
from pyrexisd.retry import Backoff, retries_left
from pyrexisd.scheduler import Scheduler, Start
from pyrexisd.store import LogLine, OutputItem, QueueChanges, QueueSettings, Store
from pyrexisd.tasks.registry import Registry, TaskDef

log = logging.getLogger(__name__)

# Waiting statuses the scheduler tracks (held and blocked jobs wait outside it).
WAITING_IN_SCHEDULER = frozenset({"pending", "scheduled", "retrying"})
ROW_CACHE_LIMIT = 4_096  # waiting rows kept in memory; beyond, they are read back on start
PROGRESS_FLUSH = 0.5  # seconds between progress writes of one job
PROGRESS_EVERY = 0.1  # seconds between progress events of one job
LOG_PAGE = 1000
RECENT_ENDS = 1024  # terminal records kept in memory for waits that come just after the end
STORAGE_RETRY = (0.05, 2.0)  # first and longest pause between retries of a failed commit
STOP_COMMIT_WAIT = 5.0  # seconds a stopping daemon waits for commits in flight


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return [[k, _canonical(value[k])] for k in sorted(value, key=repr)]
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def spec_digest(spec: JobSpec) -> bytes:
    """Identity of a spec for idempotent resubmits: fields as sent, defaults filled in."""
    packed = msgpack.packb(_canonical(spec.model_dump()), use_bin_type=True)
    return hashlib.sha256(packed).digest()


def encode_cursor(row: JobRow) -> str:
    raw = msgpack.packb([row.created_at, row.job_id], use_bin_type=True)
    return base64.urlsafe_b64encode(raw).decode("ascii")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        created, job_id = msgpack.unpackb(base64.urlsafe_b64decode(cursor.encode("ascii")))
        return float(created), str(job_id)
    except Exception:
        raise InvalidRequest(
            "invalid cursor", {"errors": [{"loc": ["after"], "msg": "not a cursor from list"}]}
        ) from None


@dataclass(eq=False)
class Active:
    """An attempt that is running (or, once ``ended``, still winding down)."""

    row: JobRow
    call: JobCall
    task: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None
    ended: bool = False  # its outcome is decided; a late result is discarded
    progress_dirty: bool = False
    progress_due: float = 0.0


class _ActiveEvents:
    """What an attempt reports while it runs: log lines, outputs and progress.

    Lines and outputs are batched per loop iteration into one store write, and reach
    watchers only once committed, so a ``seq`` a client saw is never reused after a
    crash. Progress is coalesced: at most one event per :data:`PROGRESS_EVERY` seconds
    per job, and the latest value always arrives.
    """

    __slots__ = (
        "engine", "active", "_lines", "_outputs", "_flush", "_last_write", "_progress_at",
        "_progress_handle", "_log_bytes", "dropped_lines", "output_problem",
    )  # fmt: skip

    def __init__(self, engine: Engine, active: Active) -> None:
        self.engine = engine
        self.active = active
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
        if self.active.ended:
            return  # a thread still printing after its cancel or timeout: discarded
        for line in split_lines(text):
            self._log_line(stream, line)

    def keeps_logs(self) -> bool:
        return self._log_bytes <= self.engine.config.max_log_bytes

    def skipped_lines(self, count: int) -> None:
        self.dropped_lines += count

    def _log_line(self, stream: str, line: str) -> None:
        limit = self.engine.config.max_log_bytes
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
        row = self.active.row
        row.log_seq += 1
        self._lines.append(LogLine(row.seq, row.log_seq, stream, line, self.engine.clock()))
        self._schedule_flush()

    def output(self, value: Any) -> None:
        if self.active.ended or self.output_problem is not None:
            return
        try:
            size = len(msgpack.packb(value, use_bin_type=True))
        except (TypeError, ValueError, OverflowError) as exc:
            self.output_problem = Outcome.failure("exception", f"an output cannot be stored: {exc}", retryable=False)
            return
        if size > self.engine.config.max_result:
            self.output_problem = Outcome.failure(
                "result_too_large", f"an output is {size} bytes, above max_result", retryable=False
            )
            return
        row = self.active.row
        row.output_seq += 1
        self._outputs.append(OutputItem(row.seq, row.output_seq, value, self.engine.clock()))
        self._schedule_flush()

    def spawned(self, pid: int, started: int | None) -> None:
        row = self.active.row
        row.pid, row.pid_start = pid, started
        self.engine.store.write(pids=[(row.seq, pid, started)]).add_done_callback(_log_write_failure)

    def _schedule_flush(self) -> None:
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if not self._lines and not self._outputs:
            return
        lines, self._lines = self._lines, []
        outputs, self._outputs = self._outputs, []
        fut = self.engine.store.write(logs=lines, outputs=outputs)
        row = self.active.row
        fut.add_done_callback(lambda f: self.engine._stored_events(f, row, lines, outputs))
        self._last_write = fut

    async def drain(self) -> None:
        self.flush()
        fut = self._last_write
        if fut is not None and not fut.done():
            await asyncio.gather(asyncio.shield(fut), return_exceptions=True)

    def progress(self, fraction: float | None, message: str | None) -> None:
        active = self.active
        if active.ended:
            return
        if message is not None and len(message) > MAX_PROGRESS_MESSAGE:
            message = message[: MAX_PROGRESS_MESSAGE - 1] + "…"
        active.row.progress = {"fraction": fraction, "message": message}
        active.progress_dirty = True
        self.engine._progress_changed(active)
        if self._progress_handle is not None:
            return  # a trailing publish is already due and will carry this value
        now = time.monotonic()
        wait = self._progress_at + PROGRESS_EVERY - now
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
        row = self.active.row
        if (self.active.ended and not ending) or not self.engine.hub.wants(row.job_id):
            return
        event = progress_event(row, self.engine.clock())
        if event is not None:
            self.engine.hub.publish(event, row.task, row.queue)


def _log_write_failure(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("a progress or pid update was not stored: %s", fut.exception())


class Engine:
    """Owns the job lifecycle; the handlers call its public coroutines."""

    def __init__(
        self,
        config: Config,
        store: Store,
        registry: Registry,
        executors: dict[str, Executor],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.registry = registry
        self.executors = executors
        self.clock = clock
        self.scheduler = Scheduler(
            {mode: ex.slots for mode, ex in executors.items()}, clock, config.aging
        )
        self.metrics = Metrics(clock())
        self.backoff = Backoff()
        self.stopping = False
        self.stopping_event = asyncio.Event()  # streams end with shutting_down once set
        self._seq = 0
        self._active: dict[int, Active] = {}
        self._active_by_id: dict[str, Active] = {}
        # The records of the last jobs that ended, so that a ``wait`` just after the end
        # needs no read. Only committed ends go in; a job that leaves its end (``retry``)
        # is dropped before its change is committed.
        self._recent_ends: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._winding_down: set[Active] = set()
        self._rows: dict[int, JobRow] = {}
        self._locks: dict[int, asyncio.Future[Any]] = {}
        self._claimed_ids: dict[str, asyncio.Future[Any]] = {}
        self._waiters: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self._kick_pending = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._progress_timer: asyncio.TimerHandle | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.hub = EventHub()
        self._blocked: dict[int, JobRow] = {}  # blocked jobs, evaluated as dependencies settle
        self._held: dict[int, JobRow] = {}
        self._dependents: dict[str, set[int]] = {}  # dependency job_id -> blocked seqs
        self._to_evaluate: set[int] = set()
        self._log_signals: dict[int, asyncio.Future[None]] = {}

    # == start-up and shutdown ========================================================
    async def start(self) -> None:
        """Load state from the store and recover jobs the last daemon left running."""
        self._loop = asyncio.get_running_loop()
        for _mode, executor in self.executors.items():
            await executor.start()
        self._seq = await self.store.max_seq()
        for queue, status, _mode, n in await self.store.counts():
            self.metrics.by_queue_status[(queue, status)] += n
        settings = await self.store.settings()
        if settings.get("paused_by_default"):
            self.scheduler.pause_all(True)
        for q in await self.store.queue_settings():
            self.scheduler.configure(
                q.name, weight=q.weight, max_concurrency=q.max_concurrency, aging=q.aging, paused=q.paused
            )
        await self._recover_running()
        for status in ("blocked", "held"):
            for row in await self.store.jobs_with_status(status):
                self._enqueue(row)
        for key in await self.store.waiting_keys():
            if key.status == "pending":
                self.scheduler.add(key.seq, key.queue, key.mode, key.priority, key.enqueued_at)
            else:
                self.scheduler.defer(key.seq, key.run_at or 0.0)
        self._arm_timer()
        self._kick()

    async def _recover_running(self) -> None:
        rows = await self.store.jobs_with_status("running")
        if not rows:
            return
        logs: list[LogLine] = []
        now = self.clock()
        for row in rows:
            if row.pid is not None and row.pid_start is not None:
                # Work that outlived the daemon must not run on beside its next attempt.
                if procs.kill_if_same(row.pid, row.pid_start, group=row.mode == "shell"):
                    log.warning("killed orphan process %d of job %s", row.pid, row.job_id)
            self._interrupt(row, now, "the daemon stopped while the job was running")
            row.log_seq = max(row.log_seq, await self.store.max_log_seq(row.seq)) + 1
            logs.append(LogLine(row.seq, row.log_seq, "log", f"interrupted: {row.error or 'back to pending'}", now))
        await self.store.write(jobs=rows, logs=logs)
        for row in rows:
            self._moved(row, "running")
        log.warning("recovered %d jobs that were running when the daemon stopped", len(rows))

    def _interrupt(self, row: JobRow, now: float, why: str) -> None:
        """Apply ``on_interrupt`` to a job whose attempt was lost (the attempt stays counted)."""
        if row.on_interrupt == "retry":
            row.move("pending")
            row.enqueued_at = now
            row.started_at = None
        else:
            row.move("failed")
            row.finished_at = now
            row.error = {"type": "interrupted", "message": why, "retryable": False}

    async def stop(self, grace: float, force: asyncio.Event | None = None) -> None:
        """Stop taking work, let running jobs finish within ``grace``, interrupt the rest."""
        self.stopping = True
        self.stopping_event.set()
        if self._timer is not None:
            self._timer.cancel()
        running = [a.task for a in self._active.values() if a.task is not None]
        if running and grace > 0:
            waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(asyncio.wait(running, timeout=grace))]
            if force is not None:
                waiters.append(asyncio.ensure_future(force.wait()))
            done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for p in pending:
                p.cancel()
        # Let finished attempts' commits land before deciding who was interrupted (not
        # forever: a full disk would keep them retrying; recovery handles what is left).
        deadline = asyncio.get_running_loop().time() + STOP_COMMIT_WAIT
        while self._locks and asyncio.get_running_loop().time() < deadline:
            await asyncio.wait(list(set(self._locks.values())), timeout=STOP_COMMIT_WAIT)
        leftovers = [a for a in self._active.values() if not a.ended]
        now = self.clock()
        for active in leftovers:
            active.ended = True
            self._interrupt(active.row, now, "the daemon was stopped while the job was running")
        if leftovers:
            try:
                await self.store.write(jobs=[a.row for a in leftovers])
                for a in leftovers:
                    self._moved(a.row, "running")
                    if a.row.terminal:
                        self._notify(a.row)
            except StorageError as exc:
                log.error("could not record interrupted jobs (recovery will): %s", exc)
        for active in leftovers:
            active.call.cancel()
        tasks = [a.task for a in leftovers if a.task is not None and a.row.mode != "thread"]
        if tasks:
            await asyncio.wait(tasks, timeout=self.config.kill_grace + 1)
        for task in tasks:
            task.cancel()
        for futures in self._waiters.values():
            for fut in futures:
                if not fut.done():
                    fut.set_exception(ShuttingDown("the daemon is stopping"))
        for executor in self.executors.values():
            await executor.shutdown()
        for task in list(self._background):
            task.cancel()

    def _check_open(self) -> None:
        if self.stopping:
            raise ShuttingDown("the daemon is stopping and takes no new work")

    # == submit ==========================================================================
    def _prepare(self, raw: Any, index: int | None = None) -> tuple[JobSpec, TaskDef, JobRow]:
        where = {} if index is None else {"index": index}
        if not isinstance(raw, dict):
            raise InvalidRequest("a job spec must be a map", {"errors": [{"loc": [], "msg": "not a map"}], **where})
        try:
            spec = JobSpec.model_validate(raw)
        except ValidationError as exc:
            raise InvalidRequest("invalid job spec", {"errors": validation_errors(exc), **where}) from None
        definition = self.registry.get(spec.task)
        if definition is None:
            raise UnknownTask(f"no task named {spec.task!r}", {"task": spec.task, **where})
        mode = spec.mode or definition.default_mode
        if mode not in definition.modes:
            raise InvalidRequest(
                f"task {spec.task!r} does not run in {mode} mode",
                {"errors": [{"loc": ["mode"], "msg": f"supported: {', '.join(definition.modes)}"}], **where},
            )
        if spec.job_id is not None and spec.job_id in spec.depends_on:
            raise InvalidRequest(
                f"job {spec.job_id!r} depends on itself",
                {"errors": [{"loc": ["depends_on"], "msg": "a dependency cycle"}], **where},
            )
        try:
            definition.validate_args(spec.args)
            args_blob = msgpack.packb(spec.args, use_bin_type=True)
            spec_size = len(args_blob) + len(msgpack.packb([spec.labels, spec.depends_on], use_bin_type=True))
        except InvalidRequest as exc:
            exc.details = {**(exc.details or {}), **where}
            raise
        except (ValueError, TypeError, OverflowError) as exc:
            raise InvalidRequest(f"args cannot be stored: {exc}", {"errors": [{"loc": ["args"], "msg": str(exc)}], **where}) from None
        if spec_size > self.config.max_spec:
            raise InvalidRequest(
                f"the job's args and labels take {spec_size} bytes; at most {self.config.max_spec} "
                "fit, so that its record fits in a frame with its result",
                {"errors": [{"loc": ["args"], "msg": "too large"}], **where},
            )
        now = self.clock()
        max_retries = spec.max_retries
        if max_retries is None:
            max_retries = definition.max_retries if definition.max_retries is not None else self.config.default_max_retries
        run_at = spec.run_at if spec.run_at is not None else (now + spec.delay if spec.delay is not None else None)
        row = JobRow(
            seq=0,
            job_id=spec.job_id or "",
            task=spec.task,
            args=spec.args,
            queue=spec.queue,
            priority=spec.priority,
            mode=mode,
            status="pending",
            created_at=now,
            max_retries=max_retries,
            on_interrupt=spec.on_interrupt or definition.on_interrupt,
            dependency_policy=spec.dependency_policy,
            depends_on=list(dict.fromkeys(spec.depends_on)),
            labels=dict(spec.labels),
            timeout=spec.timeout if spec.timeout is not None else definition.timeout,
            run_at=run_at,
            enqueued_at=now,
            # Only a client's own id can be resubmitted, so only then is the digest needed.
            spec_digest=spec_digest(spec) if spec.job_id is not None else b"",
            args_blob=args_blob,
        )
        return spec, definition, row

    def check_spec(self, raw: Any) -> None:
        """Validate a spec as ``submit`` would (task, mode, args), without storing it."""
        self._prepare(raw)

    async def submit(self, raw: Any) -> dict[str, Any]:
        """Validate, store and schedule one job; the record once it is durable."""
        return (await self.submit_many([raw], batch=False))[0]

    async def submit_many(self, raws: Sequence[Any], batch: bool = True) -> list[dict[str, Any]]:
        """All-or-nothing: every spec is valid and stored, or none is."""
        self._check_open()
        prepared = [self._prepare(raw, i if batch else None) for i, raw in enumerate(raws)]
        if batch:
            size = sum(len(msgpack.packb(row.record(), use_bin_type=True)) + 64 for _, _, row in prepared)
            if size > self.config.max_frame - FRAME_ENVELOPE:
                raise InvalidRequest(
                    f"the batch's records would take {size} bytes, more than a frame holds; "
                    "submit fewer jobs at once",
                    {"errors": [{"loc": ["jobs"], "msg": "too large for one reply"}]},
                )
        seen: dict[str, int] = {}
        for i, (spec, _, _) in enumerate(prepared):
            if spec.job_id is not None:
                if spec.job_id in seen:
                    raise InvalidRequest(
                        f"job_id {spec.job_id!r} appears twice in the batch",
                        {"errors": [{"loc": ["jobs", i, "job_id"], "msg": "duplicate"}], "index": i},
                    )
                seen[spec.job_id] = i
        known = await self._check_dependencies(prepared, batch)
        existing = await self._existing_jobs(prepared, batch)
        self._check_open()
        fresh = [row for i, (_, _, row) in enumerate(prepared) if i not in existing]
        if fresh:
            await self._admit(fresh, known)
        return [existing[i] if i in existing else prepared[i][2].record() for i in range(len(prepared))]

    async def _check_dependencies(
        self, prepared: list[tuple[JobSpec, TaskDef, JobRow]], batch: bool
    ) -> dict[str, str]:
        """Refuse unknown ids and cycles; the statuses of the existing dependencies."""
        if not any(spec.depends_on for spec, _, _ in prepared):
            return {}
        problem = dependencies.batch_order_problem(
            [spec.job_id for spec, _, _ in prepared], [spec.depends_on for spec, _, _ in prepared]
        )
        if problem is not None:
            i, dep = problem
            raise InvalidRequest(
                f"spec {i} depends on {dep!r}, which is not an earlier spec of the batch (a cycle)",
                {"errors": [{"loc": ["depends_on"], "msg": "a dependency cycle"}], **({"index": i} if batch else {})},
            )
        in_batch = {spec.job_id for spec, _, _ in prepared if spec.job_id is not None}
        external = sorted({d for spec, _, _ in prepared for d in spec.depends_on if d not in in_batch})
        found = await self.store.get_jobs_by_id(external) if external else {}
        for i, (spec, _, _) in enumerate(prepared):
            for dep in spec.depends_on:
                if dep not in in_batch and dep not in found:
                    raise InvalidRequest(
                        f"unknown dependency {dep!r}",
                        {"errors": [{"loc": ["depends_on"], "msg": f"no job {dep!r}"}], **({"index": i} if batch else {})},
                    )
        return {job_id: row.status for job_id, row in found.items()}

    async def _existing_jobs(
        self, prepared: list[tuple[JobSpec, TaskDef, JobRow]], batch: bool
    ) -> dict[int, dict[str, Any]]:
        """Client ids already in use: same spec → that job's record; else ``conflict``."""
        wanted = {spec.job_id: i for i, (spec, _, _) in enumerate(prepared) if spec.job_id is not None}
        if not wanted:
            return {}
        # A submit of the same id may be committing right now: wait for it first.
        while busy := [self._claimed_ids[j] for j in wanted if j in self._claimed_ids]:
            await asyncio.gather(*busy, return_exceptions=True)
        rows = await self.store.get_jobs_by_id(list(wanted))
        while busy := [self._claimed_ids[j] for j in wanted if j in self._claimed_ids]:
            await asyncio.gather(*busy, return_exceptions=True)
            rows = await self.store.get_jobs_by_id(list(wanted))
        out: dict[int, dict[str, Any]] = {}
        for job_id, row in rows.items():
            i = wanted[job_id]
            if row.spec_digest != prepared[i][2].spec_digest:
                details: dict[str, Any] = {"job_id": job_id}
                if batch:
                    details["index"] = i
                raise Conflict(f"job_id {job_id!r} is already used by a different job", details)
            out[i] = row.record()
        for i, (spec, _, _) in enumerate(prepared):
            if spec.job_id is not None and i not in out and spec.job_id in self._claimed_ids:
                raise Conflict(f"job_id {spec.job_id!r} is being submitted concurrently", {"job_id": spec.job_id})
        return out

    async def _admit(self, rows: list[JobRow], known: dict[str, str] | None = None) -> None:
        known = known or {}
        now = self.clock()
        claim: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        starting: list[JobRow] = []
        for row in rows:
            self._seq += 1
            row.seq = self._seq
            if not row.job_id:
                row.job_id = secrets.token_hex(8)
            self._claimed_ids[row.job_id] = claim
            # Completed is final: a job whose dependencies all completed need not block.
            if row.depends_on and not all(known.get(d) == "completed" for d in row.depends_on):
                row.status = "blocked"
            elif row.run_at is not None and row.run_at > now:
                row.status = "scheduled"
            elif self.scheduler.try_start_now(row.queue, row.mode):
                row.status = "running"
                row.attempts = 1
                row.started_at = now
                starting.append(row)
            else:
                row.status = "pending"
        try:
            await self.store.write(jobs=rows)
        except StorageError:
            for row in starting:
                self.scheduler.release(row.queue, row.mode)
            self._kick()
            raise
        finally:
            for row in rows:
                self._claimed_ids.pop(row.job_id, None)
            claim.set_result(None)
        for row in rows:
            self._moved(row, None)
            if row.status == "running":
                self._launch(row)
            else:
                self._enqueue(row)
        self._arm_timer()
        self._kick()

    def _enqueue(self, row: JobRow) -> None:
        """A committed waiting job joins the scheduler (its row cached while room allows),
        the blocked set (to be evaluated) or the held set."""
        if row.status == "blocked":
            self._blocked[row.seq] = row
            self._evaluate_soon([row.seq])
            return
        if row.status == "held":
            self._held[row.seq] = row
            return
        if row.status == "pending":
            self.scheduler.add(row.seq, row.queue, row.mode, row.priority, row.enqueued_at)
        elif row.status in ("scheduled", "retrying"):
            self.scheduler.defer(row.seq, row.run_at or 0.0)
        else:
            return
        if len(self._rows) < ROW_CACHE_LIMIT:
            self._rows[row.seq] = row

    def _lock(self, seqs: Iterable[int], fut: asyncio.Future[Any] | None = None) -> asyncio.Future[Any]:
        """Mark a change of these jobs as in flight until ``fut`` (a new gate if None) is
        done; ops on them wait for it (see the module docstring)."""
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
        for seq in seqs:
            self._locks[seq] = fut
        return fut

    def _unlock(self, seqs: Iterable[int], fut: asyncio.Future[Any]) -> None:
        """The change is committed (or given up): release its jobs, open a gate."""
        for seq in seqs:
            if self._locks.get(seq) is fut:
                del self._locks[seq]
        if not fut.done():
            fut.set_result(None)

    def _withdraw(self, row: JobRow) -> None:
        """A waiting job leaves wherever it waits (scheduler, blocked or held set)."""
        self.scheduler.discard(row.seq, row.queue)
        self._rows.pop(row.seq, None)
        self._blocked.pop(row.seq, None)
        self._held.pop(row.seq, None)

    def _waiting_status(self, row: JobRow) -> str:
        """The waiting status that applies to a job leaving ``held``, ``failed`` or ``cancelled``."""
        if row.depends_on:
            return "blocked"  # evaluated right after its commit
        if row.run_at is not None and row.run_at > self.clock():
            return "scheduled"
        return "pending"

    # == dependencies ====================================================================
    def _evaluate_soon(self, seqs: Iterable[int]) -> None:
        """Evaluate these blocked jobs once per loop iteration, in one batch."""
        first = not self._to_evaluate
        self._to_evaluate.update(seqs)
        if first and self._to_evaluate and self._loop is not None:
            self._loop.call_soon(self._evaluate_now)

    def _evaluate_now(self) -> None:
        seqs, self._to_evaluate = self._to_evaluate, set()
        if seqs and not self.stopping:
            self._spawn(self._evaluate(seqs))

    async def _evaluate(self, seqs: Iterable[int]) -> None:
        """Blocked jobs whose dependencies settled become pending, or are cancelled."""
        rows: list[JobRow] = []
        for seq in seqs:
            row = self._blocked.get(seq)
            if row is None:
                continue
            lock = self._locks.get(seq)
            if lock is not None:  # being changed: look again once that change is done
                def reevaluate(_f: asyncio.Future[Any], seq: int = seq) -> None:
                    self._evaluate_soon([seq])

                lock.add_done_callback(reevaluate)
                continue
            rows.append(row)
        if not rows:
            return
        gate = self._lock([row.seq for row in rows])
        changed: list[JobRow] = []
        snapshots: list[tuple[Any, ...]] = []
        try:
            wanted = sorted({d for r in rows for d in r.depends_on})
            statuses = {j: r.status for j, r in (await self.store.get_jobs_by_id(wanted)).items()}
            now = self.clock()
            for row in rows:
                verdict, culprit, unsettled = dependencies.verdict(row.depends_on, row.dependency_policy, statuses)
                if verdict == dependencies.FAILED:
                    snapshots.append(row.snapshot())
                    row.move("cancelled")
                    row.finished_at = now
                    row.error = {
                        "type": "dependency_failed",
                        "message": f"dependency {culprit} {statuses.get(culprit or '', 'is gone')}",
                        "retryable": False,
                    }
                    changed.append(row)
                elif verdict == dependencies.READY:
                    if row.run_at is not None and row.run_at > now:
                        if not self.scheduler.is_waiting(row.seq):
                            self.scheduler.defer(row.seq, row.run_at)  # run_at is the earliest start
                        continue
                    snapshots.append(row.snapshot())
                    row.move("pending")
                    row.enqueued_at = now
                    changed.append(row)
                else:
                    for dep in unsettled:
                        self._dependents.setdefault(dep, set()).add(row.seq)
            if changed:
                await self.store.write(jobs=changed)
        except StorageError as exc:
            log.error("could not update %d blocked jobs, retrying: %s", len(changed), exc)
            for row, snap in zip(changed, snapshots, strict=False):
                row.restore(snap)
            if self._loop is not None:
                self._loop.call_later(STORAGE_RETRY[1], self._evaluate_soon, [r.seq for r in rows])
            return
        finally:
            self._unlock([row.seq for row in rows], gate)
        for row in changed:
            self._blocked.pop(row.seq, None)
            self.scheduler.discard(row.seq, row.queue)
            self._rejoined(row, "blocked")
        self._arm_timer()
        self._kick()

    async def _inputs(self, row: JobRow) -> dict[str, Any]:
        """The results of a job's dependencies (nil for those that did not complete)."""
        if not row.depends_on:
            return {}
        found = await self.store.get_jobs_by_id(row.depends_on)
        return {
            dep: (found[dep].result if dep in found and found[dep].status == "completed" else None)
            for dep in row.depends_on
        }

    # == dispatch ========================================================================
    def _kick(self) -> None:
        if not self._kick_pending and self._loop is not None:
            self._kick_pending = True
            self._loop.call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._kick_pending = False
        if self.stopping:
            return
        rows, missing = self._take_starts()
        if rows:
            self._spawn(self._begin(rows))
        if missing:
            self._spawn(self._load_and_begin(missing))

    def _take_starts(self) -> tuple[list[JobRow], list[Start]]:
        """Jobs the free slots allow: rows in hand, and starts whose rows must be read."""
        if self.stopping:
            return [], []
        rows: list[JobRow] = []
        missing: list[Start] = []
        for start in self.scheduler.pick():
            row = self._rows.pop(start.seq, None)
            if row is None:
                missing.append(start)
            else:
                rows.append(row)
        return rows, missing

    def _mark_started(self, rows: list[JobRow]) -> list[tuple[Any, ...]]:
        now = self.clock()
        snapshots = []
        for row in rows:
            snapshots.append(row.snapshot())
            row.move("running")
            row.attempts += 1
            row.started_at = now
            row.finished_at = None
            row.progress = None
            row.error = None  # kept while retrying (why it retries), gone once it runs again
        return snapshots

    async def _load_and_begin(self, starts: list[Start]) -> None:
        seqs = [s.seq for s in starts]
        gate = self._lock(seqs)
        try:
            found = await self.store.get_jobs(seqs)
        except StorageError as exc:
            log.error("cannot read jobs to start: %s", exc)
            found = {}
        finally:
            self._unlock(seqs, gate)
        rows = []
        for start in starts:
            row = found.get(start.seq)
            if row is None or row.status != "pending":
                # Only if the read failed or the database was changed behind our back.
                log.error("job %d was picked but could not be read as pending", start.seq)
                self.scheduler.release(start.queue, start.mode)
                if row is None and start.seq not in found:
                    self._retry_dispatch_later()
                continue
            rows.append(row)
        if rows:
            await self._begin(rows)

    async def _begin(
        self, rows: list[JobRow], extra: Sequence[JobRow] = (), logs: Sequence[LogLine] = ()
    ) -> None:
        """Commit ``rows`` as running (``extra`` rows, locked by the caller, and ``logs`` in
        the same batch), then
        start them. If the commit fails they wait in the scheduler again."""
        snapshots = self._mark_started(rows)
        fut = self._lock([row.seq for row in rows], self.store.write(jobs=[*extra, *rows], logs=logs))
        try:
            await fut
        except StorageError as exc:
            log.error("could not start %d jobs: %s", len(rows), exc)
            for row, snap in zip(rows, snapshots, strict=False):
                self.scheduler.release(row.queue, row.mode)
                row.restore(snap)
                self._enqueue(row)
            self._retry_dispatch_later()
            raise
        finally:
            self._unlock([row.seq for row in rows], fut)
        for row in rows:
            self._moved(row, "pending")
            self._launch(row)

    def _retry_dispatch_later(self) -> None:
        if self._loop is not None:
            self._loop.call_later(STORAGE_RETRY[1], self._kick)

    def _activate(self, active: Active) -> None:
        self._active[active.row.seq] = active
        self._active_by_id[active.row.job_id] = active

    def _deactivate(self, row: JobRow) -> None:
        active = self._active.pop(row.seq, None)
        if active is not None and self._active_by_id.get(row.job_id) is active:
            del self._active_by_id[row.job_id]

    def _launch(self, row: JobRow) -> None:
        """Start the attempt of a job whose ``running`` row is committed."""
        definition = self.registry.get(row.task)
        executor = self.executors[row.mode]
        if definition is None:  # the task module was removed between restarts
            active = Active(row, JobCall(row.job_id, row.attempts, _missing_task(row.task), row.args, _NullEvents()))
            self._activate(active)
            active.task = self._spawn(self._settle(active, Outcome.failure("exception", f"task {row.task!r} is not loaded", retryable=False)))
            return
        active = Active(row, None)  # type: ignore[arg-type]
        active.call = JobCall(row.job_id, row.attempts, definition, row.args, _ActiveEvents(self, active))
        self._activate(active)
        # From becoming ready to really starting: includes the commit of its running row.
        self.metrics.started_after(max(0.0, self.clock() - row.enqueued_at))
        if row.timeout is not None and self._loop is not None:
            active.timer = self._loop.call_later(row.timeout, self._on_timeout, active)
        active.task = self._spawn(self._run(active, executor))

    async def _run(self, active: Active, executor: Executor) -> None:
        try:
            if active.row.depends_on:
                active.call.inputs = await self._inputs(active.row)
            outcome = await executor.run(active.call)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an executor bug must not take the daemon down
            log.exception("executor %s failed on job %s", executor.mode, active.row.job_id)
            outcome = Outcome.failure("exception", f"internal error in the {executor.mode} executor: {exc}")
        finally:
            if active.timer is not None:
                active.timer.cancel()
        await self._settle(active, outcome)

    def _result_problem(self, result: Any) -> Outcome | None:
        try:
            size = len(msgpack.packb(result, use_bin_type=True))
        except (TypeError, ValueError, OverflowError) as exc:
            return Outcome.failure("exception", f"the result cannot be stored: {exc}", retryable=False)
        if size > self.config.max_result:
            return Outcome.failure(
                "result_too_large",
                f"the result is {size} bytes, above max_result ({self.config.max_result})",
                retryable=False,
            )
        return None

    def _apply_outcome(self, row: JobRow, outcome: Outcome, now: float) -> None:
        """Turn an attempt's outcome into the job's next status (not yet committed)."""
        if outcome.ok:
            problem = self._result_problem(outcome.result)
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
        error = {"type": outcome.error_type, "message": message, "retryable": outcome.retryable}
        row.error = error
        if outcome.retryable and retries_left(row.attempts, row.round_base, row.max_retries) > 0:
            retry_number = row.attempts - row.round_base
            delay = outcome.retry_after if outcome.retry_after is not None else self.backoff.delay(retry_number)
            row.move("retrying")
            row.run_at = now + max(0.0, delay)
        else:
            row.move("cancelled" if outcome.error_type == "cancelled" else "failed")
            row.finished_at = now

    async def _settle(self, active: Active, outcome: Outcome) -> None:
        """An attempt's work has stopped: record its outcome, free its slot, start the next."""
        row = active.row
        if active.ended:  # cancelled or timed out earlier: its status is already committed
            self._winding_down.discard(active)
            self.scheduler.release(row.queue, row.mode)
            self._kick()
            return
        active.ended = True
        now = self.clock()
        events = active.call.events
        if isinstance(events, _ActiveEvents) and events.output_problem is not None and outcome.ok:
            outcome = events.output_problem
        self._apply_outcome(row, outcome, now)
        lines: list[LogLine] = []
        notes: list[tuple[str, str]] = []
        if isinstance(events, _ActiveEvents):
            events.flush()
            events.flush_progress()
            if events.dropped_lines:
                notes.append(("log", f"[pyrexis] {events.dropped_lines} lines dropped (log limit)"))
        if outcome.traceback:
            notes.extend(("stderr", text) for text in outcome.traceback.rstrip("\n").split("\n"))
        for stream, text in notes:
            row.log_seq += 1
            lines.append(LogLine(row.seq, row.log_seq, stream, text, now))
        self.scheduler.release(row.queue, row.mode)
        starts, missing = self._take_starts()
        if missing:
            self._spawn(self._load_and_begin(missing))
        await self._commit_outcome(active, lines, starts)

    async def _commit_outcome(self, active: Active, lines: list[LogLine], starts: list[JobRow]) -> None:
        row = active.row
        pause = STORAGE_RETRY[0]
        # Locked until the end is durable, across retries: until then no op may act on
        # (or show) the outcome held in memory.
        lock = self._lock([row.seq])
        try:
            while True:
                try:
                    if starts:
                        # One commit for "this one finished" and "these started".
                        await self._begin(starts, extra=[row], logs=lines)
                    else:
                        await self.store.write(jobs=[row], logs=lines)
                    break
                except StorageError as exc:
                    starts = []  # _begin put them back in the queue
                    log.error("could not record the end of job %s, retrying: %s", row.job_id, exc)
                    await asyncio.sleep(pause)
                    pause = min(STORAGE_RETRY[1], pause * 2)
        finally:
            self._unlock([row.seq], lock)
        self._deactivate(row)
        self._publish_stored(row, lines, ())
        self._committed_end(row)
        self._kick()

    def _moved(self, row: JobRow, old: str | None, old_queue: str | None = None) -> None:
        """A status change of ``row`` has committed: count it and tell the watchers."""
        self.metrics.moved(row.queue, row.mode, old, row.status, old_queue)
        if self.hub.wants(row.job_id):
            self.hub.publish(state_event(row, self.clock()), row.task, row.queue)
        if row.terminal:
            self._signal_log(row.seq)
            dependents = self._dependents.pop(row.job_id, None)
            if dependents:
                self._evaluate_soon(dependents)

    def _signal_log(self, seq: int) -> None:
        """Wake the ``logs --follow`` readers of job ``seq``: lines or an end committed."""
        fut = self._log_signals.pop(seq, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def log_signal(self, seq: int) -> asyncio.Future[None]:
        """A future that resolves at the next commit of log lines or of an end of ``seq``."""
        fut = self._log_signals.get(seq)
        if fut is None or fut.done():
            fut = asyncio.get_running_loop().create_future()
            self._log_signals[seq] = fut
        return fut

    def _committed_end(self, row: JobRow) -> None:
        self._moved(row, "running")
        if row.status == "completed":
            self.metrics.completed(self.clock())
        if row.status == "retrying":
            self._enqueue(row)
            self._arm_timer()
        else:
            self._notify(row)

    def _on_timeout(self, active: Active) -> None:
        if active.ended or self.stopping:
            return
        self._spawn(self._end_early(active, Outcome.failure("timeout", f"timed out after {active.row.timeout} s")))

    async def _end_early(self, active: Active, outcome: Outcome) -> JobRow:
        """Decide a running attempt's outcome now (cancel, timeout); its work stops after."""
        row = active.row
        snapshot = row.snapshot()
        active.ended = True
        self._apply_outcome(row, outcome, self.clock())
        fut = self._lock([row.seq], self.store.write(jobs=[row]))
        try:
            await fut
        except StorageError:
            row.restore(snapshot)
            active.ended = False
            raise
        finally:
            self._unlock([row.seq], fut)
        self._deactivate(row)
        self._winding_down.add(active)
        active.call.cancel()
        self._committed_end(row)
        return row

    # == timers ==========================================================================
    def _arm_timer(self) -> None:
        if self._loop is None or self.stopping:
            return
        at = self.scheduler.next_timer()
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            delay = max(0.0, at - self.clock())
            self._timer = self._loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        due = self.scheduler.due(self.clock())
        blocked = [seq for seq in due if seq in self._blocked]
        if blocked:
            self._evaluate_soon(blocked)
            due = [seq for seq in due if seq not in self._blocked]
        if due:
            self._spawn(self._promote(due))
        self._arm_timer()

    async def _promote(self, seqs: list[int]) -> None:
        """Scheduled and retrying jobs whose time has come become pending."""
        gate = self._lock(seqs)
        try:
            rows = {s: self._rows.pop(s) for s in seqs if s in self._rows}
            missing = [s for s in seqs if s not in rows]
            if missing:
                rows.update(await self.store.get_jobs(missing))
            now = self.clock()
            ready = [rows[s] for s in seqs if s in rows and rows[s].status in ("scheduled", "retrying")]
            olds = [r.status for r in ready]
            for row in ready:
                row.move("pending")
                row.enqueued_at = now
            await self.store.write(jobs=ready)
        except StorageError as exc:
            log.error("could not release %d delayed jobs, retrying: %s", len(seqs), exc)
            for seq in seqs:
                self.scheduler.defer(seq, self.clock() + STORAGE_RETRY[1])
            self._arm_timer()
            return
        finally:
            self._unlock(seqs, gate)
        for row, old in zip(ready, olds, strict=False):
            self._moved(row, old)
            self._enqueue(row)
        self._kick()

    # == events ==========================================================================
    def _stored_events(
        self, fut: asyncio.Future[None], row: JobRow, lines: list[LogLine], outputs: list[OutputItem]
    ) -> None:
        """Log lines and outputs are durable: now watchers and followers may see them."""
        if fut.cancelled() or fut.exception() is not None:
            log.warning("log lines and outputs of job %s not stored: %s", row.job_id, None if fut.cancelled() else fut.exception())
            return
        self._publish_stored(row, lines, outputs)

    def _publish_stored(self, row: JobRow, lines: Sequence[LogLine], outputs: Sequence[OutputItem]) -> None:
        if lines:
            self._signal_log(row.seq)
        if not self.hub.wants(row.job_id):
            return
        for kind, items in (("log", lines), ("output", outputs)):
            if items:
                marker = {"kind": kind, "job_id": row.job_id, "_seq": row.seq, "_from": items[0].seq, "_to": items[-1].seq}
                self.hub.publish(marker, row.task, row.queue)

    # == progress ========================================================================
    def _progress_changed(self, active: Active) -> None:
        if self._progress_timer is None and self._loop is not None:
            self._progress_timer = self._loop.call_later(PROGRESS_FLUSH, self._flush_progress)

    def _flush_progress(self) -> None:
        self._progress_timer = None
        rows = []
        for active in self._active.values():
            if active.progress_dirty and not active.ended and active.row.seq not in self._locks:
                active.progress_dirty = False
                rows.append(active.row)
        if rows:
            self.store.write(jobs=rows).add_done_callback(_log_write_failure)

    # == client ops ======================================================================
    async def _current(self, job_id: str) -> JobRow:
        """The latest committed state of a job, with no change of it in flight.

        A read from the store can be overtaken by a commit before this coroutine resumes,
        so a stored row is trusted only if the in-memory view agrees with it: a running
        job is active, a waiting one is in the scheduler, a terminal one is in neither.
        Otherwise the job moved meanwhile and it is read again. The caller acts on the
        returned row without awaiting in between.
        """
        for _ in range(1000):
            stored = await self.store.get_job(job_id)
            if stored is None:
                raise NotFound(f"no job {job_id!r}", {"job_id": job_id})
            seq = stored.seq
            lock = self._locks.get(seq)
            if lock is not None:
                await asyncio.gather(lock, return_exceptions=True)
                continue
            active = self._active.get(seq)
            if active is not None:
                return active.row
            cached = self._rows.get(seq) or self._blocked.get(seq) or self._held.get(seq)
            if cached is not None:
                return cached
            waiting_here = self.scheduler.is_waiting(seq)
            if stored.status in ("blocked", "held"):
                pass  # always in memory: it moved after the read
            elif stored.status in WAITING_IN_SCHEDULER:
                if waiting_here:
                    return stored
            elif stored.status != "running" and not waiting_here:
                return stored
            await asyncio.sleep(0)  # it moved after the read: read again
        raise Internal(f"job {job_id!r} does not settle; its state is inconsistent")

    async def snapshot(self, job_id: str) -> JobRow:
        """The job's committed state now (see :meth:`_current`), for a stream's first event."""
        return await self._current(job_id)

    async def get(self, job_id: str) -> dict[str, Any]:
        row = await self.store.get_job(job_id)
        if row is None:
            raise NotFound(f"no job {job_id!r}", {"job_id": job_id})
        return row.record()

    async def cancel(self, job_id: str) -> dict[str, Any]:
        self._check_open()
        row = await self._current(job_id)
        if row.terminal:
            raise InvalidState(f"job {job_id!r} is already {row.status}", {"status": row.status})
        if row.status == "running":
            active = self._active[row.seq]
            await self._end_early(active, Outcome.failure("cancelled", "cancelled by a client", retryable=False))
            return row.record()
        return (await self._change_waiting(row, self._to_cancelled)).record()

    def _to_cancelled(self, row: JobRow) -> None:
        row.move("cancelled")
        row.finished_at = self.clock()
        row.error = {"type": "cancelled", "message": "cancelled by a client", "retryable": False}

    async def _change_waiting(self, row: JobRow, change: Callable[[JobRow], None]) -> JobRow:
        """Apply ``change`` to a waiting (or terminal) job durably; it leaves the
        scheduler meanwhile and rejoins wherever its new status says."""
        old = row.status
        old_queue = row.queue
        self._recent_ends.pop(row.job_id, None)  # a retried job's old end no longer holds
        self._withdraw(row)
        snapshot = row.snapshot()
        change(row)
        fut = self._lock([row.seq], self.store.write(jobs=[row]))
        try:
            await fut
        except StorageError:
            row.restore(snapshot)
            self._enqueue(row)
            raise
        finally:
            self._unlock([row.seq], fut)
        self._rejoined(row, old, old_queue)
        if not row.terminal:
            self._arm_timer()
            self._kick()
        return row

    def _rejoined(self, row: JobRow, old: str, old_queue: str | None = None) -> None:
        """A waiting job's change committed: count it, then wake its waiters if it ended,
        else put it where its new status waits."""
        self._moved(row, old, old_queue)
        if row.terminal:
            self._notify(row)
        else:
            self._enqueue(row)

    async def retry(self, job_id: str) -> dict[str, Any]:
        """A failed or cancelled job waits again, with a fresh round of retries."""
        self._check_open()
        row = await self._current(job_id)
        if row.status not in ("failed", "cancelled"):
            raise InvalidState(
                f"only a failed or cancelled job can be retried; {job_id!r} is {row.status}",
                {"status": row.status},
            )

        def again(r: JobRow) -> None:
            now = self.clock()
            r.move(self._waiting_status(r))  # a future run_at still holds: scheduled
            r.round_base = r.attempts
            r.error = None
            r.result = None
            r.finished_at = None
            r.started_at = None
            r.progress = None
            r.enqueued_at = now

        return (await self._change_waiting(row, again)).record()

    async def hold(self, job_id: str) -> dict[str, Any]:
        """A waiting job stays waiting until released."""
        self._check_open()
        row = await self._current(job_id)
        if row.status not in WAITING or row.status == "held":
            raise InvalidState(f"only a waiting job can be held; {job_id!r} is {row.status}", {"status": row.status})
        return (await self._change_waiting(row, lambda r: r.move("held"))).record()

    async def release(self, job_id: str) -> dict[str, Any]:
        """A held job goes back to the waiting status that now applies."""
        self._check_open()
        row = await self._current(job_id)
        if row.status != "held":
            raise InvalidState(f"only a held job can be released; {job_id!r} is {row.status}", {"status": row.status})

        def unhold(r: JobRow) -> None:
            r.move(self._waiting_status(r))
            r.enqueued_at = self.clock()

        return (await self._change_waiting(row, unhold)).record()

    async def update(self, job_id: str, priority: int | None, queue: str | None) -> dict[str, Any]:
        """Change a waiting job's priority or queue (it keeps its time waited, for aging)."""
        self._check_open()
        row = await self._current(job_id)
        if row.status not in WAITING:
            raise InvalidState(f"only a waiting job can be updated; {job_id!r} is {row.status}", {"status": row.status})

        def change(r: JobRow) -> None:
            if priority is not None:
                r.priority = priority
            if queue is not None:
                r.queue = queue

        return (await self._change_waiting(row, change)).record()

    async def wait(self, job_id: str, timeout: float | None) -> dict[str, Any]:
        """The job's record once it is terminal; ``timeout`` error if that takes too long."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(job_id, [])
        waiters.append(fut)  # before the read, so a commit after the read still wakes us
        try:
            active = self._active_by_id.get(job_id)
            ended = self._recent_ends.get(job_id)
            if ended is not None:
                return ended  # a committed end (a retry since would have dropped it)
            if active is not None and not active.ended and active.row.seq not in self._locks:
                status = "running"  # committed, and its end will wake us: no read needed
            else:
                row = await self.store.get_job(job_id)
                if row is None:
                    raise NotFound(f"no job {job_id!r}", {"job_id": job_id})
                if row.terminal:
                    return row.record()
                status = row.status
            self._check_open()
            try:
                return await asyncio.wait_for(asyncio.shield(fut), timeout)
            except TimeoutError:
                raise Timeout(f"job {job_id!r} is not finished after {timeout} s", {"status": status}) from None
        finally:
            waiters = self._waiters.get(job_id, [])
            if fut in waiters:
                waiters.remove(fut)
            if not waiters:
                self._waiters.pop(job_id, None)

    def _notify(self, row: JobRow) -> None:
        """A job's end is committed: wake its waiters, remember its record for a while."""
        record = row.record()
        recent = self._recent_ends
        recent[row.job_id] = record
        if len(recent) > RECENT_ENDS:
            recent.popitem(last=False)
        futures = self._waiters.pop(row.job_id, None)
        if futures:
            for fut in futures:
                if not fut.done():
                    fut.set_result(record)

    async def list_jobs(
        self,
        statuses: Sequence[str] | None,
        task: str | None,
        queue: str | None,
        limit: int,
        after: str | None,
    ) -> tuple[list[dict[str, Any]], str | None, list[JobRow]]:
        cursor = decode_cursor(after) if after else None
        rows = await self.store.list_jobs(statuses, task, queue, limit + 1, cursor)
        more = len(rows) > limit
        rows = rows[:limit]
        return [r.record() for r in rows], (encode_cursor(rows[-1]) if more and rows else None), rows

    async def logs(self, job_id: str, since: int) -> tuple[int, list[LogLine]]:
        """The stored log lines of a job from ``since`` (its ``seq`` and the lines)."""
        row = await self.store.get_job(job_id)
        if row is None:
            raise NotFound(f"no job {job_id!r}", {"job_id": job_id})
        active = self._active.get(row.seq)
        if active is not None and isinstance(active.call.events, _ActiveEvents):
            await active.call.events.drain()
        return row.seq, await self.store.read_logs(row.seq, since, LOG_PAGE)

    async def more_logs(self, job_seq: int, since: int) -> list[LogLine]:
        return await self.store.read_logs(job_seq, since, LOG_PAGE)

    async def more_outputs(self, job_seq: int, since: int) -> list[OutputItem]:
        return await self.store.read_outputs(job_seq, since, LOG_PAGE)

    def stats(self) -> dict[str, Any]:
        out = self.metrics.snapshot(self.clock(), self.scheduler.slots)
        store = self.store
        out["store"] = {
            "commits": store.commits,
            "writes_per_commit": store.committed_writes / store.commits if store.commits else 0.0,
            "commit_ms": 1000.0 * store.commit_seconds / store.commits if store.commits else 0.0,
            "sync": store.sync,
        }
        return out

    def task_list(self) -> list[dict[str, Any]]:
        return [t.describe() for t in self.registry.all()]

    # == queues ==========================================================================
    def queue_row(self, name: str) -> dict[str, Any]:
        q = self.scheduler.queue(name)
        return {
            "queue": name,
            "paused": q.paused,
            "weight": q.weight,
            "max_concurrency": q.max_concurrency,
            "aging": q.aging,
            "waiting": self.metrics.count(name, WAITING),
            "running": self.metrics.count(name, frozenset({"running"})),
        }

    def queue_rows(self) -> list[dict[str, Any]]:
        names = set(self.scheduler.queues) | self.metrics.queues()
        return [self.queue_row(n) for n in sorted(names)]

    def _settings_of(self, name: str, **changes: Unpack[QueueChanges]) -> QueueSettings:
        q = self.scheduler.queue(name)
        current = QueueSettings(name, q.paused, q.weight, q.max_concurrency, q.aging)
        return replace(current, **changes)

    async def set_paused(self, queue: str | None, paused: bool) -> list[dict[str, Any]]:
        """Pause or resume one queue, or every queue (including later ones). Durable."""
        self._check_open()
        if queue is None:
            names = set(self.scheduler.queues) | self.metrics.queues()
            await self.store.write(
                queues=[self._settings_of(n, paused=paused) for n in names],
                settings=[("paused_by_default", paused)],
            )
            for n in names:
                self.scheduler.queue(n)
            self.scheduler.pause_all(paused)
            self._kick()
            return self.queue_rows()
        await self.store.write(queues=[self._settings_of(queue, paused=paused)])
        self.scheduler.configure(queue, paused=paused)
        self._kick()
        return [self.queue_row(queue)]

    async def configure_queue(self, queue: str, changes: QueueChanges) -> dict[str, Any]:
        self._check_open()
        await self.store.write(queues=[self._settings_of(queue, **changes)])
        self.scheduler.configure(
            queue,
            weight=changes.get("weight"),
            max_concurrency=changes["max_concurrency"] if "max_concurrency" in changes else False,
            aging=changes.get("aging"),
        )
        self._kick()
        return self.queue_row(queue)

    # == helpers =========================================================================
    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)
        return task

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, PyrexisError):
            log.error("background task failed", exc_info=exc)

    @property
    def running(self) -> int:
        return len(self._active)


class _NullEvents:
    def log(self, stream: str, line: str) -> None:
        pass

    def keeps_logs(self) -> bool:
        return False

    def skipped_lines(self, count: int) -> None:
        pass

    def spawned(self, pid: int, started: int | None) -> None:
        pass

    def output(self, value: Any) -> None:
        pass

    def progress(self, fraction: float | None, message: str | None) -> None:
        pass

    async def drain(self) -> None:
        pass


def _missing_task(name: str) -> TaskDef:
    from pyrexisd.tasks.registry import make_task

    def missing() -> None:
        raise RuntimeError(f"task {name!r} is not loaded")

    return make_task(missing, name=name)


