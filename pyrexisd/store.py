"""The durable store: SQLite through aiosqlite, with group commit.

One object owns the database file and two aiosqlite connections to it, in WAL mode:

* the *writer*, used only by the group commit. Whoever wants something durable calls
  :meth:`Store.write` and awaits the future it returns. Everything written during one
  loop iteration (or while a commit is in flight) forms one batch: one transaction, one
  ``executemany`` per table, one commit, then every future of the batch is resolved, so
  ``synchronous=FULL`` costs one fsync per batch, not one per job. The batching, the
  hand-over to aiosqlite's thread and the lazy and lingering writes are
  :class:`~pyrexisd.group_commit.GroupCommit`'s (``Store.group_commit``); the store
  turns writes into the statements' parameters and runs the statements.
* the *reader*, for every query: :class:`~pyrexisd.store_reads.Reads`
  (``Store.reads``), which sees committed data only.

The tables and the records they hold are :mod:`pyrexisd.store_schema`'s; opening the
store makes or migrates them. Rows are serialised when :meth:`write` is called, so the
caller may keep changing its in-memory copy while the batch waits.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any

import aiosqlite
import msgpack

from protocol.errors import StorageError
from pyrexisd.core.model import JobRow, LogLine, OutputItem
from pyrexisd.group_commit import LAZY_DELAY, Batch, GroupCommit
from pyrexisd.packing import pack
from pyrexisd.rows_statement import RowsStatement
from pyrexisd.store_reads import Reads
from pyrexisd.store_schema import (
    ARGS_INDEX,
    BLOB_INDEXES,
    JOB_COLUMNS,
    MIGRATIONS,
    TERMINAL_SQL,
    CacheWrites,
    QueueSettings,
)

log = logging.getLogger(__name__)

SYNC_MODES = ("full", "normal")

_UPSERT_JOB = RowsStatement(
    f"INSERT INTO jobs ({', '.join(JOB_COLUMNS)}) VALUES",
    len(JOB_COLUMNS),
    " ON CONFLICT(seq) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in JOB_COLUMNS if c != "seq"),
)
# New rows are plain INSERTs (no conflict to resolve); one that has not started, ended or
# checkpointed yet leaves the columns still NULL (or at their default) out of the
# statement: fewer values to bind on the writer's thread for every submitted job.
_FRESH_UNSET: tuple[str, ...] = (
    "started_at", "finished_at", "result", "error", "progress", "output_seq", "pid", "pid_start", "pipeline",
    "cached_from",
)  # fmt: skip
_FRESH_COLUMNS = tuple(c for c in JOB_COLUMNS if c not in _FRESH_UNSET)
_INSERT_JOB = RowsStatement(f"INSERT INTO jobs ({', '.join(JOB_COLUMNS)}) VALUES", len(JOB_COLUMNS))
_INSERT_FRESH = RowsStatement(f"INSERT INTO jobs ({', '.join(_FRESH_COLUMNS)}) VALUES", len(_FRESH_COLUMNS))
_INSERT_LOG = RowsStatement("INSERT OR REPLACE INTO logs (job_seq, seq, stream, line, time) VALUES", 5)
_INSERT_OUTPUT = RowsStatement("INSERT OR REPLACE INTO outputs (job_seq, seq, value, time) VALUES", 4)
_UPSERT_QUEUE = (
    "INSERT INTO queues (name, paused, weight, max_concurrency, aging) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT(name) DO UPDATE SET paused = excluded.paused, weight = excluded.weight, "
    "max_concurrency = excluded.max_concurrency, aging = excluded.aging"
)
_UPSERT_SCHEDULE = (
    "INSERT OR REPLACE INTO schedules (name, cron, every, job, next_run, created_at, last_run, last_job_id, owner) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_CACHE = (
    "INSERT OR REPLACE INTO cache (key, task, owner, job_id, result, stored_at, expires_at, used_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_SETTING = (
    "INSERT INTO settings (key, value) VALUES (?, ?) "
    "ON CONFLICT(key) DO UPDATE SET value = excluded.value"
)

# The WAL file is cut back to this size after a checkpoint (it is reused, not regrown).
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
# Pages given back to the file system after each prune: small steps, so the writer's
# thread is never held for long (the rest goes with the next prunes).
VACUUM_PAGES = 512


def _upgrade(scripts: Sequence[str], version: int) -> str:
    """One transaction that runs ``scripts`` and records the ``version`` they reach."""
    body = ";\n".join(scripts)
    return f"BEGIN; {body}; PRAGMA user_version={version}; COMMIT;"


async def _is_empty(conn: aiosqlite.Connection) -> bool:
    # user_version 0 alone does not make a file new: one that already holds tables is
    # somebody's data, so it is upgraded step by step (and logged so) like any older file.
    async with conn.execute("SELECT count(*) FROM sqlite_master") as cur:
        row = await cur.fetchone()
    return row is not None and int(row[0]) == 0


def _pack(value: Any) -> bytes:
    return pack(value)  # on the loop's thread, like every write


_COLUMN_VALUES = operator.attrgetter(*JOB_COLUMNS)


def job_params(row: JobRow) -> tuple[Any, ...]:
    """A row's column values in :data:`JOB_COLUMNS` order, blobs packed.

    On the hot path of every status change: one C call gathers the values, and only
    blobs that are set are packed.
    """
    values = list(_COLUMN_VALUES(row))
    for i in BLOB_INDEXES:
        value = values[i]
        if value is not None:
            values[i] = _pack(value) if value or not isinstance(value, (list, dict)) else _EMPTY[type(value)]
    if row.args_blob is None:
        row.args_blob = _pack(row.args)
    values[ARGS_INDEX] = row.args_blob
    return tuple(values)


_EMPTY: dict[type, bytes] = {list: msgpack.packb([]), dict: msgpack.packb({})}
_UNSET_VALUES = operator.attrgetter(*_FRESH_UNSET)
_UNSET_DEFAULTS = (None, None, None, None, None, 0, None, None, None, None)
_FRESH_VALUES = operator.attrgetter(*_FRESH_COLUMNS)
_FRESH_ARGS = _FRESH_COLUMNS.index("args")
_FRESH_DEPENDS_ON = _FRESH_COLUMNS.index("depends_on")
_FRESH_LABELS = _FRESH_COLUMNS.index("labels")


def fresh_params(row: JobRow) -> tuple[Any, ...] | None:
    """A new row's values in :data:`_FRESH_COLUMNS` order, if the columns that
    statement leaves out are all unset in it (None otherwise: it needs every column)."""
    if _UNSET_VALUES(row) != _UNSET_DEFAULTS:
        return None
    values = list(_FRESH_VALUES(row))
    depends_on = values[_FRESH_DEPENDS_ON]
    values[_FRESH_DEPENDS_ON] = _pack(depends_on) if depends_on else _EMPTY_LIST
    labels = values[_FRESH_LABELS]
    values[_FRESH_LABELS] = _pack(labels) if labels else _EMPTY_DICT
    if row.args_blob is None:
        row.args_blob = _pack(row.args)
    values[_FRESH_ARGS] = row.args_blob
    return tuple(values)


_EMPTY_LIST = _EMPTY[list]
_EMPTY_DICT = _EMPTY[dict]


class _Batch(Batch):
    """The writes of one group commit, as the statements' parameters."""

    __slots__ = (
        "jobs", "new_jobs", "fresh_jobs", "logs", "outputs", "queues", "settings", "schedules", "removed", "pids",
        "rekeys", "checkpoints", "prunes", "cache_put", "cache_drop", "cache_touch",
    )  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self.jobs: list[tuple[Any, ...]] = []
        self.new_jobs: list[tuple[Any, ...]] = []  # rows not stored yet, every column
        self.fresh_jobs: list[tuple[Any, ...]] = []  # rows not stored yet, _FRESH_COLUMNS
        self.logs: list[tuple[Any, ...]] = []
        self.outputs: list[tuple[Any, ...]] = []
        self.queues: list[tuple[Any, ...]] = []
        self.settings: list[tuple[Any, ...]] = []
        self.schedules: list[tuple[Any, ...]] = []
        self.removed: list[tuple[str]] = []
        self.pids: list[tuple[int | None, int | None, int]] = []
        self.rekeys: list[tuple[float, str]] = []
        self.checkpoints: list[tuple[Any, ...]] = []
        self.prunes: list[tuple[int]] = []
        self.cache_put: list[tuple[Any, ...]] = []
        self.cache_drop: list[tuple[bytes]] = []
        self.cache_touch: list[tuple[float, bytes]] = []


