"""The durable store: SQLite through aiosqlite, with group commit.

One object owns two aiosqlite connections to one WAL database:

* the *writer*, used only by the group commit. Whoever wants something durable calls
  :meth:`Store.write` and awaits the future it returns. Everything written during one
  loop iteration (or while a commit is in flight) forms one batch: one transaction, one
  ``executemany`` per table, one commit, then every future of the batch is resolved, so
  ``synchronous=FULL`` costs one fsync per batch, not one per job. The batching, the
  hand-over to aiosqlite's thread and the lazy and lingering writes are
  :class:`~pyrexisd.group_commit.GroupCommit`'s (``Store.group_commit``); the store
  turns writes into the statements' parameters and runs the statements.
* the *reader*, for every query. WAL shows it committed data only, so a client never
  reads a state that is not durable (a read between BEGIN and COMMIT on the writer would).

Rows are serialised when :meth:`write` is called, so the caller may keep changing its
in-memory copy while the batch waits.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import operator
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, TypeVar, cast

import aiosqlite
import msgpack

from protocol.errors import StorageError
from pyrexisd.core.model import JobRow, LogLine, OutputItem
from pyrexisd.group_commit import LAZY_DELAY, Batch, GroupCommit
from pyrexisd.packing import pack
from pyrexisd.rows_statement import RowsStatement

log = logging.getLogger(__name__)
T = TypeVar("T")

SYNC_MODES = ("full", "normal")

JOB_COLUMNS: tuple[str, ...] = (
    "seq", "job_id", "task", "args", "queue", "priority", "mode", "status", "created_at",
    "max_retries", "on_interrupt", "dependency_policy", "depends_on", "labels", "timeout",
    "attempts", "round_base", "started_at", "finished_at", "run_at", "enqueued_at",
    "result", "error", "progress", "log_seq", "spec_digest", "output_seq", "pid", "pid_start",
    "sched_key", "owner", "pipeline", "cached_from",
)  # fmt: skip
_BLOBS = frozenset({"args", "depends_on", "labels", "result", "error", "progress", "pipeline"})
_ARGS_INDEX = JOB_COLUMNS.index("args")
# args are written from the row's packed copy (see job_params), the other blobs packed here.
_BLOB_INDEXES = tuple(i for i, c in enumerate(JOB_COLUMNS) if c in _BLOBS and c != "args")
_SELECT_JOB = f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs"
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

# Each entry upgrades the schema from version i to i + 1 (PRAGMA user_version).
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY,
        job_id TEXT NOT NULL UNIQUE,
        task TEXT NOT NULL,
        args BLOB NOT NULL,
        queue TEXT NOT NULL,
        priority INTEGER NOT NULL,
        mode TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at REAL NOT NULL,
        max_retries INTEGER NOT NULL,
        on_interrupt TEXT NOT NULL,
        dependency_policy TEXT NOT NULL,
        depends_on BLOB NOT NULL,
        labels BLOB NOT NULL,
        timeout REAL,
        attempts INTEGER NOT NULL,
        round_base INTEGER NOT NULL,
        started_at REAL,
        finished_at REAL,
        run_at REAL,
        enqueued_at REAL NOT NULL,
        result BLOB,
        error BLOB,
        progress BLOB,
        log_seq INTEGER NOT NULL,
        spec_digest BLOB NOT NULL
    );
    CREATE INDEX jobs_created ON jobs (created_at, job_id);
    CREATE INDEX jobs_status ON jobs (status, created_at, job_id);
    CREATE INDEX jobs_queue ON jobs (queue, created_at, job_id);
    CREATE TABLE logs (
        job_seq INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        stream TEXT NOT NULL,
        line TEXT NOT NULL,
        time REAL NOT NULL,
        PRIMARY KEY (job_seq, seq)
    ) WITHOUT ROWID;
    CREATE TABLE queues (
        name TEXT PRIMARY KEY,
        paused INTEGER NOT NULL,
        weight REAL NOT NULL,
        max_concurrency INTEGER,
        aging REAL NOT NULL
    );
    CREATE TABLE settings (key TEXT PRIMARY KEY, value BLOB);
    """,
    """
    ALTER TABLE jobs ADD COLUMN output_seq INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE outputs (
        job_seq INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        value BLOB NOT NULL,
        time REAL NOT NULL,
        PRIMARY KEY (job_seq, seq)
    ) WITHOUT ROWID;
    """,
    """
    CREATE TABLE schedules (
        name TEXT PRIMARY KEY,
        cron TEXT,
        every REAL,
        job BLOB NOT NULL,
        next_run REAL NOT NULL,
        created_at REAL NOT NULL,
        last_run REAL,
        last_job_id TEXT
    );
    """,
    """
    ALTER TABLE jobs ADD COLUMN pid INTEGER;
    ALTER TABLE jobs ADD COLUMN pid_start INTEGER;
    """,
    # The scheduler's static key of a pending job, so that the jobs beyond its windows are
    # read back in its order (a partial index: only pending jobs are ever paged in).
    # Filled in for older rows at start-up, where the queues' aging rates are known.
    """
    ALTER TABLE jobs ADD COLUMN sched_key REAL;
    CREATE INDEX jobs_ready ON jobs (queue, mode, sched_key, seq) WHERE status = 'pending';
    """,
    # Ownership: the submitter's uid (NULL for older jobs and schedules, which belong to
    # whoever runs the daemon); "my jobs" pages through the owner's index.
    """
    ALTER TABLE jobs ADD COLUMN owner INTEGER;
    CREATE INDEX jobs_owner ON jobs (owner, created_at, job_id);
    ALTER TABLE schedules ADD COLUMN owner INTEGER;
    """,
    # A pipeline job's state: per-stage figures and where a resume starts (NULL for
    # other jobs). Checkpoints update it, with the outputs they cover, in one commit.
    """
    ALTER TABLE jobs ADD COLUMN pipeline BLOB;
    """,
    # The result cache (pyrexisd.core.cache): one row per (task code, args, owner) digest,
    # its result packed; a job answered from it names the job whose result it reused.
    """
    ALTER TABLE jobs ADD COLUMN cached_from TEXT;
    CREATE TABLE cache (
        key BLOB PRIMARY KEY,
        task TEXT NOT NULL,
        owner INTEGER,
        job_id TEXT NOT NULL,
        result BLOB NOT NULL,
        stored_at REAL NOT NULL,
        expires_at REAL,
        used_at REAL NOT NULL
    );
    """,
    # Retention: finished jobs in the order they ended, for pruning the oldest first.
    """
    CREATE INDEX jobs_finished ON jobs (finished_at, seq) WHERE status IN ('completed', 'failed', 'cancelled');
    """,
)

