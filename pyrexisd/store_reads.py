"""The store's reads: every query of the database, on a connection of their own.

The reader is a second aiosqlite connection to the store's WAL database, opened
``query_only``: WAL shows it committed data only, so a client never reads a state that
is not durable (a read between BEGIN and COMMIT on the writer would). Each query is one
function run on the reader's thread in one hop (:func:`in_thread`), however many
statements it takes, and hands back the store's records (:class:`JobRow`, ...).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import aiosqlite
import msgpack

from protocol.errors import StorageError
from pyrexisd.core.model import JobRow, LogLine, OutputItem
from pyrexisd.store_schema import (
    ARGS_INDEX,
    BLOB_INDEXES,
    JOB_COLUMNS,
    TERMINAL_SQL,
    Finished,
    QueueSettings,
    Schedule,
)

T = TypeVar("T")

SELECT_JOB = f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs"


def unpack(blob: bytes | None) -> Any:
    """A stored blob's value (None stays None)."""
    if blob is None:
        return None
    return msgpack.unpackb(blob, raw=False, strict_map_key=False)


def job_from_db(values: Sequence[Any]) -> JobRow:
    """A job's row from its column values in :data:`JOB_COLUMNS` order."""
    out = list(values)
    for i in BLOB_INDEXES:
        out[i] = unpack(out[i])
    args_blob = out[ARGS_INDEX]
    out[ARGS_INDEX] = unpack(args_blob)
    row = JobRow(**dict(zip(JOB_COLUMNS, out, strict=True)))
    row.args_blob = args_blob
    return row


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


async def in_thread(
    conn: aiosqlite.Connection, fn: Callable[..., T], *args: Any
) -> T:
    """Run ``fn(sqlite3_connection, *args)`` on ``conn``'s thread in one hop."""
    raw = conn._conn  # noqa: SLF001 - aiosqlite's sqlite3 connection, used on its thread
    # aiosqlite leaves its private ``_execute`` unannotated: it returns ``fn``'s result.
    execute = cast("Callable[..., Awaitable[T]]", conn._execute)  # noqa: SLF001
    return await execute(fn, raw, *args)


class Reads:
    """Every query of the database, on the reader connection (committed data only)."""

    def __init__(self) -> None:
        self._conn: aiosqlite.Connection | None = None

    async def open(self, path: str) -> None:
        """Connect to the database at ``path`` (the writer has made and migrated it)."""
        self._conn = await aiosqlite.connect(path, isolation_level=None)
        await self._conn.execute("PRAGMA query_only=1")
        await self._conn.execute("PRAGMA busy_timeout=5000")

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
        self._conn = None

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        if self._conn is None:
            raise StorageError("the store is closed")
        try:
            return await in_thread(self._conn, fn, *args)
        except sqlite3.Error as exc:
            raise StorageError(f"could not read: {exc}") from exc

    async def get_job(self, job_id: str) -> JobRow | None:
        def q(conn: sqlite3.Connection) -> JobRow | None:
            row = conn.execute(f"{SELECT_JOB} WHERE job_id = ?", (job_id,)).fetchone()
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
            return [job_from_db(r) for r in _rows_in(conn, f"{SELECT_JOB} WHERE {column} IN ({{marks}})", values)]

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
        sql = SELECT_JOB
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
        return [OutputItem(j, s, unpack(v), t) for j, s, v, t in rows]

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
                f"{SELECT_JOB} INDEXED BY jobs_ready WHERE status = 'pending' AND queue = ? AND mode = ? "
                "AND (sched_key, seq) > (?, ?) ORDER BY sched_key, seq LIMIT ?",
                (queue, mode, after[0], after[1], limit),
            )
            return [job_from_db(r) for r in rows]

        return await self._read(q)

    async def jobs_with_status(self, status: str) -> list[JobRow]:
        def q(conn: sqlite3.Connection) -> list[JobRow]:
            return [job_from_db(r) for r in conn.execute(f"{SELECT_JOB} WHERE status = ?", (status,))]

        return await self._read(q)

    async def queue_settings(self) -> list[QueueSettings]:
        def q(conn: sqlite3.Connection) -> list[QueueSettings]:
            rows = conn.execute("SELECT name, paused, weight, max_concurrency, aging FROM queues")
            return [QueueSettings(n, bool(p), w, m, a) for n, p, w, m, a in rows]

        return await self._read(q)

    async def load_schedules(self) -> list[Schedule]:
        def q(conn: sqlite3.Connection) -> list[Schedule]:
            rows = conn.execute(
                "SELECT name, cron, every, job, next_run, created_at, last_run, last_job_id, owner FROM schedules"
            )
            return [Schedule(n, c, e, unpack(j), nr, ca, lr, lj, o) for n, c, e, j, nr, ca, lr, lj, o in rows]

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

        sql = "SELECT key, result, job_id FROM cache WHERE key IN ({marks})"

        def q(conn: sqlite3.Connection) -> dict[bytes, tuple[Any, str]]:
            return {key: (unpack(blob), job_id) for key, blob, job_id in _rows_in(conn, sql, keys)}

        return await self._read(q)

    async def settings(self) -> dict[str, Any]:
        def q(conn: sqlite3.Connection) -> dict[str, Any]:
            return {k: unpack(v) for k, v in conn.execute("SELECT key, value FROM settings")}

        return await self._read(q)

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