class Store:
    """The database: group-committed writes, reads from committed data only."""

    def __init__(
        self,
        path: str,
        sync: str = "full",
        lazy_delay: float = LAZY_DELAY,
        on_rewrite: Callable[[], None] | None = None,
    ) -> None:
        if sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {SYNC_MODES}")
        self.path = path
        # Told before the one-time rewrite of an old file (it may take minutes: the
        # daemon asks systemd for more start-up time).
        self.on_rewrite = on_rewrite
        self.sync = sync
        self._writer: aiosqlite.Connection | None = None
        self.reads = Reads()  # every query, on the reader connection
        # Writes queued in one loop iteration commit together (see pyrexisd.group_commit).
        self.group_commit = GroupCommit(_Batch, self._apply, self._writer_conn, self._after_commit, lazy_delay)

    # -- lifecycle --------------------------------------------------------------------
    async def open(self) -> None:
        try:
            self._writer = await aiosqlite.connect(self.path, isolation_level=None)
            await self._writer.execute("PRAGMA busy_timeout=5000")
            # Set before anything creates the file's first page (the WAL switch does): a
            # file made with it gives freed pages back after each prune.
            await self._writer.execute("PRAGMA auto_vacuum=INCREMENTAL")
            await self._writer.execute("PRAGMA journal_mode=WAL")
            await self._writer.execute(f"PRAGMA synchronous={self.sync.upper()}")
            await self._writer.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
            await self._migrate(self._writer)
            await self._incremental_vacuum_on(self._writer)
            await self.reads.open(self.path)
        except sqlite3.Error as exc:
            await self.close()
            raise StorageError(f"cannot open database {self.path}: {exc}") from exc

    async def _incremental_vacuum_on(self, conn: aiosqlite.Connection) -> None:
        """A file made before retention existed has no auto-vacuum, and SQLite switches an
        existing file only by rewriting it (VACUUM): done once, here, at start-up."""
        async with conn.execute("PRAGMA auto_vacuum") as cur:
            row = await cur.fetchone()
        if row is not None and int(row[0]) == 2:  # INCREMENTAL
            return
        started = time.monotonic()
        log.info("rewriting the database once so that pruned jobs give their space back (VACUUM)")
        if self.on_rewrite is not None:
            self.on_rewrite()
        try:
            await conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            await conn.execute("VACUUM")
        except sqlite3.Error as exc:
            # Not fatal: the file keeps its size and reuses its free pages; the next start tries again.
            log.warning("could not switch the database to incremental auto-vacuum: %s", exc)
            return
        log.info("database rewritten with incremental auto-vacuum in %.1f s", time.monotonic() - started)

    async def close(self) -> None:
        """Commit what is pending, then close both connections."""
        if self._writer is not None:
            await self.group_commit.drain()
        await self.reads.close()
        if self._writer is not None:
            await self._writer.close()
        self._writer = None

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _migrate(self, conn: aiosqlite.Connection) -> None:
        """Bring the schema to the latest version (``len(MIGRATIONS)``).

        A new file gets every migration in one transaction: a first start is not an
        upgrade, and a failure leaves the file empty rather than half made. A file at an
        older version is upgraded one committed step at a time, so a failure leaves it at
        the last version it fully reached. Both paths run the same scripts, so the
        migrations stay the one definition of the schema.
        """
        async with conn.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = int(row[0]) if row else 0
        latest = len(MIGRATIONS)
        if version == 0 and await _is_empty(conn):
            await conn.executescript(_upgrade(MIGRATIONS, latest))
            log.info("created database schema version %d", latest)
            return
        for target, script in enumerate(MIGRATIONS[version:], start=version + 1):
            await conn.executescript(_upgrade([script], target))
            log.info("database schema migrated to version %d", target)

    # -- writes -----------------------------------------------------------------------
    def write(
        self,
        jobs: Sequence[JobRow] = (),
        new_jobs: Sequence[JobRow] = (),
        logs: Sequence[LogLine] = (),
        outputs: Sequence[OutputItem] = (),
        queues: Sequence[QueueSettings] = (),
        settings: Sequence[tuple[str, Any]] = (),
        schedules: Sequence[Any] = (),
        removed_schedules: Sequence[str] = (),
        pids: Sequence[tuple[int, int | None, int | None]] = (),
        rekeys: Sequence[tuple[str, float]] = (),
        checkpoints: Sequence[tuple[int, dict[str, Any], dict[str, Any] | None, int]] = (),
        cache: CacheWrites | None = None,
        prunes: Sequence[int] = (),
        lazy: bool = False,
        linger: float | None = None,
        kept: bool = False,
    ) -> asyncio.Future[None]:
        """Queue rows for the next group commit; the future resolves once they are durable
        (a ``kept`` future refuses to be cancelled: see ``GroupCommit.enqueue``).

        ``jobs`` are written whole over what is stored; ``new_jobs`` are rows never
        stored before (a fresh seq and job id): plain inserts, which fail the batch if
        either is taken.

        A ``lazy`` write does not start a commit of its own: it rides with the next one, or
        is committed after ``lazy_delay`` seconds at the latest (sooner if someone calls
        :meth:`hurry`). A write that may ``linger`` is like a lazy one with that shorter
        deadline (dispatch lets a slot's end and next start wait a moment for another
        slot's end). Raises :class:`StorageError` through the future if the batch
        cannot commit. ``prunes``: seqs of finished jobs to delete with their logs and
        outputs (retention); the file gives a few freed pages back after that commit.
        """
        batch = self.group_commit.pending
        if jobs:
            batch.jobs.extend(map(job_params, jobs))
        if new_jobs:
            fresh = batch.fresh_jobs
            for row in new_jobs:
                params = fresh_params(row)
                if params is not None:
                    fresh.append(params)
                else:
                    batch.new_jobs.append(job_params(row))
        if logs:
            batch.logs.extend((ln.job_seq, ln.seq, ln.stream, ln.line, ln.time) for ln in logs)
        if outputs:
            batch.outputs.extend((o.job_seq, o.seq, _pack(o.value), o.time) for o in outputs)
        if queues:
            batch.queues.extend((q.name, int(q.paused), q.weight, q.max_concurrency, q.aging) for q in queues)
        if settings:
            batch.settings.extend((k, _pack(v)) for k, v in settings)
        if schedules:
            batch.schedules.extend(
                (s.name, s.cron, s.every, _pack(s.job), s.next_run, s.created_at, s.last_run, s.last_job_id, s.owner)
                for s in schedules
            )
        if removed_schedules:
            batch.removed.extend((name,) for name in removed_schedules)
        if pids:
            batch.pids.extend((pid, start, seq) for seq, pid, start in pids)
        if rekeys:  # (queue, aging): its pending jobs' keys follow a new aging rate
            batch.rekeys.extend((aging, queue) for queue, aging in rekeys)
        if checkpoints:  # pipeline jobs (seq, state, progress, output_seq): those columns only
            batch.checkpoints.extend(
                (_pack(state), _pack(progress), output_seq, seq) for seq, state, progress, output_seq in checkpoints
            )
        if cache is not None:
            batch.cache_put.extend(
                (c.key, c.task, c.owner, c.job_id, c.result, c.stored_at, c.expires_at, c.used_at) for c in cache.put
            )
            batch.cache_drop.extend((key,) for key in cache.drop)
            batch.cache_touch.extend(cache.touch)
        if prunes:
            batch.prunes.extend((seq,) for seq in prunes)
        return self.group_commit.enqueue(lazy, linger, kept)

    def _after_commit(self, conn: sqlite3.Connection, batch: _Batch) -> None:
        # On the writer's thread, after a batch that pruned: the file gives a few freed
        # pages back (a small step: the next batch waits behind it that long at most).
        if batch.prunes:
            try:
                conn.executescript(f"PRAGMA incremental_vacuum({VACUUM_PAGES})")
            except sqlite3.Error as exc:
                log.warning("incremental vacuum failed: %s", exc)

    def _apply(self, conn: sqlite3.Connection, batch: _Batch) -> None:
        # Runs on aiosqlite's thread: one transaction, one executemany per table.
        batch.on_thread = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        try:
            if batch.prunes:
                # Deleted first: a pruned job is locked in the ledger meanwhile, so nothing
                # in this batch writes it again.
                conn.executemany("DELETE FROM logs WHERE job_seq = ?", batch.prunes)
                conn.executemany("DELETE FROM outputs WHERE job_seq = ?", batch.prunes)
                conn.executemany(f"DELETE FROM jobs WHERE seq = ? AND status IN {TERMINAL_SQL}", batch.prunes)
            # New rows next: any other write of them in this batch was made after.
            if batch.fresh_jobs:
                _INSERT_FRESH.run(conn, batch.fresh_jobs)
            if batch.new_jobs:
                _INSERT_JOB.run(conn, batch.new_jobs)
            if batch.jobs:
                _UPSERT_JOB.run(conn, batch.jobs)
            if batch.logs:
                _INSERT_LOG.run(conn, batch.logs)
            if batch.outputs:
                _INSERT_OUTPUT.run(conn, batch.outputs)
            if batch.queues:
                conn.executemany(_UPSERT_QUEUE, batch.queues)
            if batch.settings:
                conn.executemany(_UPSERT_SETTING, batch.settings)
            if batch.schedules:
                conn.executemany(_UPSERT_SCHEDULE, batch.schedules)
            if batch.removed:
                conn.executemany("DELETE FROM schedules WHERE name = ?", batch.removed)
            if batch.pids:
                # Only these two columns: the rest of the row may be mid-change in memory.
                conn.executemany("UPDATE jobs SET pid = ?, pid_start = ? WHERE seq = ?", batch.pids)
            if batch.rekeys:
                conn.executemany(
                    "UPDATE jobs SET sched_key = ? * enqueued_at - priority WHERE queue = ? AND status = 'pending'",
                    batch.rekeys,
                )
            if batch.checkpoints:
                # Only these columns, after the batch's whole rows: a checkpoint's state
                # is the newest, and the rest of the row may be mid-change in memory.
                conn.executemany(
                    "UPDATE jobs SET pipeline = ?, progress = ?, output_seq = ? WHERE seq = ?", batch.checkpoints
                )
            if batch.cache_drop:
                conn.executemany("DELETE FROM cache WHERE key = ?", batch.cache_drop)
            if batch.cache_put:
                conn.executemany(_UPSERT_CACHE, batch.cache_put)
            if batch.cache_touch:
                conn.executemany("UPDATE cache SET used_at = ? WHERE key = ?", batch.cache_touch)
            batch.statements_done = time.perf_counter()
            conn.execute("COMMIT")
            batch.committed = time.perf_counter()
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _writer_conn(self) -> aiosqlite.Connection:
        if self._writer is None:
            raise StorageError("the store is closed")
        return self._writer

    # -- the file -------------------------------------------------------------------------
    def file_bytes(self) -> int:
        """The database's size on disk: the file and its WAL."""
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.path.getsize(self.path + suffix)
            except OSError:
                pass
        return total

    async def backup_to(self, target: str) -> int:
        """Copy the database, consistent as of one commit, to ``target`` with SQLite's
        backup API, while the daemon runs; its size in bytes. A connection of its own, on
        a thread of its own: neither the writer nor the reader of clients waits for it."""

        def run() -> int:
            source = sqlite3.connect(self.path)
            try:
                dest = sqlite3.connect(target)
                try:
                    # One step: one read transaction, so the copy is one committed state
                    # (WAL lets the writer go on meanwhile).
                    source.backup(dest, pages=-1)
                    dest.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
                finally:
                    dest.close()
            finally:
                source.close()
            return os.path.getsize(target)

        try:
            return await asyncio.to_thread(run)
        except sqlite3.Error as exc:
            raise StorageError(f"could not back up the database: {exc}") from exc
