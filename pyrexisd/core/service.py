"""The service: the one object the protocol handlers (and any other front) call.

Each method is one command or query of the contract, in the daemon's own terms: it
checks that the daemon takes work, asks admission, the ledger, the waiting room,
dispatch or the queues, and returns records. Nothing here knows about frames or sockets,
and nothing outside the core reaches past it into the store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from protocol.errors import Conflict, InvalidState, ShuttingDown, StorageError
from protocol.status import WAITING
from pyrexisd.config import FRAME_ENVELOPE, Config
from pyrexisd.core import model
from pyrexisd.core.admission import Admission, Admitted, decode_cursor, encode_cursor
from pyrexisd.core.dispatch import Dispatch
from pyrexisd.core.ledger import Ledger
from pyrexisd.core.model import JobRow, LogLine, OutputItem
from pyrexisd.core.queues import Queues
from pyrexisd.core.waiting import Waiting
from pyrexisd.events import EventFilter, EventHub, Subscription
from pyrexisd.executors.base import Outcome
from pyrexisd.metrics import Metrics
from pyrexisd.recurring import Recurring
from pyrexisd.scheduler import Scheduler
from pyrexisd.store import QueueChanges, Store
from pyrexisd.tasks.registry import Registry

LOG_PAGE = 1000  # log lines or outputs read from the store at a time


class Service:
    """Commands and queries on jobs, queues and schedules."""

    def __init__(
        self,
        config: Config,
        store: Store,
        registry: Registry,
        ledger: Ledger,
        waiting: Waiting,
        dispatch: Dispatch,
        queues: Queues,
        scheduler: Scheduler,
        metrics: Metrics,
        hub: EventHub,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self._store = store
        self.registry = registry
        self.ledger = ledger
        self.waiting = waiting
        self.dispatch = dispatch
        self.queues = queues
        self.scheduler = scheduler
        self.metrics = metrics
        self.hub = hub
        self.clock = clock
        self.admission = Admission(registry, config, clock)
        self.schedules = Recurring(store, self.submit, self.check_spec, clock)

    @property
    def stopping(self) -> asyncio.Event:
        """Set once the daemon stops taking work; open streams end with ``shutting_down``."""
        return self.ledger.stopping

    def check_open(self) -> None:
        """Refuse new work while the daemon stops."""
        if self.ledger.stopping.is_set():
            raise ShuttingDown("the daemon is stopping and takes no new work")

    # -- submit -------------------------------------------------------------------------
    def check_spec(self, raw: Any) -> None:
        """Validate a spec as ``submit`` would (task, mode, args), without storing it."""
        self.admission.prepare(raw)

    async def submit(self, raw: Any) -> dict[str, Any]:
        """Validate, store and schedule one job; its record once it is durable."""
        return (await self.submit_many([raw], batch=False))[0]

    async def submit_many(self, raws: Sequence[Any], batch: bool = True) -> list[dict[str, Any]]:
        """All-or-nothing: every spec is valid and stored, or none is."""
        self.check_open()
        admitted = self.admission.prepare_batch(raws, batch)
        known: dict[str, str] = {}
        if any(a.spec.depends_on for a in admitted):
            external = Admission.external_dependencies(admitted)
            found = await self._store.get_jobs_by_id(external) if external else {}
            known = Admission.check_dependencies(admitted, found, batch)
        existing = await self._resubmits(admitted, batch)
        self.check_open()
        fresh = [a.row for i, a in enumerate(admitted) if i not in existing]
        if fresh:
            await self._accept(fresh, known)
        return [existing[i] if i in existing else a.row.record() for i, a in enumerate(admitted)]

    async def _resubmits(self, admitted: list[Admitted], batch: bool) -> dict[int, dict[str, Any]]:
        """Specs whose client id is in use already: their records (same spec) or conflict."""
        wanted = Admission.client_ids(admitted)
        if not wanted:
            return {}
        # A submit of the same id may be committing right now: read once it is done.
        await self.ledger.claims_settled(wanted)
        rows = await self._store.get_jobs_by_id(list(wanted))
        while await self.ledger.claims_settled(wanted):
            rows = await self._store.get_jobs_by_id(list(wanted))
        out = Admission.resubmits(admitted, rows, batch)
        for job_id, i in wanted.items():
            if i not in out and self.ledger.claimed(job_id):
                raise Conflict(f"job_id {job_id!r} is being submitted concurrently", {"job_id": job_id})
        return out

    async def _accept(self, rows: list[JobRow], known: dict[str, str]) -> None:
        """Commit new jobs, each already ``running`` when a slot is free for it now."""
        ledger = self.ledger
        # Only a client's own ids can be resubmitted while these commit (generated ids are
        # new), so only those are claimed.
        ids = [row.job_id for row in rows if row.spec_digest]
        claim = ledger.claim(ids) if ids else None
        for row in rows:
            row.seq = ledger.next_seq()
        starting: list[JobRow] = []
        try:
            now = self.clock()
            async with ledger.change(rows, created=True):
                for row in rows:
                    row.status = Admission.initial_status(row, known, now)
                    if row.status == "pending" and self.dispatch.try_start_now(row):
                        row.status = "running"
                        row.attempts = 1
                        row.started_at = now
                        starting.append(row)
        except StorageError:
            for row in starting:
                self.scheduler.release(row.queue, row.mode)
            self.dispatch.kick()
            raise
        finally:
            if claim is not None:
                ledger.unclaim(ids, claim)
        for row in rows:
            if row.status == "running":
                self.dispatch.launch(row)
            else:
                self.waiting.enqueue(row)
        self.dispatch.kick()

    # -- commands on one job ------------------------------------------------------------
    async def cancel(self, job_id: str) -> dict[str, Any]:
        self.check_open()
        row = await self.ledger.current(job_id)
        if row.terminal:
            raise InvalidState(f"job {job_id!r} is already {row.status}", {"status": row.status})
        if row.status == "running":
            cancelled = Outcome.failure("cancelled", "cancelled by a client", retryable=False)
            await self.dispatch.end_early(self.dispatch.running_attempt(row), cancelled)
            return row.record()
        return (await self.waiting.change(row, lambda r: model.cancel_waiting(r, self.clock()))).record()

    async def retry(self, job_id: str) -> dict[str, Any]:
        """A failed or cancelled job waits again, with a fresh round of retries."""
        self.check_open()
        row = await self.ledger.current(job_id)
        if row.status not in ("failed", "cancelled"):
            raise InvalidState(
                f"only a failed or cancelled job can be retried; {job_id!r} is {row.status}",
                {"status": row.status},
            )
        return (await self.waiting.change(row, lambda r: model.reopen(r, self.clock()))).record()

    async def hold(self, job_id: str) -> dict[str, Any]:
        """A waiting job stays waiting until released."""
        self.check_open()
        row = await self.ledger.current(job_id)
        if row.status not in WAITING or row.status == "held":
            raise InvalidState(f"only a waiting job can be held; {job_id!r} is {row.status}", {"status": row.status})
        return (await self.waiting.change(row, lambda r: r.move("held"))).record()

    async def release(self, job_id: str) -> dict[str, Any]:
        """A held job goes back to the waiting status that now applies."""
        self.check_open()
        row = await self.ledger.current(job_id)
        if row.status != "held":
            raise InvalidState(f"only a held job can be released; {job_id!r} is {row.status}", {"status": row.status})
        return (await self.waiting.change(row, lambda r: model.unhold(r, self.clock()))).record()

    async def update(self, job_id: str, priority: int | None, queue: str | None) -> dict[str, Any]:
        """Change a waiting job's priority or queue (it keeps its time waited, for aging)."""
        self.check_open()
        row = await self.ledger.current(job_id)
        if row.status not in WAITING:
            raise InvalidState(f"only a waiting job can be updated; {job_id!r} is {row.status}", {"status": row.status})

        def change(r: JobRow) -> None:
            if priority is not None:
                r.priority = priority
            if queue is not None:
                r.queue = queue

        return (await self.waiting.change(row, change)).record()

    # -- queries ------------------------------------------------------------------------
    async def get(self, job_id: str) -> dict[str, Any]:
        return await self.ledger.record(job_id)

    async def current(self, job_id: str) -> JobRow:
        """The job's committed state now, with no change in flight (a stream's opening)."""
        return await self.ledger.current(job_id)

    async def find(self, job_id: str) -> JobRow | None:
        """The job's stored row, or None."""
        return await self._store.get_job(job_id)

    async def wait(self, job_id: str, timeout: float | None) -> dict[str, Any]:
        return await self.ledger.wait(job_id, timeout)

    async def list_jobs(
        self, statuses: Sequence[str] | None, task: str | None, queue: str | None, limit: int, after: str | None
    ) -> dict[str, Any]:
        """A page of records, oldest first, and the cursor of the next page (or None).

        A page is cut short where its records would not fit in one frame; one record
        always fits (submit refuses specs whose record could not).
        """
        cursor = decode_cursor(after) if after else None
        rows = await self._store.list_jobs(statuses, task, queue, limit + 1, cursor)
        more = len(rows) > limit
        rows = rows[:limit]
        budget = self.config.max_frame - FRAME_ENVELOPE
        size = 0
        records = [row.record() for row in rows]
        for i, record in enumerate(records):
            size += len(msgpack.packb(record, use_bin_type=True))
            if size > budget:
                keep = max(1, i)
                return {"jobs": records[:keep], "next": encode_cursor(rows[keep - 1])}
        return {"jobs": records, "next": encode_cursor(rows[-1]) if more and rows else None}

    async def read_logs(self, job_seq: int, since: int) -> list[LogLine]:
        """Stored log lines of job ``job_seq`` from ``since``, a page at most."""
        return await self._store.read_logs(job_seq, since, LOG_PAGE)

    async def read_outputs(self, job_seq: int, since: int) -> list[OutputItem]:
        """Stored outputs of job ``job_seq`` from ``since``, a page at most."""
        return await self._store.read_outputs(job_seq, since, LOG_PAGE)

    def log_signal(self, job_seq: int) -> asyncio.Future[None]:
        """Resolves at the next commit of log lines or of an end of ``job_seq``."""
        return self.ledger.log_signal(job_seq)

    def subscribe(self, flt: EventFilter) -> Subscription:
        return self.hub.subscribe(flt)

    def unsubscribe(self, sub: Subscription) -> None:
        self.hub.unsubscribe(sub)

    def stats(self) -> dict[str, Any]:
        out = self.metrics.snapshot(self.clock(), self.scheduler.slots)
        store = self._store
        commits = store.commits
        out["store"] = {
            "commits": commits,
            "writes_per_commit": store.committed_writes / commits if commits else 0.0,
            "commit_ms": 1000.0 * store.commit_seconds / commits if commits else 0.0,
            # Per commit, where the time goes: writes waiting for their batch to start, the
            # hand-over to the writer's thread, the statements, COMMIT, the hand-back.
            "commit_split_ms": {k: (1000.0 * v / commits if commits else 0.0) for k, v in store.split.items()},
            "sync": store.sync,
        }
        return out

    def task_list(self) -> list[dict[str, Any]]:
        return [t.describe() for t in self.registry.all()]

    # -- queues and schedules -------------------------------------------------------------
    def queue_rows(self) -> list[dict[str, Any]]:
        return self.queues.rows()

    async def set_paused(self, queue: str | None, paused: bool) -> list[dict[str, Any]]:
        """Pause or resume one queue, or every queue (including later ones). Durable."""
        self.check_open()
        return await self.queues.set_paused(queue, paused)

    async def configure_queue(self, queue: str, changes: QueueChanges) -> dict[str, Any]:
        self.check_open()
        return await self.queues.configure(queue, changes)

    async def add_schedule(self, name: str, cron: str | None, every: float | None, job: dict[str, Any]) -> dict[str, Any]:
        self.check_open()
        return await self.schedules.add(name, cron, every, job)

    def list_schedules(self) -> list[dict[str, Any]]:
        return self.schedules.list()

    async def remove_schedule(self, name: str) -> None:
        await self.schedules.remove(name)
