"""Schema creation and migration: ``Store.open`` on real SQLite files.

A new file gets the latest schema in one transaction with one log line; a file at an
older version is migrated step by step and keeps its rows; both end with the same schema.
"""

from __future__ import annotations

import logging
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import msgpack
import pytest

from protocol.errors import StorageError
from pyrexisd import store as store_module
from pyrexisd.core.model import JobRow
from pyrexisd.store import MIGRATIONS, LogLine, QueueSettings, Store

LATEST = len(MIGRATIONS)

# A job as version 1 stored it: the columns later versions added are absent.
V1_JOB: dict[str, Any] = {
    "seq": 7, "job_id": "old-job", "task": "echo", "args": msgpack.packb({"value": 1}),
    "queue": "default", "priority": 3, "mode": "thread", "status": "completed",
    "created_at": 100.0, "max_retries": 0, "on_interrupt": "retry",
    "dependency_policy": "all_completed", "depends_on": msgpack.packb([]),
    "labels": msgpack.packb({"team": "ops"}), "timeout": None, "attempts": 1,
    "round_base": 0, "started_at": 101.0, "finished_at": 102.0, "run_at": None,
    "enqueued_at": 100.0, "result": msgpack.packb(42), "error": None, "progress": None,
    "log_seq": 1, "spec_digest": b"digest",
}  # fmt: skip


def store_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The store's lines about the schema (the one-time switch to incremental
    auto-vacuum of a file made without it is tested in test_retention.py)."""
    return [
        r.getMessage() for r in caplog.records
        if r.name == store_module.__name__ and "schema" in r.getMessage()
    ]


def user_version(path: Path) -> int:
    with closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


def schema(path: Path) -> dict[str, Any]:
    """Every object's SQL and every table's columns: what two paths must agree on."""
    with closing(sqlite3.connect(path)) as conn:
        objects = sorted(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"))
        tables = [name for kind, name, _, _ in objects if kind == "table"]
        columns = {t: conn.execute(f"PRAGMA table_info({t})").fetchall() for t in tables}
        return {"objects": objects, "columns": columns}


def make_version_1(path: Path) -> None:
    """A file as the first release left it: migration 1 only, with a job, a log line, a
    queue and a setting in it."""
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(MIGRATIONS[0])
        conn.execute("PRAGMA user_version = 1")
        names = ", ".join(V1_JOB)
        marks = ", ".join("?" * len(V1_JOB))
        conn.execute(f"INSERT INTO jobs ({names}) VALUES ({marks})", tuple(V1_JOB.values()))
        conn.execute("INSERT INTO logs VALUES (7, 1, 'stdout', 'hello', 101.5)")
        conn.execute("INSERT INTO queues VALUES ('slow', 1, 2.0, 3, 0.5)")
        conn.execute("INSERT INTO settings VALUES ('paused_by_default', ?)", (msgpack.packb(True),))
        conn.commit()


async def test_a_new_file_gets_the_latest_schema_in_one_step_with_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Given no database file, when the store opens it, then one line says the schema was
    created at the latest version, the file is at that version, and a job can be written
    and read back in every column of the latest schema."""
    caplog.set_level(logging.INFO, logger=store_module.__name__)
    path = tmp_path / "new.db"
    row = JobRow(
        seq=1, job_id="j1", task="echo", args={"value": 1}, queue="default", priority=0,
        mode="process", status="running", created_at=5.0, max_retries=0,
        on_interrupt="retry", output_seq=2, pid=4242, pid_start=99,
    )  # fmt: skip

    async with Store(str(path)) as store:
        await store.write(jobs=[row])
        got = await store.reads.get_job("j1")

    assert store_messages(caplog) == [f"created database schema version {LATEST}"]
    assert user_version(path) == LATEST
    assert got == row