TERMINAL_SQL = "('completed', 'failed', 'cancelled')"
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


@dataclass(frozen=True, slots=True)
class QueueSettings:
    name: str
    paused: bool
    weight: float
    max_concurrency: int | None
    aging: float


@dataclass(frozen=True, slots=True)
class CacheRow:
    """One entry of the result cache as stored (``result`` packed)."""

    key: bytes
    task: str
    owner: int | None
    job_id: str
    result: bytes
    stored_at: float
    expires_at: float | None
    used_at: float


@dataclass(slots=True)
class CacheWrites:
    """Changes of the result cache for one group commit: entries stored, entries
    dropped (by key), and entries used (``(used_at, key)``, for the LRU order)."""

    put: Sequence[CacheRow] = ()
    drop: Sequence[bytes] = ()
    touch: Sequence[tuple[float, bytes]] = ()


class QueueChanges(TypedDict, total=False):
    """Some of a queue's settings, to change (``max_concurrency=None`` removes the cap)."""

    paused: bool
    weight: float
    max_concurrency: int | None
    aging: float


@dataclass(slots=True)
class Schedule:
    """A recurring job: its definition and where it stands."""

    name: str
    cron: str | None
    every: float | None
    job: dict[str, Any]
    next_run: float
    created_at: float
    last_run: float | None = None
    last_job_id: str | None = None
    owner: int | None = None  # who added it: its runs are that user's jobs

    def record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cron": self.cron,
            "every": self.every,
            "job": self.job,
            "next_run": self.next_run,
            "last_run": self.last_run,
            "last_job_id": self.last_job_id,
            "owner": self.owner,
        }

    def job_id_for(self, slot: float) -> str:
        """The job id of the run for ``slot``: the same for the same slot (so a run is never
        submitted twice), distinct for distinct slots (microseconds: ``every`` may be < 1 s)."""
        name = self.name
        if len(name) > 120:  # job ids are limited to 200 characters
            name = name[:80] + "~" + hashlib.sha1(name.encode()).hexdigest()[:12]
        return f"{name}@{self.created_at:.0f}:{slot:.6f}"


