"""The group commit: every write queued during one loop iteration (or lingering a
moment for company) is committed together, in one call on the store's writer thread:
one transaction, one fsync for the whole batch.

The machinery is the store's, but not its SQL: a batch type (what the writes hold) and
the function that applies it on the writer's thread come from the store. Handing a batch
over costs one hop each way and no task or future of its own: the commit's function goes
on aiosqlite's own queue to its thread and calls back by itself.

A *lazy* write (an end nobody waits for yet) starts no commit: it rides with the next
one, or commits after ``lazy_delay`` at the latest, or at once when someone calls
:meth:`GroupCommit.hurry`. A write that may *linger* is a lazy one with its own, shorter
deadline.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Generic, TypeVar

import aiosqlite

from protocol.errors import StorageError

log = logging.getLogger(__name__)

# A lazy write (an end nobody waits on yet) waits at most this long for a commit to ride.
LAZY_DELAY = 0.003


class KeptFuture(asyncio.Future[None]):
    """A write's future that its awaiter's cancellation does not cancel: a task cancelled
    while it awaits one is told so only once the batch is over, and the write's outcome
    is still there to read (see ``Change`` in pyrexisd/core/ledger.py)."""

    def cancel(self, msg: object | None = None) -> bool:
        return False


class Batch:
    """What every batch carries besides its writes: their futures and its timings."""

    __slots__ = ("waiters", "first_at", "started", "on_thread", "statements_done", "committed")

    def __init__(self) -> None:
        self.waiters: list[asyncio.Future[None]] = []
        self.first_at = 0.0  # perf_counter() of its first write: how long writes wait
        self.started = self.on_thread = self.statements_done = self.committed = 0.0


B = TypeVar("B", bound=Batch)


class GroupCommit(Generic[B]):
    """Batches of writes, one at a time on the writer's thread; called on the loop only."""

    def __init__(
        self,
        new_batch: Callable[[], B],
        apply: Callable[[sqlite3.Connection, B], None],
        connection: Callable[[], aiosqlite.Connection],
        after: Callable[[sqlite3.Connection, B], None] | None = None,
        lazy_delay: float = LAZY_DELAY,
    ) -> None:
        self._new_batch = new_batch
        self._apply = apply  # on the writer's thread: BEGIN, the statements, COMMIT
        self._after = after  # on the writer's thread, once the waiters are told
        self._connection = connection
        self.lazy_delay = lazy_delay
        self.pending: B = new_batch()  # the batch that writes are added to now
        self._urgent = False  # the pending batch holds a write that must not wait
        self._scheduled = False  # a commit is due at the next loop iteration
        self._committing: B | None = None  # the batch on the writer's thread
        self._idle = asyncio.Event()  # nothing pending, nothing committing (for drain)
        self._idle.set()
        self._lazy_timer: asyncio.TimerHandle | None = None
        self._closing = False
        self.commits = 0  # batches committed, for metrics and tests
        self.committed_writes = 0  # writes those batches carried (group commit's gain)
        self.commit_seconds = 0.0  # from a batch's start to its waiters resolved
        # Told of each committed batch: its seconds and its number of writes (metrics).
        self.on_commit: Callable[[float, int], None] | None = None
        # Where a commit's time goes (seconds, summed over commits): a write waiting for the
        # batch to start, the hand-over to the writer's thread, the statements, COMMIT
        # (the fsync), and the hand-back to the loop.
        self.split = {"queued": 0.0, "handover": 0.0, "statements": 0.0, "commit": 0.0, "handback": 0.0}

    def enqueue(self, lazy: bool = False, linger: float | None = None, kept: bool = False) -> asyncio.Future[None]:
        """The writes just added to :attr:`pending` are complete: their future resolves once
        they are durable (or raises :class:`StorageError`); a ``kept`` one refuses to be
        cancelled (:class:`KeptFuture`)."""
        batch = self.pending
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = KeptFuture(loop=loop) if kept else loop.create_future()
        if not batch.waiters:
            batch.first_at = time.perf_counter()
            self._idle.clear()
        batch.waiters.append(fut)
        if not lazy and linger is None:
            self._urgent = True
            self._schedule()
        else:
            delay = self.lazy_delay if linger is None else linger
            timer = self._lazy_timer
            if timer is None or timer.when() > loop.time() + delay:
                if timer is not None:
                    timer.cancel()
                self._lazy_timer = loop.call_later(delay, self.hurry)
        return fut

    @property
    def committing(self) -> bool:
        """A batch is on its way to the disk now."""
        return self._committing is not None

    def hurry(self) -> None:
        """Commit what is pending now, lazy writes included (someone waits on them)."""
        if self._lazy_timer is not None:
            self._lazy_timer.cancel()
            self._lazy_timer = None
        if self.pending.waiters:
            self._urgent = True
            self._schedule()

    async def drain(self) -> None:
        """Commit what is pending, lazy writes included, and wait until nothing is left."""
        self._closing = True
        self.hurry()
        await self._idle.wait()

    def _schedule(self) -> None:
        # Everything written during this loop iteration goes into the same batch.
        if not self._scheduled and self._committing is None:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start)

    def _start(self) -> None:
        """Hand the pending batch to the writer's thread: one hop, one call, one fsync."""
        self._scheduled = False
        batch = self.pending
        if self._committing is not None or not batch.waiters:
            return
        self.pending = self._new_batch()
        self._urgent = False
        if self._lazy_timer is not None:  # what it was armed for rides with this batch
            self._lazy_timer.cancel()
            self._lazy_timer = None
        self._committing = batch
        loop = asyncio.get_running_loop()
        conn = self._connection()
        raw = conn._conn  # noqa: SLF001 - aiosqlite's sqlite3 connection, used on its thread
        batch.started = time.perf_counter()
        apply, after = self._apply, self._after

        def on_thread() -> None:
            error: BaseException | None = None
            try:
                apply(raw, batch)
            except BaseException as exc:  # noqa: BLE001 - sqlite3.Error, OSError: the disk's
                error = exc
            loop.call_soon_threadsafe(self._finished, batch, error)
            if after is not None and error is None:
                # After the batch's waiters are answered: the next batch queues behind it
                # on this thread for that long at most.
                after(raw, batch)

        # aiosqlite's own queue to its connection thread: the commit's function runs there
        # and calls back by itself, so a batch costs no asyncio future and no task.
        conn._tx.put_nowait((None, on_thread))  # noqa: SLF001

    def _finished(self, batch: B, error: BaseException | None) -> None:
        self._committing = None
        if error is not None:
            err = StorageError(f"could not commit: {error}")
            log.error("group commit of %d writes failed: %s", len(batch.waiters), error)
            for fut in batch.waiters:
                if not fut.done():
                    fut.set_exception(err)
        else:
            now = time.perf_counter()
            self.commits += 1
            self.committed_writes += len(batch.waiters)
            self.commit_seconds += now - batch.started
            if self.on_commit is not None:
                self.on_commit(now - batch.started, len(batch.waiters))
            split = self.split
            split["queued"] += batch.started - batch.first_at
            split["handover"] += batch.on_thread - batch.started
            split["statements"] += batch.statements_done - batch.on_thread
            split["commit"] += batch.committed - batch.statements_done
            split["handback"] += now - batch.committed
            for fut in batch.waiters:
                if not fut.done():
                    fut.set_result(None)
        if self.pending.waiters and (self._urgent or self._closing):
            self._schedule()
        elif not self.pending.waiters:
            self._idle.set()