async def test_an_empty_file_is_new_too(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Given an existing zero-byte file (touched by an installer, say), when the store
    opens it, then it is created in one step like a missing one."""
    caplog.set_level(logging.INFO, logger=store_module.__name__)
    path = tmp_path / "empty.db"
    path.touch()

    async with Store(str(path)):
        pass

    assert store_messages(caplog) == [f"created database schema version {LATEST}"]
    assert user_version(path) == LATEST


async def test_a_new_file_whose_creation_fails_is_left_empty_not_half_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a last migration that fails, when the store creates a new file, then opening
    fails and the file holds no table at version 0: the earlier migrations were in the
    same transaction and were undone with it."""
    caplog.set_level(logging.INFO, logger=store_module.__name__)
    broken = (*MIGRATIONS, "INSERT INTO no_such_table VALUES (1);")
    monkeypatch.setattr(store_module, "MIGRATIONS", broken)
    path = tmp_path / "broken.db"

    with pytest.raises(StorageError):
        async with Store(str(path)):
            pass

    assert user_version(path) == 0
    assert schema(path)["objects"] == []
    assert store_messages(caplog) == []


async def test_a_version_0_file_that_holds_tables_is_not_taken_for_a_new_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a file with no schema version but a table of its own, when the store opens
    it, then it is migrated step by step from version 0 (one line per version), not
    announced as created, and its table and row are kept."""
    caplog.set_level(logging.INFO, logger=store_module.__name__)
    path = tmp_path / "foreign.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("INSERT INTO notes VALUES ('keep me')")
        conn.commit()

    async with Store(str(path)):
        pass

    assert store_messages(caplog) == [
        f"database schema migrated to version {v}" for v in range(1, LATEST + 1)
    ]
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT body FROM notes").fetchall() == [("keep me",)]


async def test_a_version_1_file_migrates_step_by_step_and_keeps_its_rows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a file at version 1 holding a job, a log line, a queue and a setting, when the
    store opens it, then each later migration is applied and logged in turn, the file is
    at the latest version, and every row reads back, the new columns at their defaults."""
    caplog.set_level(logging.INFO, logger=store_module.__name__)
    path = tmp_path / "v1.db"
    make_version_1(path)

    async with Store(str(path)) as store:
        job = await store.reads.get_job("old-job")
        logs = await store.reads.read_logs(7, 0, 10)
        queues = await store.reads.queue_settings()
        settings = await store.reads.settings()

    assert store_messages(caplog) == [
        f"database schema migrated to version {v}" for v in range(2, LATEST + 1)
    ]
    assert user_version(path) == LATEST
    assert job is not None
    assert (job.seq, job.task, job.args, job.status, job.labels, job.result) == (
        7, "echo", {"value": 1}, "completed", {"team": "ops"}, 42,
    )  # fmt: skip
    assert (job.output_seq, job.pid, job.pid_start, job.cached_from) == (0, None, None, None)
    assert logs == [LogLine(7, 1, "stdout", "hello", 101.5)]
    assert queues == [QueueSettings("slow", True, 2.0, 3, 0.5)]
    assert settings == {"paused_by_default": True}


async def test_migrating_step_by_step_ends_with_the_same_schema_as_a_new_file(
    tmp_path: Path,
) -> None:
    """Given a file migrated from version 1 and a file created new, then both hold the
    same objects with the same SQL and every table has the same columns."""
    old, new = tmp_path / "old.db", tmp_path / "new.db"
    make_version_1(old)

    async with Store(str(old)):
        pass
    async with Store(str(new)):
        pass

    assert schema(old) == schema(new)
    assert schema(new)["objects"]  # not two empty files agreeing


async def test_a_file_at_the_latest_version_is_opened_without_changes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a file already at the latest version, when the store opens it again, then
    nothing is migrated or logged and the schema is unchanged."""
    caplog.set_level(logging.INFO, logger=store_module.__name__)
    path = tmp_path / "db"
    async with Store(str(path)):
        pass
    before = schema(path)
    caplog.clear()

    async with Store(str(path)):
        pass

    assert store_messages(caplog) == []
    assert schema(path) == before
    assert user_version(path) == LATEST