def _pack(value: Any) -> bytes:
    return pack(value)  # on the loop's thread, like every write


def _unpack(blob: bytes | None) -> Any:
    if blob is None:
        return None
    return msgpack.unpackb(blob, raw=False, strict_map_key=False)


def _rows_in(conn: sqlite3.Connection, sql: str, values: Sequence[Any]) -> list[Any]:
    """The rows of ``sql`` (its ``{marks}`` an IN list) for all ``values``, queried 500 at
    a time: well below SQLite's bound-parameter limit."""
    out: list[Any] = []
    for i in range(0, len(values), 500):
        chunk = values[i : i + 500]
        out.extend(conn.execute(sql.format(marks=",".join("?" * len(chunk))), chunk))
    return out


def _filters(
    owner: int | None, unowned_too: bool, statuses: Sequence[str] | None, task: str | None, queue: str | None
) -> tuple[list[str], list[Any]]:
    """WHERE terms and their parameters for the filters ``list`` and ``clean`` share."""
    where: list[str] = []
    params: list[Any] = []
    if owner is not None:
        where.append("(owner = ? OR owner IS NULL)" if unowned_too else "owner = ?")
        params.append(owner)
    if statuses:
        where.append(f"status IN ({','.join('?' * len(statuses))})")
        params.extend(statuses)
    if task is not None:
        where.append("task = ?")
        params.append(task)
    if queue is not None:
        where.append("queue = ?")
        params.append(queue)
    return where, params


_COLUMN_VALUES = operator.attrgetter(*JOB_COLUMNS)


def job_params(row: JobRow) -> tuple[Any, ...]:
    """A row's column values in :data:`JOB_COLUMNS` order, blobs packed.

    On the hot path of every status change: one C call gathers the values, and only
    blobs that are set are packed.
    """
    values = list(_COLUMN_VALUES(row))
    for i in _BLOB_INDEXES:
        value = values[i]
        if value is not None:
            values[i] = _pack(value) if value or not isinstance(value, (list, dict)) else _EMPTY[type(value)]
    if row.args_blob is None:
        row.args_blob = _pack(row.args)
    values[_ARGS_INDEX] = row.args_blob
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


