"""Retention: finished jobs, with their logs and outputs, are pruned in the background.

A finished job is kept ``keep_finished`` seconds after it ended, and at most ``keep_max``
finished jobs are kept (the oldest ends go first). Pruning runs in small batches
(:data:`BATCH` jobs), each one lazy write of the store's group commit: it rides with
the commits clients cause anyway and never holds the writer long; after each the file
gives a few freed pages back (incremental vacuum).

The rules, which ``pyrexisctl clean`` follows too:

* Only ``completed``, ``failed`` and ``cancelled`` jobs are pruned.
* A job a client waits on or follows (``wait``, ``logs -f``, ``watch --job``) when the
  prune is decided is kept, and so is a job a waiting (blocked or held) job depends on:
  its dependents' fate is decided by its status. Such jobs go in a later pass.
* The jobs being pruned are locked in the ledger until their deletion commits: a
  ``retry`` or any command on them waits, then answers ``not_found`` like for any job
  that no longer exists. A ``wait`` on a job that ended recently is answered from memory
  (the ledger's recent ends) even when the row has just been pruned.
* A client id (``job_id`` given at submit) is idempotent while its job is kept: once
  pruned, a submit with that id is a new job. ``keep_max`` is a hard bound that protects
  the disk, so a busy daemon may forget an id sooner than ``keep_finished``.
* A new job never reuses a pruned job's ``seq`` (the highest pruned one is stored).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from protocol.errors import PyrexisError
from protocol.status import TERMINAL
from pyrexisd.core.ledger import Ledger
from pyrexisd.core.owners import Owners
from pyrexisd.metrics import Metrics
from pyrexisd.store import Store
from pyrexisd.store_schema import Finished

log = logging.getLogger(__name__)

BATCH = 1000  # jobs deleted in one commit (a few ms of the writer's thread)...
MAX_BATCH = 10_000  # ...up to this many while far past --keep-max (as many as submit_many's)
PAUSE = 0.005  # seconds between two batches of one pass: the writer serves clients meanwhile
INTERVAL = 1.0  # seconds between passes while nothing is due...
# ...or until this many jobs have ended with --keep-max passed by as many: a daemon that
# finishes thousands of jobs a second must not wait a whole interval to prune them.
ENDS_TO_LOOK = BATCH
SEQ_FLOOR = "seq_floor"  # setting: the highest seq ever pruned (seqs are never reused)


@dataclass(frozen=True)
class Rules:
    """What to keep (live: ``reload`` changes it)."""

    keep_finished: float  # seconds after the end; 0: no age limit
    keep_max: int  # finished jobs; 0: no count limit


@dataclass(frozen=True)
class CleanFilter:
    """``clean``'s choice of finished jobs."""

    before: float | None = None
    statuses: tuple[str, ...] = ()
    queue: str | None = None
    owner: int | None = None  # None: every user's
    unowned_too: bool = False


