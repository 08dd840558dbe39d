"""Dispatch: pending jobs into free slots, attempts to their end, and the end committed.

A start is committed before its work begins (the ``running`` row, attempt counted). An
attempt's end is committed together with the starts its freed slot allows, so a busy
daemon spends one fsync for "A finished, B started". An end that cannot be committed
(a full disk) is retried until it is, the job locked meanwhile, so no op sees or acts on
an outcome that is not durable. Cancel and timeout decide the outcome at once; the work
is stopped after, and its slot is freed only when it really has.

``max_running_per_user`` holds a user's jobs back rather than refusing them: a job the
scheduler picks while its owner already occupies that many slots gives the slot back and
is parked in the waiting room (still ``pending``); when one of the owner's slots frees,
its best parked job (highest priority, then oldest) goes back to the scheduler. Other
users' jobs meanwhile take the free slots.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from protocol.errors import StorageError
from protocol.pipeline import PIPELINE_MODE
from pyrexisd.core import model
from pyrexisd.core.attempt import Attempt, AttemptEvents, AttemptLimits, ProgressWriter
from pyrexisd.core.background import Background
from pyrexisd.core.cache import ResultCache
from pyrexisd.core.ledger import Gate, Ledger
from pyrexisd.core.linger import Linger
from pyrexisd.core.model import JobRow
from pyrexisd.core.owners import Owners
from pyrexisd.core.pipeline.runner import Pipelines
from pyrexisd.core.waiting import STORAGE_RETRY, Waiting
from pyrexisd.events import EventHub
from pyrexisd.executors.base import Executor, JobCall, Outcome, RunAs
from pyrexisd.metrics import Metrics
from pyrexisd.retry import Backoff
from pyrexisd.scheduler import Scheduler, Start
from pyrexisd.store import Store
from pyrexisd.tasks.registry import Registry, TaskDef, make_task

log = logging.getLogger(__name__)

FIRST_RETRY = 0.05  # first pause before an end that failed to commit is written again


class Dispatch:
    """Starts what the scheduler picks, supervises attempts, settles their outcomes."""

    def __init__(
        self,
        store: Store,
        ledger: Ledger,
        waiting: Waiting,
        scheduler: Scheduler,
        executors: dict[str, Executor],
        registry: Registry,
        hub: EventHub,
        metrics: Metrics,
        background: Background,
        limits: AttemptLimits,
        kill_grace: float,
        clock: Callable[[], float],
        owners: Owners | None = None,
        max_running_per_user: int | None = None,
        pipelines: Pipelines | None = None,
        cache: ResultCache | None = None,
    ) -> None:
        self.store = store
        self.cache = cache
        self.linger = Linger()  # when an end may wait for another slot's (see core/linger)
        self.ledger = ledger
        self.waiting = waiting
        self.scheduler = scheduler
        self.executors = executors
        self.registry = registry
        self.hub = hub
        self.metrics = metrics
        self.background = background
        self.limits = limits
        self.kill_grace = kill_grace
        self.clock = clock
        self.backoff = Backoff()
        self.owners = owners if owners is not None else ledger.owners
        self.max_running_per_user = max_running_per_user
        self.pipelines = pipelines  # runs the jobs of mode "pipeline"
        self._occupied: Counter[int] = Counter()  # slots each owner's jobs hold
        self._active: dict[int, Attempt] = {}
        self._winding_down: set[Attempt] = set()  # ended early; the work is still stopping
        self._kick_pending = False
        self._picked: dict[int, Gate] = {}  # seq -> its pick's lock
        self._progress = ProgressWriter(store, ledger, self._active)
        waiting.on_ready = self.kick

    # -- start-up -----------------------------------------------------------------------
    async def start(self) -> None:
        """Start the executors, then whatever the free slots allow."""
        for mode, executor in self.executors.items():
            executor.on_slots = functools.partial(self._resize, mode)
            await executor.start()
        self.kick()

    def _resize(self, mode: str, slots: int) -> None:
        """An executor's capacity changed while the daemon runs (the dask mode follows
        its cluster): more slots start waiting jobs at once; fewer let running ones end."""
        self.scheduler.resize(mode, slots)
        self.kick()

    # -- picking and starting -------------------------------------------------------------
    def kick(self) -> None:
        """Start what the free slots allow, once per loop iteration however often asked."""
        if not self._kick_pending:
            self._kick_pending = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._kick_pending = False
        rows, missing = self.take_starts()
        if rows:
            self.background.spawn(self.begin(rows))
        if missing:
            self.background.spawn(self._load_and_begin(missing))
        self.waiting.fill_windows()

    def take_starts(self) -> tuple[list[JobRow], list[Start]]:
        """Jobs the free slots allow: rows in hand, and starts whose rows must be read.

        Every one is locked from this moment until its start is committed (or put back):
        its row still says pending in the store, and must not be paged in again meanwhile.
        """
        if self.ledger.stopping.is_set():
            return [], []
        rows: list[JobRow] = []
        missing: list[Start] = []
        picked = self.scheduler.pick()
        if not picked:
            return rows, missing
        gate = self.ledger.lock(start.seq for start in picked)
        parked = False
        for start in picked:
            self._picked[start.seq] = gate
            row = self.waiting.take(start.seq)
            if row is None:
                missing.append(start)
            elif self._claim_slot(row):
                rows.append(row)
            else:
                parked = True
        if parked:
            self.kick()  # the slots they gave back may suit other users' jobs
        return rows, missing

    def _started(self, seqs: Iterable[int]) -> None:
        """These picks are committed as running, or put back: their pick locks go."""
        for seq in seqs:
            gate = self._picked.pop(seq, None)
            if gate is not None:
                self.ledger.unlock((seq,), gate)

    def try_start_now(self, row: JobRow) -> bool:
        """Take a slot for a job being submitted, if it may start at once."""
        if self._at_cap(self.owners.of(row.owner)):
            return False
        if not self.scheduler.try_start_now(row.queue, row.mode):
            return False
        self._occupied[self.owners.of(row.owner)] += 1
        return True

    # -- slots per owner ----------------------------------------------------------------
    def _at_cap(self, owner: int) -> bool:
        cap = self.max_running_per_user
        return cap is not None and self._occupied[owner] >= cap

    def _claim_slot(self, row: JobRow) -> bool:
        """The scheduler gave ``row`` a slot: keep it (counted for its owner), or give it
        back and park the job when its owner holds ``max_running_per_user`` slots."""
        owner = self.owners.of(row.owner)
        if self._at_cap(owner):
            self.scheduler.release(row.queue, row.mode)
            self.waiting.park(owner, row)
            self._started((row.seq,))  # not starting: it waits, parked, unlocked
            return False
        self._occupied[owner] += 1
        return True

    def release_slot(self, row: JobRow) -> None:
        """``row``'s job left its slot (ended, stopped, or its start failed): the slot is
        free, and one of the owner's parked jobs may wait for it again."""
        self.scheduler.release(row.queue, row.mode)
        owner = self.owners.of(row.owner)
        self._occupied[owner] -= 1
        if self._occupied[owner] <= 0:
            del self._occupied[owner]
        cap = self.max_running_per_user
        if cap is not None and self.waiting.unpark(owner, cap - self._occupied[owner]):
            self.kick()

    def set_running_cap(self, cap: int | None) -> None:
        """A new ``max_running_per_user`` (reload): under a higher cap, or none, the
        owners' parked jobs may start in the room it makes."""
        self.max_running_per_user = cap
        moved = False
        for owner in self.waiting.parked_owners():
            room = 1 << 62 if cap is None else cap - self._occupied.get(owner, 0)
            moved = self.waiting.unpark(owner, room) or moved
        if moved:
            self.kick()

    async def _load_and_begin(self, starts: list[Start]) -> None:
        seqs = [s.seq for s in starts]
        try:
            found = await self.store.reads.get_jobs(seqs)
        except StorageError as exc:
            log.error("cannot read jobs to start: %s", exc)
            found = {}
        rows = []
        parked = False
        for start in starts:
            row = found.get(start.seq)
            if row is None or row.status != "pending":
                # Only if the read failed or the database was changed behind our back.
                log.error("job %d was picked but could not be read as pending", start.seq)
                self.scheduler.release(start.queue, start.mode)
                self._started((start.seq,))
                if row is None:
                    self._retry_dispatch_later()
                continue
            if self._claim_slot(row):
                rows.append(row)
            else:
                parked = True
        if parked:
            self.kick()
        if rows:
            await self.begin(rows)

    async def begin(self, rows: list[JobRow]) -> None:
        """Commit ``rows`` (their slots taken) as running, then start their work. If the
        commit fails they wait in the scheduler again."""
        now = self.clock()
        try:
            async with self.ledger.change(rows):
                for row in rows:
                    model.start_attempt(row, now)
        except StorageError as exc:
            log.error("could not start %d jobs (%s): %s", len(rows), ", ".join(r.job_id for r in rows[:5])
                      + (" ..." if len(rows) > 5 else ""), exc)
            self._put_back(rows)
            return
        self._started(row.seq for row in rows)
        for row in rows:
            self.launch(row)

    def _put_back(self, rows: Sequence[JobRow]) -> None:
        """Starts that could not be committed: their slots are freed, they wait again."""
        self._started(row.seq for row in rows)
        for row in rows:
            self.release_slot(row)
            self.waiting.enqueue(row)
        self._retry_dispatch_later()

    def _retry_dispatch_later(self) -> None:
        asyncio.get_running_loop().call_later(STORAGE_RETRY, self.kick)

    # -- running ------------------------------------------------------------------------
    def launch(self, row: JobRow) -> None:
        """Start the attempt of a job whose ``running`` row is committed."""
        attempt = Attempt(row)
        events = AttemptEvents(
            attempt, self.store, self.ledger.publish_stored, self.hub, self.limits, self.clock, self._progress.changed
        )
        attempt.events = events
        definition = self.registry.get(row.task)
        self._active[row.seq] = attempt
        self.ledger.pin(row)
        if definition is None:  # the task module was removed between restarts
            attempt.call = JobCall(row.job_id, row.attempts, _missing_task(row.task), row.args, events)
            failure = Outcome.failure("exception", f"task {row.task!r} is not loaded", retryable=False)
            attempt.task = self.background.spawn(self._settle(attempt, failure))
            return
        attempt.call = JobCall(row.job_id, row.attempts, definition, row.args, events, row.kwargs)
        row.kwargs = None  # a later attempt validates afresh: this one may change what it got
        if row.mode == "shell":
            account = self._account(row)
            if isinstance(account, Outcome):
                attempt.task = self.background.spawn(self._settle(attempt, account))
                return
            attempt.call.run_as = account
        # From becoming ready to really starting: includes the commit of its running row.
        self.metrics.started_after(max(0.0, self.clock() - row.enqueued_at))
        if row.timeout is not None:
            attempt.timer = asyncio.get_running_loop().call_later(row.timeout, self._on_timeout, attempt)
        attempt.task = self.background.spawn(self._run(attempt, self._work_of(attempt)))

    def _work_of(self, attempt: Attempt) -> Callable[[], Awaitable[Outcome]]:
        """What runs ``attempt``: its mode's executor, or, for a pipeline, the pipelines
        room (whose shell stages run in the owner's account, as a shell job would)."""
        row, call = attempt.row, attempt.call
        assert call is not None
        if row.mode != PIPELINE_MODE:
            executor = self.executors[row.mode]
            return lambda: executor.run(call)
        pipelines = self.pipelines
        if pipelines is None:
            return lambda: _outcome(Outcome.failure("exception", "this daemon runs no pipelines", retryable=False))
        return lambda: pipelines.run(attempt, self._account(row))

    def _account(self, row: JobRow) -> RunAs | None | Outcome:
        """Whose account a shell job's command runs in: a root daemon runs another user's
        command as that user (None: as the daemon itself); a failure when the owner has no
        account to run as. A daemon that is not root cannot switch: it runs what it runs
        as itself, which is why others may not submit shell jobs to it by default."""
        owner = self.owners.of(row.owner)
        if self.owners.daemon_uid != 0 or owner == 0:
            return None
        account = RunAs.account(owner)
        if account is None:
            return Outcome.failure(
                "exception", f"the job's owner, uid {owner}, has no account here: its command is not run", retryable=False
            )
        return account

    async def _run(self, attempt: Attempt, work: Callable[[], Awaitable[Outcome]]) -> None:
        call = attempt.call
        assert call is not None
        mode = attempt.row.mode
        self.linger.began(mode)
        began = self.clock()
        try:
            if attempt.row.depends_on and mode != PIPELINE_MODE:
                call.inputs = await self._inputs(attempt.row)
            outcome = await work()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an executor bug must not take the daemon down
            log.exception("executor %s failed on job %s", mode, attempt.row.job_id, extra={"job_id": attempt.row.job_id})
            outcome = Outcome.failure("exception", f"internal error in the {mode} executor: {exc}")
        finally:
            self.linger.returned(mode, self.clock() - began)
            if attempt.timer is not None:
                attempt.timer.cancel()
        await self._settle(attempt, outcome)

    async def _inputs(self, row: JobRow) -> dict[str, Any]:
        """The results of a job's dependencies (nil for those that did not complete)."""
        found = await self.store.reads.get_jobs_by_id(row.depends_on)
        return {
            dep: (found[dep].result if dep in found and found[dep].status == "completed" else None)
            for dep in row.depends_on
        }

    def _deactivate(self, attempt: Attempt) -> None:
        if self._active.get(attempt.row.seq) is attempt:
            del self._active[attempt.row.seq]
        self.ledger.unpin(attempt.row)

    def running_pipelines(self) -> list[JobRow]:
        """The rows of the pipelines running now (their figures as of their last checkpoint)."""
        return [a.row for a in self._active.values() if a.row.mode == PIPELINE_MODE and not a.ended]

    def running_attempt(self, row: JobRow) -> Attempt:
        return self._active[row.seq]

    # -- ends ---------------------------------------------------------------------------
    async def _settle(self, attempt: Attempt, outcome: Outcome) -> None:
        """An attempt's work has stopped: record its outcome, free its slot, start the next."""
        row = attempt.row
        if attempt.ended:  # cancelled or timed out earlier: its status is already committed
            self._winding_down.discard(attempt)
            self.release_slot(row)
            self.kick()
            return
        attempt.ended = True
        events = attempt.events
        assert events is not None
        if events.output_problem is not None and outcome.ok:
            outcome = events.output_problem
        events.flush()
        events.flush_progress()
        notes: list[tuple[str, str]] = []
        if events.dropped_lines:
            notes.append(("log", f"[pyrexis] {events.dropped_lines} lines dropped (log limit)"))
        if outcome.traceback:
            notes.extend(("stderr", text) for text in outcome.traceback.rstrip("\n").split("\n"))
        self.release_slot(row)
        starts, missing = self.take_starts()
        if missing:
            self.background.spawn(self._load_and_begin(missing))
        await self._commit_end(attempt, outcome, notes, starts)

    async def _commit_end(
        self, attempt: Attempt, outcome: Outcome, notes: list[tuple[str, str]], starts: list[JobRow]
    ) -> None:
        row = attempt.row
        now = self.clock()
        call = attempt.call
        cached = call.task if call is not None and call.task.cache else None
        try:
            await self._write_end(row, outcome, notes, starts, now, cached)
        except StorageError as exc:
            if starts:
                self._put_back(starts)
                starts = []
            log.error("could not record the end of job %s, retrying: %s", row.job_id, exc, extra={"job_id": row.job_id})
            # Locked until the end is durable, across retries: until then no op may act on
            # (or show) an outcome that could still be lost. (The failed change unlocked
            # the row and no other coroutine ran since, so the hold follows it unbroken.)
            async with self.ledger.hold([row.seq]):
                pause = FIRST_RETRY
                while True:
                    await asyncio.sleep(pause)
                    pause = min(STORAGE_RETRY, pause * 2)
                    try:
                        await self._write_end(row, outcome, notes, [], now, cached)
                        break
                    except StorageError as again:
                        log.error("could not record the end of job %s, retrying: %s", row.job_id, again,
                                  extra={"job_id": row.job_id})
        self._ended(attempt)
        self._started(start.seq for start in starts)
        for start in starts:
            self.launch(start)
        self.kick()

    async def _write_end(
        self,
        row: JobRow,
        outcome: Outcome,
        notes: list[tuple[str, str]],
        starts: list[JobRow],
        now: float,
        cached: TaskDef | None = None,
    ) -> None:
        # One commit for "this one finished" and "these started". An end that starts
        # nothing and that nobody waits for need not commit alone: it rides with the next
        # commit (a waiter that comes meanwhile hurries it). One that starts another job
        # may linger a moment for another slot's end, to share its commit (core/linger).
        lazy = not starts and not self.ledger.awaited(row.job_id)
        linger = self.linger.delay(row.mode, self.store.group_commit.committing) if starts else None
        with self.linger.starting([start.mode for start in starts]):
            async with self.ledger.change([row, *starts], lazy=lazy, linger=linger) as change:
                model.apply_outcome(row, outcome, now, self.backoff, self.limits.max_result)
                if cached is not None and self.cache is not None and row.status == "completed":
                    # Written in this same commit: whoever sees the job completed finds its
                    # result in the cache too (a failed commit drops the entry with the end).
                    # A job older than ownership is the daemon's: keyed as its jobs are.
                    self.cache.put_completed(cached, row.args, row.depends_on, self.owners.of(row.owner),
                                             row.result, row.job_id)
                for stream, text in notes:
                    change.log(row, stream, text, now)
                for start in starts:
                    model.start_attempt(start, now)

    def _ended(self, attempt: Attempt) -> None:
        """An attempt's end is committed: it leaves the running set; a retry waits."""
        self._deactivate(attempt)
        if attempt.row.status == "retrying":
            self.waiting.enqueue(attempt.row)

    def _on_timeout(self, attempt: Attempt) -> None:
        if attempt.ended or self.ledger.stopping.is_set():
            return
        timeout = Outcome.failure("timeout", f"timed out after {attempt.row.timeout} s")
        self.background.spawn(self.end_early(attempt, timeout))

    async def end_early(self, attempt: Attempt, outcome: Outcome) -> JobRow:
        """Decide a running attempt's outcome now (cancel, timeout); its work stops after."""
        row = attempt.row
        attempt.ended = True
        try:
            async with self.ledger.change([row]):
                model.apply_outcome(row, outcome, self.clock(), self.backoff, self.limits.max_result)
        except BaseException:
            attempt.ended = False
            raise
        self._ended(attempt)
        self._winding_down.add(attempt)
        assert attempt.call is not None
        attempt.call.cancel()
        return row

    # -- shutdown -----------------------------------------------------------------------
    async def drain(self, grace: float, force: asyncio.Event | None = None) -> None:
        """Let running attempts finish within ``grace`` seconds (``force`` cuts it short)."""
        # A pipeline does not hold the stop up: it checkpoints, stops, and resumes later.
        running = [a.task for a in self._active.values() if a.task is not None and a.row.mode != PIPELINE_MODE]
        if not running or grace <= 0:
            return
        waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(asyncio.wait(running, timeout=grace))]
        if force is not None:
            waiters.append(asyncio.ensure_future(force.wait()))
        _done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for p in pending:
            p.cancel()

    async def interrupt_rest(self) -> None:
        """Attempts still running follow their ``on_interrupt`` now, and their work is
        stopped. If that cannot be committed, the next start's recovery does it."""
        leftovers = [a for a in self._active.values() if not a.ended]
        now = self.clock()
        for attempt in leftovers:
            attempt.ended = True
        if leftovers:
            try:
                async with self.ledger.change([a.row for a in leftovers]):
                    for attempt in leftovers:
                        model.interrupt(attempt.row, now, "the daemon was stopped while the job was running")
            except StorageError as exc:
                log.error("could not record interrupted jobs (recovery will): %s", exc)
        for attempt in leftovers:
            assert attempt.call is not None
            attempt.call.cancel()
        # Thread attempts cannot be stopped: the process exits without them.
        tasks = [a.task for a in leftovers if a.task is not None and a.row.mode != "thread"]
        if tasks:
            await asyncio.wait(tasks, timeout=self.kill_grace + 1)
        for task in tasks:
            task.cancel()

    async def close(self) -> None:
        """Release the executors' pools and workers, and stop what is left in the background."""
        self._progress.stop()
        for executor in self.executors.values():
            await executor.shutdown()
        self.background.cancel_all()


async def _outcome(outcome: Outcome) -> Outcome:
    return outcome


def _missing_task(name: str) -> TaskDef:
    def missing() -> None:
        raise RuntimeError(f"task {name!r} is not loaded")

    return make_task(missing, name=name)
