"""Where jobs wait, and how they stop waiting.

A committed waiting job is in exactly one place: the scheduler (``pending`` ready to
start; ``scheduled`` and ``retrying`` on a timer), the blocked set (``blocked``: its
dependencies are evaluated each time one of them ends), or the held set (``held``, until
released). This room moves them on: due timers promote jobs to ``pending``, settled
dependencies make blocked jobs ``pending`` or ``cancelled``, and client commands change a
waiting job (cancel, retry, hold, release, update). Dispatch takes the pending ones.

The rows of blocked and held jobs stay in memory (they are few and need evaluating); of
the jobs in the scheduler, only the first :data:`ROW_CACHE_LIMIT` keep their row in
memory, the scheduler holding a small key for every one: the others are read back when
they start.

A ``pending`` job whose owner already runs ``max_running_per_user`` jobs is *parked*
here by dispatch: out of the scheduler (so it takes no slot and blocks nobody), still
``pending``, kept as a small key like the scheduler's. :meth:`unpark` gives the owner's
best parked jobs back to the scheduler when the owner's slots free up.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import logging
from collections.abc import Callable, Iterable

from protocol.errors import StorageError
from pyrexisd import dependencies
from pyrexisd.core import model
from pyrexisd.core.background import Background
from pyrexisd.core.ledger import Ledger
from pyrexisd.core.model import JobRow
from pyrexisd.scheduler import PageRequest, Scheduler
from pyrexisd.store import Store

log = logging.getLogger(__name__)

ROW_CACHE_LIMIT = 4_096  # waiting rows kept in memory; beyond, they are read back on start
AGING_SETTING = "sched_aging"  # queue -> the aging rate its pending jobs' stored keys follow
STORAGE_RETRY = 2.0  # seconds before a change that failed to commit is tried again (at most)

# A parked job: (-priority, enqueued_at, seq, queue, mode), so an owner's heap yields its
# highest priority first, then its oldest.
Parked = tuple[int, float, int, str, str]


class Waiting:
    """Blocked, held and scheduled jobs, and their way to ``pending``."""

    def __init__(
        self,
        store: Store,
        ledger: Ledger,
        scheduler: Scheduler,
        background: Background,
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.scheduler = scheduler
        self.background = background
        self.clock = clock
        # Told when jobs may have become startable (dispatch's ``kick``).
        self.on_ready: Callable[[], None] = lambda: None
        self._cached: dict[int, JobRow] = {}  # rows of jobs waiting in the scheduler
        self._blocked: dict[int, JobRow] = {}
        self._held: dict[int, JobRow] = {}
        self._dependents: dict[str, set[int]] = {}  # dependency job_id -> blocked seqs
        self._parked: dict[int, list[Parked]] = {}  # owner -> heap of parked jobs
        self._parked_seqs: dict[int, Parked] = {}  # seq -> its live heap entry
        self._to_evaluate: set[int] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        ledger.end_listeners.append(self._dependency_ended)
        ledger.is_parked = self.is_parked

    async def load(self) -> None:
        """At start-up: blocked and held rows into memory, scheduled and retrying jobs on
        the timers, and for pending jobs only their counts: each queue's best ones are
        paged in from the store, in order, as dispatch needs them."""
        for status in ("blocked", "held"):
            for row in await self.store.reads.jobs_with_status(status):
                self.enqueue(row)
        for seq, run_at in await self.store.reads.deferred():
            self.scheduler.defer(seq, run_at)
        await self._key_pending()
        for queue, mode, count in await self.store.reads.pending_counts():
            self.scheduler.beyond(queue, mode, count)
        self.arm_timer()
        self.fill_windows()

    async def _key_pending(self) -> None:
        """Store the scheduler's key of pending jobs whose queue's aging rate differs from
        the one their keys were stored with (older rows have none).

        The setting maps each queue given its own rate to it, and ``"*"`` to the default
        rate the other queues' keys were made with.
        """
        stored: dict[str, float] = (await self.store.reads.settings()).get(AGING_SETTING) or {}
        default = self.scheduler.default_aging
        unkeyed = set(await self.store.reads.unkeyed_queues())
        queues = {q for q, _mode, _n in await self.store.reads.pending_counts()} | unkeyed
        stale: dict[str, float] = {}
        for q in queues:
            aging = self.scheduler.queue(q).aging
            if q in unkeyed or stored.get(q, stored.get("*")) != aging:
                stale[q] = aging
        keyed = {**stored, "*": default}
        keyed.update({q: aging for q, aging in stale.items() if aging != default})
        if stale or keyed != stored:
            await self.store.write(rekeys=list(stale.items()), settings=[(AGING_SETTING, keyed)])
        if stale:
            log.info("stored the scheduler's keys of the pending jobs of %d queues", len(stale))

    def rekeyed(self) -> None:
        """After a re-key commit: cached rows the scheduler let go are dropped, and the
        windows are paged in again in the new order."""
        for seq in [seq for seq in self._cached if not self.scheduler.is_waiting(seq)]:
            row = self._cached.pop(seq)
            self.ledger.unpin(row)
        self.fill_windows()
        self.on_ready()
    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- where a waiting job is ---------------------------------------------------------
    def enqueue(self, row: JobRow) -> None:
        """A committed waiting job joins the scheduler (its row cached while room allows),
        the blocked set (to be evaluated) or the held set."""
        status = row.status
        if status == "pending":
            let_go = self.scheduler.add(row.seq, row.queue, row.mode, row.priority, row.enqueued_at)
            for seq in let_go:
                gone = self._cached.pop(seq, None)
                if gone is not None:
                    self.ledger.unpin(gone)
            if not self.scheduler.is_waiting(row.seq):
                return  # it waits beyond its queue's window: in the store only
        elif status in ("scheduled", "retrying"):
            self.scheduler.defer(row.seq, row.run_at or 0.0)
            self.arm_timer()
        elif status == "blocked":
            self._blocked[row.seq] = row
            self.ledger.pin(row)
            self.evaluate_soon([row.seq])
            return
        elif status == "held":
            self._held[row.seq] = row
            self.ledger.pin(row)
            return
        else:
            return
        if len(self._cached) < ROW_CACHE_LIMIT:
            self._cached[row.seq] = row
            self.ledger.pin(row)

    def depended_on(self) -> set[str]:
        """The jobs a blocked or held job depends on (retention keeps them)."""
        out: set[str] = set()
        for place in (self._blocked, self._held):
            for row in place.values():
                out.update(row.depends_on)
        return out

    def withdraw(self, row: JobRow) -> None:
        """A waiting job leaves wherever it waits (scheduler, parked, blocked or held set)."""
        # A parked job is not the scheduler's (not even beyond a window): its heap entry
        # here is skipped from now on.
        if self._parked_seqs.pop(row.seq, None) is None:
            self.scheduler.discard(row.seq, row.queue, row.mode, row.priority, row.enqueued_at)
        for place in (self._cached, self._blocked, self._held):
            if place.pop(row.seq, None) is not None:
                self.ledger.unpin(row)

    # -- jobs held back by their owner's running cap ------------------------------------
    def park(self, owner: int, row: JobRow) -> None:
        """A pending job picked while its owner is at its running cap waits here, out of
        the scheduler, until :meth:`unpark` (its row is read back when it starts)."""
        entry: Parked = (-row.priority, row.enqueued_at, row.seq, row.queue, row.mode)
        heapq.heappush(self._parked.setdefault(owner, []), entry)
        self._parked_seqs[row.seq] = entry

    def parked_owners(self) -> list[int]:
        """The owners who have parked jobs."""
        return list(self._parked)

    def is_parked(self, seq: int) -> bool:
        return seq in self._parked_seqs

    def unpark(self, owner: int, count: int) -> bool:
        """Give up to ``count`` of ``owner``'s parked jobs back to the scheduler, best first;
        whether any went."""
        heap = self._parked.get(owner)
        moved = 0
        while heap and moved < count:
            entry = heapq.heappop(heap)
            neg_priority, enqueued_at, seq, queue, mode = entry
            if self._parked_seqs.get(seq) is not entry:
                continue  # withdrawn (cancelled, held, updated) since it was parked
            del self._parked_seqs[seq]
            # Into its window, or beyond it (in the store only, paged in in its turn).
            for gone in self.scheduler.add(seq, queue, mode, -neg_priority, enqueued_at):
                row = self._cached.pop(gone, None)
                if row is not None:
                    self.ledger.unpin(row)
            moved += 1
        if heap is not None and not heap:
            del self._parked[owner]
        return moved > 0

    def take(self, seq: int) -> JobRow | None:
        """The cached row of a job the scheduler picked (None: read it from the store)."""
        row = self._cached.pop(seq, None)
        if row is not None:
            self.ledger.unpin(row)
        return row

    # -- paging ---------------------------------------------------------------------------
    def fill_windows(self) -> None:
        """Read the pages the scheduler's windows need (in the background)."""
        if self.ledger.stopping.is_set():
            return
        for request in self.scheduler.pages_needed():
            self.background.spawn(self._page(request))

    async def _page(self, request: PageRequest) -> None:
        try:
            rows = await self.store.reads.read_page(request.queue, request.mode, request.after, request.limit)
        except StorageError as exc:
            log.error("could not read waiting jobs of queue %s: %s", request.queue, exc)
            self.scheduler.page_failed(request)
            asyncio.get_running_loop().call_later(STORAGE_RETRY, self.fill_windows)
            return
        # A job being changed right now (picked and starting, cancelled, moved) is not
        # taken from the page: its change puts it where it belongs.
        locked = self.ledger.is_locked
        parked = self._parked_seqs
        # A parked job is pending in the store too, but waits here, not in the scheduler.
        fresh = [row for row in rows if not locked(row.seq) and row.seq not in parked]
        taken = self.scheduler.page_in(
            request, [(row.seq, row.priority, row.enqueued_at) for row in fresh], len(rows) < request.limit
        )
        if taken:
            by_seq = {row.seq: row for row in fresh}
            for seq in taken:
                row = by_seq.get(seq)
                if row is not None and len(self._cached) < ROW_CACHE_LIMIT and seq not in self._cached:
                    self._cached[seq] = row
                    self.ledger.pin(row)
            self.on_ready()
        self.fill_windows()

    # -- client commands ----------------------------------------------------------------
    async def change(self, row: JobRow, change: Callable[[JobRow], None]) -> JobRow:
        """Apply ``change`` to a waiting (or ended) job durably; it leaves the place it
        waits in meanwhile and joins the one its new status says."""
        self.withdraw(row)
        try:
            async with self.ledger.change([row]):
                change(row)
        except BaseException:
            self.enqueue(row)  # as it was
            raise
        if not row.terminal:
            self.enqueue(row)
            self.on_ready()
        return row

    # -- dependencies -----------------------------------------------------------------
    def _dependency_ended(self, row: JobRow) -> None:
        dependents = self._dependents.pop(row.job_id, None)
        if dependents:
            self.evaluate_soon(dependents)

    def evaluate_soon(self, seqs: Iterable[int]) -> None:
        """Evaluate these blocked jobs once per loop iteration, in one batch."""
        first = not self._to_evaluate
        self._to_evaluate.update(seqs)
        if first and self._to_evaluate:
            asyncio.get_running_loop().call_soon(self._evaluate_now)

    def _evaluate_now(self) -> None:
        seqs, self._to_evaluate = self._to_evaluate, set()
        if seqs and not self.ledger.stopping.is_set():
            self.background.spawn(self._evaluate(seqs))

    def _reevaluate(self, seq: int, _change: asyncio.Future[None]) -> None:
        self.evaluate_soon([seq])

    async def _evaluate(self, seqs: Iterable[int]) -> None:
        """Blocked jobs whose dependencies settled become pending, or are cancelled."""
        rows: list[JobRow] = []
        for seq in seqs:
            row = self._blocked.get(seq)
            if row is None:
                continue
            lock = self.ledger.locked(seq)
            if lock is not None:  # being changed: look again once that change is done
                lock.add_done_callback(functools.partial(self._reevaluate, seq))
                continue
            rows.append(row)
        if not rows:
            return
        changed: list[JobRow] = []
        try:
            async with self.ledger.hold(row.seq for row in rows):
                wanted = sorted({d for r in rows for d in r.depends_on})
                statuses = {j: r.status for j, r in (await self.store.reads.get_jobs_by_id(wanted)).items()}
                now = self.clock()
                verdicts = []
                for row in rows:
                    verdict, culprit, unsettled = dependencies.verdict(row.depends_on, row.dependency_policy, statuses)
                    if verdict == dependencies.READY and row.run_at is not None and row.run_at > now:
                        if not self.scheduler.is_waiting(row.seq):
                            self.scheduler.defer(row.seq, row.run_at)  # run_at is the earliest start
                            self.arm_timer()
                    elif verdict == dependencies.WAIT:
                        for dep in unsettled:
                            self._dependents.setdefault(dep, set()).add(row.seq)
                    else:
                        changed.append(row)
                        verdicts.append((verdict, culprit))
                if changed:
                    async with self.ledger.change(changed):
                        for row, (verdict, culprit) in zip(changed, verdicts, strict=True):
                            if verdict == dependencies.FAILED:
                                assert culprit is not None
                                model.dependency_failed(row, now, culprit, statuses.get(culprit))
                            else:
                                model.become_pending(row, now)
        except StorageError as exc:
            log.error("could not update %d blocked jobs, retrying: %s", len(changed), exc)
            asyncio.get_running_loop().call_later(STORAGE_RETRY, self.evaluate_soon, [r.seq for r in rows])
            return
        for row in changed:
            self._blocked.pop(row.seq, None)
            self.ledger.unpin(row)
            self.scheduler.discard(row.seq, row.queue)
            self.enqueue(row)
        self.on_ready()

    # -- timers -----------------------------------------------------------------------
    def arm_timer(self) -> None:
        """Set the one timer for the earliest scheduled or retrying job."""
        if self.ledger.stopping.is_set():
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
            self._timer = asyncio.get_running_loop().call_later(delay, self.release_due)

    def release_due(self) -> None:
        """Scheduled and retrying jobs whose time has come start to become pending (the
        timer calls this; so may anyone who knows the clock moved)."""
        self._timer = None
        self._timer_at = None
        due = self.scheduler.due(self.clock())
        blocked = [seq for seq in due if seq in self._blocked]
        if blocked:
            self.evaluate_soon(blocked)
            due = [seq for seq in due if seq not in self._blocked]
        if due:
            self.background.spawn(self._promote(due))
        self.arm_timer()

    async def _promote(self, seqs: list[int]) -> None:
        """Scheduled and retrying jobs whose time has come become pending."""
        try:
            async with self.ledger.hold(seqs):
                rows = {s: row for s in seqs if (row := self.take(s)) is not None}
                missing = [s for s in seqs if s not in rows]
                if missing:
                    rows.update(await self.store.reads.get_jobs(missing))
                ready = [rows[s] for s in seqs if s in rows and rows[s].status in ("scheduled", "retrying")]
                if ready:
                    now = self.clock()
                    async with self.ledger.change(ready):
                        for row in ready:
                            model.become_pending(row, now)
        except StorageError as exc:
            log.error("could not release %d delayed jobs, retrying: %s", len(seqs), exc)
            for seq in seqs:
                self.scheduler.defer(seq, self.clock() + STORAGE_RETRY)
            self.arm_timer()
            return
        for row in ready:
            self.enqueue(row)
        self.on_ready()