class Retention:
    """The background pruner and ``clean``."""

    def __init__(
        self,
        store: Store,
        ledger: Ledger,
        metrics: Metrics,
        owners: Owners,
        rules: Rules,
        depended_on: Callable[[], set[str]],
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.metrics = metrics
        self.owners = owners
        self.rules = rules
        self.depended_on = depended_on
        self.clock = clock
        self.pruned = 0  # jobs pruned since start (stats)
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._floor = 0
        self._ends = 0  # ends since the count was last compared with --keep-max
        ledger.end_listeners.append(self._ended)

    async def load(self) -> int:
        """The highest seq ever pruned (the ledger numbers new jobs above it)."""
        self._floor = int((await self.store.reads.settings()).get(SEQ_FLOOR) or 0)
        return self._floor

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def set_rules(self, rules: Rules) -> None:
        """New limits (``reload``): a pass runs at once."""
        self.rules = rules
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _ended(self, row: object) -> None:
        self._ends += 1
        if self._ends < ENDS_TO_LOOK:
            return
        self._ends = 0
        keep_max = self.rules.keep_max
        if keep_max and self.finished_count() - keep_max >= ENDS_TO_LOOK:
            self._wake.set()

    def finished_count(self) -> int:
        """Finished jobs of every user (the committed counts)."""
        return sum(n for (_, status), n in self.metrics.by_queue_status.items() if status in TERMINAL)

    async def _run(self) -> None:
        while True:
            # Cleared before the pass, not after: a wake while it runs (ends it did not see
            # yet) starts the next pass at once instead of being lost for an interval.
            self._wake.clear()
            try:
                await self.prune_due()
            except PyrexisError as exc:
                log.warning("pruning finished jobs failed, trying again later: %s", exc.message)
            try:
                await asyncio.wait_for(self._wake.wait(), INTERVAL)
            except TimeoutError:
                pass

    async def prune_due(self) -> int:
        """One pass: prune what the rules say is due, batch by batch; how many went."""
        rules = self.rules
        removed = 0
        cursor = (float("-inf"), 0)
        while True:
            excess = self.finished_count() - rules.keep_max if rules.keep_max else 0
            cutoff = self.clock() - rules.keep_finished if rules.keep_finished else None
            if excess <= 0 and cutoff is None:
                return removed
            # Past the count bound, the oldest go whatever their age; else only the expired.
            before = None if excess > 0 else cutoff
            size = min(MAX_BATCH, max(BATCH, excess))
            page = await self.store.reads.finished_page(cursor, size, before)
            if not page:
                return removed
            cursor = (page[-1].finished_at, page[-1].seq)
            if excess > 0 and cutoff is not None:
                chosen = [f for i, f in enumerate(page) if i < excess or f.finished_at < cutoff]
            elif excess > 0:
                chosen = page[:excess]
            else:
                chosen = page
            removed += await self.prune(chosen)
            if len(page) < size:
                return removed
            await asyncio.sleep(PAUSE)

    async def clean(self, flt: CleanFilter) -> tuple[int, int]:
        """Prune every finished job ``flt`` matches now: (removed, kept by the rules)."""
        removed = kept = 0
        cursor = (float("-inf"), 0)
        while True:
            page = await self.store.reads.finished_page(
                cursor, BATCH, flt.before, flt.statuses or None, flt.queue, flt.owner, flt.unowned_too
            )
            if not page:
                return removed, kept
            cursor = (page[-1].finished_at, page[-1].seq)
            went = await self.prune(page)
            removed += went
            kept += len(page) - went
            if len(page) < BATCH:
                return removed, kept

    async def prune(self, jobs: Sequence[Finished]) -> int:
        """Delete these finished jobs (but those the rules keep) in one commit; how many went."""
        if not jobs:
            return 0
        ledger = self.ledger
        protected = self.depended_on()
        chosen = [
            f for f in jobs
            if not ledger.is_locked(f.seq) and not ledger.awaited(f.job_id) and f.job_id not in protected
        ]  # fmt: skip
        if not chosen:
            return 0
        seqs = [f.seq for f in chosen]
        floor = max(self._floor, *seqs)
        async with ledger.hold(seqs):
            # Read again under the lock: a job may have been retried since the page was read.
            finished = await self.store.reads.finished_now(seqs)
            # Decided here, with no await until the write is queued: a wait registered by
            # now keeps its job (its read may be in flight); one registered later finds
            # the job gone, as if it came after the deletion.
            gone = [f for f in finished if not ledger.awaited(f.job_id)]
            if not gone:
                return 0
            settings = [(SEQ_FLOOR, floor)] if floor > self._floor else []
            await self.store.write(prunes=[f.seq for f in gone], settings=settings, lazy=True)
            self._floor = floor
            for f in gone:
                self.metrics.pruned(f.queue, f.status, self.owners.of(f.owner))
        self.pruned += len(gone)
        log.debug("pruned %d finished jobs (%s ...)", len(gone), ", ".join(f.job_id for f in gone[:3]))
        return len(gone)
