"""The disk's own ceiling, to read beside the benchmarks.

usage: .venv/bin/python docs/perf/disk_ceiling.py

fsync/s of a small write, then SQLite synchronous=FULL one-row transactions per second
through stdlib sqlite3 in the calling thread and through aiosqlite (as three calls, and
as one call on its thread, which is how the daemon's store commits).
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time

import aiosqlite
import uvloop

N = 2000
ROW = b"x" * 64
WORKDIR = tempfile.mkdtemp()


def rate(label: str, started: float) -> None:
    print(f"{label}: {N / (time.perf_counter() - started):,.0f}/s")


def fsyncs() -> None:
    fd = os.open(os.path.join(WORKDIR, "f"), os.O_WRONLY | os.O_CREAT)
    started = time.perf_counter()
    for _ in range(N):
        os.write(fd, ROW)
        os.fsync(fd)
    rate("fsync of a 64-byte write", started)
    os.close(fd)


def setup(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b BLOB)")


def one_commit(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN")
    conn.execute("INSERT INTO t (b) VALUES (?)", (ROW,))
    conn.execute("COMMIT")


def direct() -> None:
    conn = sqlite3.connect(os.path.join(WORKDIR, "a.db"), isolation_level=None)
    setup(conn)
    started = time.perf_counter()
    for _ in range(N):
        one_commit(conn)
    rate("sqlite3 FULL one-row commits", started)


async def through_aiosqlite() -> None:
    db = await aiosqlite.connect(os.path.join(WORKDIR, "b.db"), isolation_level=None)
    for pragma in ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL", "CREATE TABLE t (a INTEGER PRIMARY KEY, b BLOB)"):
        await db.execute(pragma)
    started = time.perf_counter()
    for _ in range(N):
        await db.execute("BEGIN")
        await db.execute("INSERT INTO t (b) VALUES (?)", (ROW,))
        await db.execute("COMMIT")
    rate("aiosqlite FULL one-row commits (three calls each)", started)
    started = time.perf_counter()
    for _ in range(N):
        # One call on aiosqlite's thread, as the store's group commit is made.
        await db._execute(one_commit, db._conn)  # noqa: SLF001
    rate("aiosqlite FULL one-row commits (one call each)", started)
    await db.close()


if __name__ == "__main__":
    fsyncs()
    direct()
    uvloop.run(through_aiosqlite())