def job_from_db(values: Sequence[Any]) -> JobRow:
    out = list(values)
    for i in _BLOB_INDEXES:
        out[i] = _unpack(out[i])
    args_blob = out[_ARGS_INDEX]
    out[_ARGS_INDEX] = _unpack(args_blob)
    row = JobRow(**dict(zip(JOB_COLUMNS, out, strict=True)))
    row.args_blob = args_blob
    return row


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
        self._reader: aiosqlite.Connection | None = None
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
            self._reader = await aiosqlite.connect(self.path, isolation_level=None)
            await self._reader.execute("PRAGMA query_only=1")
            await self._reader.execute("PRAGMA busy_timeout=5000")
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
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

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
    ) -> asyncio.Future[None]:
        """Queue rows for the next group commit; the future resolves once they are durable.

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
        return self.group_commit.enqueue(lazy, linger)

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

    # -- reads ------------------------------------------------------------------------
    def _writer_conn(self) -> aiosqlite.Connection:
        if self._writer is None:
            raise StorageError("the store is closed")
        return self._writer

    def _reader_conn(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise StorageError("the store is closed")
        return self._reader

    async def _in_thread(
        self, conn: aiosqlite.Connection, fn: Callable[..., T], *args: Any
    ) -> T:
        """Run ``fn(sqlite3_connection, *args)`` on ``conn``'s thread in one hop."""
        raw = conn._conn  # noqa: SLF001 - aiosqlite's sqlite3 connection, used on its thread
        # aiosqlite leaves its private ``_execute`` unannotated: it returns ``fn``'s result.
        execute = cast("Callable[..., Awaitable[T]]", conn._execute)  # noqa: SLF001
        return await execute(fn, raw, *args)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await self._in_thread(self._reader_conn(), fn, *args)
        except sqlite3.Error as exc:
            raise StorageError(f"could not read: {exc}") from exc

    async def get_job(self, job_id: str) -> JobRow | None:
        def q(conn: sqlite3.Connection) -> JobRow | None:
            row = conn.execute(f"{_SELECT_JOB} WHERE job_id = ?", (job_id,)).fetchone()
            return job_from_db(row) if row else None

        return await self._read(q)

    async def get_jobs(self, seqs: Sequence[int]) -> dict[int, JobRow]:
        """The jobs with these seqs (those that exist), by seq."""
        rows = await self._select_in("seq", seqs)
        return {row.seq: row for row in rows}

    async def get_jobs_by_id(self, job_ids: Sequence[str]) -> dict[str, JobRow]:
        """The jobs with these ids (those that exist), by job id."""
        rows = await self._select_in("job_id", job_ids)
        return {row.job_id: row for row in rows}

    async def _select_in(self, column: str, values: Sequence[Any]) -> list[JobRow]:
        def q(conn: sqlite3.Connection) -> list[JobRow]:
            return [job_from_db(r) for r in _rows_in(conn, f"{_SELECT_JOB} WHERE {column} IN ({{marks}})", values)]

        return await self._read(q)

    async def list_jobs(
        self,
        statuses: Sequence[str] | None,
        task: str | None,
        queue: str | None,
        limit: int,
        after: tuple[float, str] | None,
        owner: int | None = None,
        unowned_too: bool = False,
        since: float | None = None,
        newest_first: bool = False,
    ) -> list[JobRow]:
        """Jobs oldest first (``created_at``, then ``job_id``), strictly after ``after``
        (or newest first, strictly before it), created at ``since`` or later; only
        ``owner``'s when given (and the jobs without an owner, with ``unowned_too``)."""
        where, params = _filters(owner, unowned_too, statuses, task, queue)
        if after is not None:
            where.append("(created_at, job_id) < (?, ?)" if newest_first else "(created_at, job_id) > (?, ?)")
            params.extend(after)
        if since is not None:
            where.append("created_at >= ?")
            params.append(since)
        sql = _SELECT_JOB
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, job_id DESC LIMIT ?" if newest_first else " ORDER BY created_at, job_id LIMIT ?"
        params.append(limit)

        def q(conn: sqlite3.Connection) -> list[JobRow]:
            return [job_from_db(r) for r in conn.execute(sql, params)]

        return await self._read(q)

    async def read_logs(self, job_seq: int, since: int, limit: int) -> list[LogLine]:
        rows = await self._page("logs", "job_seq, seq, stream, line, time", job_seq, since, limit)
        return [LogLine(*r) for r in rows]

    async def read_outputs(self, job_seq: int, since: int, limit: int) -> list[OutputItem]:
        rows = await self._page("outputs", "job_seq, seq, value, time", job_seq, since, limit)
        return [OutputItem(j, s, _unpack(v), t) for j, s, v, t in rows]

    async def _page(self, table: str, columns: str, job_seq: int, since: int, limit: int) -> list[Any]:
        """A job's rows of ``logs`` or ``outputs`` from ``since`` on, in seq order."""
        sql = f"SELECT {columns} FROM {table} WHERE job_seq = ? AND seq >= ? ORDER BY seq LIMIT ?"

        def q(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(sql, (job_seq, since, limit)).fetchall()

        return await self._read(q)

    async def max_log_seq(self, job_seq: int) -> int:
        def q(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT max(seq) FROM logs WHERE job_seq = ?", (job_seq,)).fetchone()
            return int(row[0] or 0)

        return await self._read(q)

    async def max_seq(self) -> int:
        def q(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT coalesce(max(seq), 0) FROM jobs").fetchone()[0])

        return await self._read(q)

    async def counts(self) -> list[tuple[str, str, str, int | None, str, int]]:
        """(queue, status, mode, owner, task, count) over every job, for the in-memory counters."""

        def q(conn: sqlite3.Connection) -> list[tuple[str, str, str, int | None, str, int]]:
            return list(
                conn.execute("SELECT queue, status, mode, owner, task, count(*) FROM jobs GROUP BY 1, 2, 3, 4, 5")
            )

        return await self._read(q)

    async def deferred(self) -> list[tuple[int, float]]:
        """``(seq, run_at)`` of every scheduled and retrying job."""

        def q(conn: sqlite3.Connection) -> list[tuple[int, float]]:
            rows = conn.execute("SELECT seq, run_at FROM jobs WHERE status IN ('scheduled', 'retrying')")
            return [(seq, run_at or 0.0) for seq, run_at in rows]

        return await self._read(q)

    async def pending_counts(self) -> list[tuple[str, str, int]]:
        """``(queue, mode, count)`` of the pending jobs (from the ready index alone)."""

        def q(conn: sqlite3.Connection) -> list[tuple[str, str, int]]:
            return conn.execute(
                "SELECT queue, mode, count(*) FROM jobs INDEXED BY jobs_ready "
                "WHERE status = 'pending' GROUP BY queue, mode"
            ).fetchall()

        return await self._read(q)

    async def unkeyed_queues(self) -> list[str]:
        """Queues with pending jobs whose scheduler key is not stored (older rows)."""

        def q(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT DISTINCT queue FROM jobs INDEXED BY jobs_ready "
                "WHERE status = 'pending' AND sched_key IS NULL"
            )
            return [r[0] for r in rows]

        return await self._read(q)

    async def read_page(self, queue: str, mode: str, after: tuple[float, int], limit: int) -> list[JobRow]:
        """Up to ``limit`` pending jobs of ``queue`` in ``mode`` past ``after`` in the
        scheduler's order (``(sched_key, seq)``), in that order."""

        def q(conn: sqlite3.Connection) -> list[JobRow]:
            rows = conn.execute(
                f"{_SELECT_JOB} INDEXED BY jobs_ready WHERE status = 'pending' AND queue = ? AND mode = ? "
                "AND (sched_key, seq) > (?, ?) ORDER BY sched_key, seq LIMIT ?",
                (queue, mode, after[0], after[1], limit),
            )
            return [job_from_db(r) for r in rows]

        return await self._read(q)

    async def jobs_with_status(self, status: str) -> list[JobRow]:
        def q(conn: sqlite3.Connection) -> list[JobRow]:
            return [job_from_db(r) for r in conn.execute(f"{_SELECT_JOB} WHERE status = ?", (status,))]

        return await self._read(q)

    async def queue_settings(self) -> list[QueueSettings]:
        def q(conn: sqlite3.Connection) -> list[QueueSettings]:
            rows = conn.execute("SELECT name, paused, weight, max_concurrency, aging FROM queues")
            return [QueueSettings(n, bool(p), w, m, a) for n, p, w, m, a in rows]

        return await self._read(q)

    async def load_schedules(self) -> list[Any]:
        def q(conn: sqlite3.Connection) -> list[Any]:
            rows = conn.execute(
                "SELECT name, cron, every, job, next_run, created_at, last_run, last_job_id, owner FROM schedules"
            )
            return [Schedule(n, c, e, _unpack(j), nr, ca, lr, lj, o) for n, c, e, j, nr, ca, lr, lj, o in rows]

        return await self._read(q)

    async def cache_index(self) -> list[tuple[bytes, str, int | None, str, int, float | None]]:
        """``(key, task, owner, job_id, size, expires_at)`` of every cache entry, least
        recently used first (the results themselves stay on disk)."""

        def q(conn: sqlite3.Connection) -> list[tuple[bytes, str, int | None, str, int, float | None]]:
            rows = conn.execute(
                "SELECT key, task, owner, job_id, length(result), expires_at FROM cache ORDER BY used_at, rowid"
            )
            return rows.fetchall()

        return await self._read(q)

    async def cache_results(self, keys: Sequence[bytes]) -> dict[bytes, tuple[Any, str]]:
        """The stored ``(result, job_id)`` of those of ``keys`` that have an entry."""

        def q(conn: sqlite3.Connection) -> dict[bytes, tuple[Any, str]]:
            out: dict[bytes, tuple[Any, str]] = {}
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                marks = ",".join("?" * len(chunk))
                for key, blob, job_id in conn.execute(f"SELECT key, result, job_id FROM cache WHERE key IN ({marks})", chunk):
                    out[key] = (_unpack(blob), job_id)
            return out

        return await self._read(q)

    async def settings(self) -> dict[str, Any]:
        def q(conn: sqlite3.Connection) -> dict[str, Any]:
            return {k: _unpack(v) for k, v in conn.execute("SELECT key, value FROM settings")}

        return await self._read(q)

    # -- retention and backup ------------------------------------------------------------
    async def finished_page(
        self,
        after: tuple[float, int],
        limit: int,
        before: float | None = None,
        statuses: Sequence[str] | None = None,
        queue: str | None = None,
        owner: int | None = None,
        unowned_too: bool = False,
    ) -> list[Finished]:
        """Up to ``limit`` finished jobs past ``after`` (``(finished_at, seq)``) in the order
        they ended, oldest first; only those that ended before ``before``, have one of
        ``statuses``, are in ``queue`` or are ``owner``'s, when given."""
        where, params = _filters(owner, unowned_too, statuses, None, queue)
        where += [f"status IN {TERMINAL_SQL}", "(finished_at, seq) > (?, ?)"]
        params += [after[0], after[1]]
        if before is not None:
            where.append("finished_at < ?")
            params.append(before)
        sql = (
            "SELECT seq, job_id, queue, status, owner, finished_at FROM jobs INDEXED BY jobs_finished "
            f"WHERE {' AND '.join(where)} ORDER BY finished_at, seq LIMIT ?"
        )
        params.append(limit)

        def q(conn: sqlite3.Connection) -> list[Finished]:
            return [Finished(*r) for r in conn.execute(sql, params)]

        return await self._read(q)

    async def finished_now(self, seqs: Sequence[int]) -> list[Finished]:
        """Those of these jobs that are finished now (a light read: no job record)."""

        sql = (
            "SELECT seq, job_id, queue, status, owner, finished_at FROM jobs "
            f"WHERE seq IN ({{marks}}) AND status IN {TERMINAL_SQL}"
        )

        def q(conn: sqlite3.Connection) -> list[Finished]:
            return [Finished(*r) for r in _rows_in(conn, sql, seqs)]

        return await self._read(q)

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


@dataclass(frozen=True, slots=True)
class Finished:
    """A finished job as retention sees it."""

    seq: int
    job_id: str
    queue: str
    status: str
    owner: int | None
    finished_at: float
