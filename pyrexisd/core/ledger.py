"""The committed view of jobs, and the one way to change it.

Every change of a job goes through :meth:`Ledger.change`::

    async with ledger.change([row]):
        model.cancel_waiting(row, now)     # change the rows in memory

On entry the rows are locked (any op on them waits until the change is over) and their
values are kept; on exit the rows are written in the store's next group commit. If that
commit fails, the rows get their kept values back and :class:`StorageError` is raised
out of the ``async with``: nothing anyone saw was undone, because nothing was shown yet.
Only after the commit does the ledger count the moves, publish ``state`` events and the
committed log lines, and wake the clients waiting on jobs that ended. So the rules of the
core hold by construction:

* Durable before told: the in-memory view of a job changes visibly only after its
  commit; a client is answered, and work starts, only after that.
* One change at a time per job: while a change of job ``seq`` is in flight its lock is
  held, and :meth:`current` waits for it.

A change is not cut half-way by a caller that goes away (the server cancels the requests
of a client that disconnects): once its rows are written the write commits whatever
happens to the coroutine that made it, and rows undone in memory, or the work that
follows the commit left undone (a job not launched, its slot never freed), would part
the core from the store. So a cancel that comes while a change's write is on its way is
held back until the commit is over: the change ends as it would have, and inside a
command (:func:`to_the_end`) the whole command ends before its caller hears of the
cancel; elsewhere the cancel is asked again as the change ends.

The ledger also knows which rows are *pinned*: kept in memory by the room that holds them
(running attempts, blocked and held jobs, cached waiting rows). A pinned row's memory copy
is the committed truth whenever it is not locked, so :meth:`current` and :meth:`wait`
answer from it without reading the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextvars import ContextVar
from types import TracebackType
from typing import Any, TypeVar

from protocol.errors import Internal, ShuttingDown, Timeout
from pyrexisd.core.model import WAITING_IN_SCHEDULER, JobRow, LogLine, OutputItem
from pyrexisd.core.owners import Owners, no_such_job
from pyrexisd.events import EventHub, StoredRange, state_event
from pyrexisd.metrics import Metrics
from pyrexisd.scheduler import Scheduler
from pyrexisd.store import Store

log = logging.getLogger(__name__)

RECENT_ENDS = 1024  # terminal records kept in memory for waits that come just after the end

T = TypeVar("T")

# Inside a command (to_the_end): set once a cancel of its task was held back while one of
# its changes committed, so the command ends first and its caller hears of it after.
_CALLER_LEFT: ContextVar[list[bool] | None] = ContextVar("pyrexis_caller_left", default=None)


async def to_the_end(work: Awaitable[T]) -> T:
    """Await a command that changes state, in the caller's own task: a cancel that comes
    while one of its changes commits does not cut it; it runs to its end, then raises
    :class:`asyncio.CancelledError` (its caller went away; see the module docstring). A
    cancel before any write is queued stops it as usual: nothing is half-done then."""
    left = [False]
    token = _CALLER_LEFT.set(left)
    try:
        result = await work
    finally:
        _CALLER_LEFT.reset(token)
    if left[0]:
        raise asyncio.CancelledError
    return result


async def _committed_through_cancel(written: asyncio.Future[None]) -> bool:
    """Await a change's write (a kept future: a cancel of this task waits for it); True
    if a cancel came meanwhile that must be asked again once the change is over."""
    try:
        await written
        return False
    except asyncio.CancelledError:
        if not written.done():
            raise
    task = asyncio.current_task()
    assert task is not None
    task.uncancel()
    left = _CALLER_LEFT.get()
    if left is not None:
        left[0] = True  # the command's caller hears of it when the command has ended
    try:
        written.result()  # the write's own outcome: StorageError if the batch failed
    except BaseException:
        if left is None:
            task.cancel()
        raise
    return left is None


class Gate:
    """The lock of rows while a change of them is in flight. Its future is made only when
    someone has to wait for it: most changes end with nobody waiting."""

    __slots__ = ("_future",)

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None

    def future(self) -> asyncio.Future[None]:
        """Resolves when the gate opens."""
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
        return self._future

    def open(self) -> None:
        if self._future is not None and not self._future.done():
            self._future.set_result(None)


class Change:
    """One durable change of some rows; made by :meth:`Ledger.change`, used with ``async with``."""

    __slots__ = ("_ledger", "rows", "lines", "created", "lazy", "linger", "_mementos", "_olds", "_gate", "_locked")

    def __init__(self, ledger: Ledger, rows: Sequence[JobRow], created: bool, lazy: bool, linger: float | None = None) -> None:
        self._ledger = ledger
        self.rows = rows
        self.created = created  # new rows: nothing to undo, nothing they moved from
        self.lazy = lazy  # may wait a few ms for another commit to ride (nobody waits yet)
        self.linger = linger  # may wait this long (s) for another write to ride with
        self.lines: list[LogLine] = []
        self._mementos: list[tuple[Any, ...]] = []
        self._olds: list[tuple[str, str]] = []  # (status, queue) before the change
        self._gate: Gate | None = None
        self._locked: list[int] = []

    def log(self, row: JobRow, stream: str, text: str, now: float) -> None:
        """A log line of ``row``, written in the same commit (its number taken from the row)."""
        row.log_seq += 1
        self.lines.append(LogLine(row.seq, row.log_seq, stream, text, now))

    async def __aenter__(self) -> Change:
        ledger = self._ledger
        locks = ledger._locks
        self._gate = gate = Gate()
        recent = ledger._recent_ends
        for row in self.rows:
            # A caller that holds the row across retries (see Ledger.hold) keeps its lock.
            if row.seq not in locks:
                locks[row.seq] = gate
                self._locked.append(row.seq)
            if not self.created:
                self._mementos.append(row.memento())
                self._olds.append((row.status, row.queue))
                if recent:
                    recent.pop(row.job_id, None)  # an end that is being left no longer holds
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        ledger = self._ledger
        cancel_again = False
        try:
            if exc_type is None:
                key_of = ledger.scheduler.key_of
                for row in self.rows:
                    if row.status == "pending":
                        row.sched_key = key_of(row.queue, row.priority, row.enqueued_at)
                if self.created:
                    written = ledger.store.write(new_jobs=self.rows, logs=self.lines, lazy=self.lazy, kept=True)
                else:
                    written = ledger.store.write(
                        jobs=self.rows, logs=self.lines, lazy=self.lazy, linger=self.linger, kept=True
                    )
                cancel_again = await _committed_through_cancel(written)
        except BaseException:
            self._undo()
            raise
        else:
            if exc_type is not None:
                self._undo()
        finally:
            self._unlock()
        if exc_type is None:
            ledger._committed(self, self._olds)
            if cancel_again:
                asyncio.current_task().cancel()  # type: ignore[union-attr]

    def _undo(self) -> None:
        for row, memento in zip(self.rows, self._mementos, strict=False):
            row.restore(memento)

    def _unlock(self) -> None:
        if self._gate is not None:
            self._ledger.unlock(self._locked, self._gate)


class Hold:
    """Rows kept locked across several changes (an end retried until the disk has room)."""

    __slots__ = ("_ledger", "_seqs", "_gate")

    def __init__(self, ledger: Ledger, seqs: Iterable[int]) -> None:
        self._ledger = ledger
        self._seqs = list(seqs)
        self._gate: Gate | None = None

    async def __aenter__(self) -> Hold:
        self._gate = self._ledger.lock(self._seqs)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._gate is not None:
            self._ledger.unlock(self._seqs, self._gate)


_STORED_STATUSES_MOVE = frozenset({"blocked", "held"})


class Ledger:
    """Locks, pinned rows, waiters, recent ends, log followers, and :meth:`change`."""

    def __init__(
        self,
        store: Store,
        hub: EventHub,
        metrics: Metrics,
        scheduler: Scheduler,
        clock: Callable[[], float],
        owners: Owners | None = None,
    ) -> None:
        self.store = store
        self.hub = hub
        self.metrics = metrics
        self.clock = clock
        self.owners = owners if owners is not None else Owners()
        # Asked where a stored waiting job is (it agrees or the job moved), and for the key
        # a pending job is stored with (the store pages pending jobs in that order).
        self.scheduler = scheduler
        # Whether a pending job is parked by its owner's running cap (out of the
        # scheduler, still waiting): the waiting room installs its own test.
        self.is_parked: Callable[[int], bool] = lambda seq: False
        self.stopping = asyncio.Event()  # set when the daemon stops taking work
        # Told of each row whose end has committed: the waiting room re-evaluates the jobs
        # that depend on it, retention counts ends towards --keep-max.
        self.end_listeners: list[Callable[[JobRow], None]] = []
        self._seq = 0
        self._locks: dict[int, Gate] = {}
        self._pinned: dict[str, JobRow] = {}
        self._claims: dict[str, asyncio.Future[None]] = {}
        self._waiters: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        # The records of the last jobs that ended, so that a ``wait`` just after the end
        # needs no read. Only committed ends go in; a change of an ended job drops it.
        self._recent_ends: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._log_signals: dict[int, asyncio.Future[None]] = {}

    async def load(self) -> None:
        """Read what the committed view starts from: the last seq and the counts."""
        self._seq = await self.store.reads.max_seq()
        for queue, status, _mode, owner, task, n in await self.store.reads.counts():
            self.metrics.loaded(queue, status, self.owners.of(owner), n, task)

    def raise_seq(self, floor: int) -> None:
        """New jobs are numbered above ``floor`` (the highest seq retention pruned)."""
        self._seq = max(self._seq, floor)

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # -- changes ----------------------------------------------------------------------
    def change(self, rows: Sequence[JobRow], created: bool = False, lazy: bool = False, linger: float | None = None) -> Change:
        """A durable change of ``rows`` (see the module docstring); ``created`` for new rows.

        A ``lazy`` change (an end that frees no slot for another job) is committed with the
        next commit or within a few milliseconds; anyone who waits on one of its rows
        (:meth:`wait`, :meth:`current`) makes it commit at once. A change that may
        ``linger`` waits at most that many seconds for another write to ride with.
        """
        return Change(self, rows, created, lazy, linger)

    async def _until_unlocked(self, gate: Gate) -> None:
        self.store.group_commit.hurry()  # the change may be a lazy one: someone waits on it now
        await gate.future()

    def hold(self, seqs: Iterable[int]) -> Hold:
        """Keep these rows locked for the block's length, across the changes made in it."""
        return Hold(self, seqs)

    def lock(self, seqs: Iterable[int]) -> Gate:
        """Lock these rows now (no change of them may begin) until :meth:`unlock`."""
        gate = Gate()
        locks = self._locks
        for seq in seqs:
            locks[seq] = gate
        return gate

    def unlock(self, seqs: Iterable[int], gate: Gate) -> None:
        locks = self._locks
        for seq in seqs:
            if locks.get(seq) is gate:
                del locks[seq]
        gate.open()

    def is_locked(self, seq: int) -> bool:
        """Whether a change of ``seq`` is in flight."""
        return seq in self._locks

    def locked(self, seq: int) -> asyncio.Future[None] | None:
        """A future that resolves when the change of ``seq`` in flight is over (None: none is)."""
        gate = self._locks.get(seq)
        return None if gate is None else gate.future()

    async def settle_changes(self, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) until no change is in flight."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._locks and loop.time() < deadline:
            self.store.group_commit.hurry()
            await asyncio.wait({gate.future() for gate in self._locks.values()}, timeout=deadline - loop.time())

    def _committed(self, change: Change, olds: list[tuple[str, str]]) -> None:
        """After a change's commit: lines, then moves, then ends, in that order, so a
        stream sees a job's last lines before its terminal state."""
        rows = change.rows
        if change.lines:
            self._publish_lines(rows, change.lines)
        now = self.clock()
        if change.created:
            self._arrived(rows, now)
        else:
            for row, (old, old_queue) in zip(rows, olds, strict=True):
                self.moved(row, old, old_queue, now)

    def _arrived(self, rows: Sequence[JobRow], now: float) -> None:
        """New rows have committed: counted by kind (a batch's rows are mostly of one),
        then told one by one."""
        owner_of = self.owners.of
        kinds = Counter((row.queue, row.mode, row.status, owner_of(row.owner), row.task) for row in rows)
        moved = self.metrics.moved
        for (queue, mode, status, owner, task), n in kinds.items():
            moved(queue, mode, None, status, None, owner, task, n)
        for row in rows:
            self._told(row, None, now)

    def moved(self, row: JobRow, old: str | None, old_queue: str | None, now: float) -> None:
        """A status change of ``row`` has committed: count it, tell the watchers, and if it
        ended, wake its waiters and those who depend on it."""
        self.metrics.moved(row.queue, row.mode, old, row.status, old_queue, self.owners.of(row.owner), row.task)
        if old == "running" and row.started_at is not None:
            self.metrics.ran(row.mode, max(0.0, now - row.started_at))
        self._told(row, old, now)

    def _told(self, row: JobRow, old: str | None, now: float) -> None:
        """The watchers of a committed status change of ``row`` are told, and if it ended,
        its waiters and those who depend on it."""
        if self.hub.wants(row.job_id):
            self.hub.publish(state_event(row, now), row.task, row.queue, row.owner)
        if row.terminal:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("job %s %s (attempt %d)", row.job_id, row.status, row.attempts, extra={"job_id": row.job_id})
            if row.status == "completed" and old == "running":
                self.metrics.completed(now, row.queue)
            self._signal_log(row.seq)
            self._ended(row)
            for listener in self.end_listeners:
                listener(row)

    def _publish_lines(self, rows: Sequence[JobRow], lines: Sequence[LogLine]) -> None:
        by_seq = {row.seq: row for row in rows}
        first = 0
        for i in range(1, len(lines) + 1):
            if i == len(lines) or lines[i].job_seq != lines[first].job_seq:
                self.publish_stored(by_seq[lines[first].job_seq], lines[first:i], ())
                first = i

    def publish_stored(self, row: JobRow, lines: Sequence[LogLine], outputs: Sequence[OutputItem]) -> None:
        """Log lines and outputs of ``row`` are durable: followers and watchers may see them."""
        if lines or outputs:
            self._signal_log(row.seq)  # followers of either look again
        if not self.hub.wants(row.job_id):
            return
        for kind, items in (("log", lines), ("output", outputs)):
            if items:
                marker = StoredRange(kind, row.job_id, row.seq, items[0].seq, items[-1].seq)
                self.hub.publish(marker, row.task, row.queue, row.owner)

    def awaited(self, job_id: str) -> bool:
        """Whether a client waits on this job or follows its events right now."""
        return job_id in self._waiters or self.hub.follows(job_id)

    # -- pinned rows and client ids ----------------------------------------------------
    def pin(self, row: JobRow) -> None:
        """``row`` is held in memory by a room: its copy is the truth when not locked."""
        self._pinned[row.job_id] = row

    def unpin(self, row: JobRow) -> None:
        if self._pinned.get(row.job_id) is row:
            del self._pinned[row.job_id]

    def claim(self, job_ids: Iterable[str]) -> asyncio.Future[None]:
        """These ids are being admitted; the returned future resolves when that is over."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for job_id in job_ids:
            self._claims[job_id] = fut
        return fut

    def unclaim(self, job_ids: Iterable[str], fut: asyncio.Future[None]) -> None:
        for job_id in job_ids:
            if self._claims.get(job_id) is fut:
                del self._claims[job_id]
        if not fut.done():
            fut.set_result(None)

    def claimed(self, job_id: str) -> bool:
        return job_id in self._claims

    async def claims_settled(self, job_ids: Iterable[str]) -> bool:
        """Wait until none of ``job_ids`` is being admitted; False if none was."""
        waited = False
        while busy := [self._claims[j] for j in job_ids if j in self._claims]:
            waited = True
            await asyncio.gather(*busy, return_exceptions=True)
        return waited

    # -- reading the committed view ------------------------------------------------------
    async def current(self, job_id: str) -> JobRow:
        """The latest committed state of a job, with no change of it in flight.

        A pinned row is that state whenever it is not locked. Otherwise the store is read,
        and a stored row can be overtaken by a commit before this coroutine resumes, so it
        is trusted only if the in-memory view agrees with it: a waiting one is in the
        scheduler, a running one would be pinned, a terminal one is in neither. Otherwise
        the job moved meanwhile and it is read again. The caller acts on the returned row
        without awaiting in between.
        """
        for _ in range(1000):
            row = self._pinned.get(job_id)
            if row is not None:
                lock = self._locks.get(row.seq)
                if lock is None:
                    return row
                await self._until_unlocked(lock)
                continue
            stored = await self.store.reads.get_job(job_id)
            if stored is None:
                raise no_such_job(job_id)
            lock = self._locks.get(stored.seq)
            if lock is not None:
                await self._until_unlocked(lock)
                continue
            if job_id in self._pinned:
                continue  # it was pinned after the read
            waiting_here = self.scheduler.holds(
                stored.seq, stored.queue, stored.mode, stored.priority, stored.enqueued_at, stored.status
            ) or (stored.status == "pending" and self.is_parked(stored.seq))
            if stored.status in _STORED_STATUSES_MOVE:
                pass  # always pinned: it moved after the read
            elif stored.status in WAITING_IN_SCHEDULER:
                if waiting_here:
                    return stored
            elif stored.status != "running" and not waiting_here:
                return stored
            await asyncio.sleep(0)  # it moved after the read: read again
        raise Internal(f"job {job_id!r} does not settle; its state is inconsistent")

    async def record(self, job_id: str, visible: Callable[[int | None], bool] | None = None) -> dict[str, Any]:
        """The job's committed record, read from the store (``not_found`` as well when
        ``visible`` says no to its owner)."""
        row = await self.store.reads.get_job(job_id)
        if row is None or (visible is not None and not visible(row.owner)):
            raise no_such_job(job_id)
        return row.record()

    async def wait(
        self, job_id: str, timeout: float | None, visible: Callable[[int | None], bool] | None = None
    ) -> dict[str, Any]:
        """The job's record once it is terminal; ``timeout`` error if that takes too long.
        A job whose owner ``visible`` refuses is ``not_found`` at once, as if it did not
        exist (not when it ends: the wait's length would tell)."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(job_id, [])
        waiters.append(fut)  # before the read, so a commit after the read still wakes us
        try:
            ended = self._recent_ends.get(job_id)
            if ended is not None:
                if visible is not None and not visible(ended["owner"]):
                    raise no_such_job(job_id)
                return ended  # a committed end (a change since would have dropped it)
            pinned = self._pinned.get(job_id)
            if pinned is not None and pinned.seq in self._locks:
                self.store.group_commit.hurry()  # its end may be a lazy write: it is awaited now
            if pinned is not None and pinned.seq not in self._locks and not pinned.terminal:
                if visible is not None and not visible(pinned.owner):
                    raise no_such_job(job_id)
                status = pinned.status  # committed, and its end will wake us: no read needed
            else:
                row = await self.store.reads.get_job(job_id)
                if row is None or (visible is not None and not visible(row.owner)):
                    raise no_such_job(job_id)
                if row.terminal:
                    return row.record()
                status = row.status
            if self.stopping.is_set():
                raise ShuttingDown("the daemon is stopping and takes no new work")
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

    def _ended(self, row: JobRow) -> None:
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

    def fail_waiters(self) -> None:
        """The daemon stops: every ``wait`` still open ends with ``shutting_down``."""
        for futures in self._waiters.values():
            for fut in futures:
                if not fut.done():
                    fut.set_exception(ShuttingDown("the daemon is stopping"))

    # -- log followers ----------------------------------------------------------------
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

