"""New job rows on a real SQLite file: ``Store.write(new_jobs=...)``.

New rows are plain inserts; one that has not started or ended leaves its unset columns
out of the statement. Whatever the statement, a row reads back as it was written, a
batch stays all-or-nothing, and a change of a new row committed with it wins.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from protocol.errors import StorageError
from pyrexisd.core.model import JobRow
from pyrexisd.store import Store


def new_row(seq: int, job_id: str, **fields: object) -> JobRow:
    values: dict[str, object] = {
        "seq": seq, "job_id": job_id, "task": "echo", "args": {"value": seq}, "queue": "q", "priority": 2,
        "mode": "thread", "status": "pending", "created_at": 10.0, "max_retries": 1, "on_interrupt": "retry",
        "enqueued_at": 10.0, "owner": 1000,
    }  # fmt: skip
    values.update(fields)
    return JobRow(**values)  # type: ignore[arg-type]


async def test_new_rows_of_every_kind_read_back_as_written(tmp_path: Path) -> None:
    """Given new rows as a submit makes them — waiting (with labels, dependencies, a
    timeout, a run_at and a digest), started at once, answered from the cache — when they
    are written in one batch, then each reads back equal to what was written."""
    rows = [
        new_row(1, "waiting", depends_on=["x"], labels={"team": "ops"}, timeout=3.5, run_at=99.0,
                spec_digest=b"digest", sched_key=-2.0, status="blocked"),
        new_row(2, "plain", sched_key=-2.0),
        new_row(3, "started", status="running", attempts=1, started_at=11.0),
        new_row(4, "cached", status="completed", result={"n": [1, 2]}, finished_at=10.0, cached_from="plain"),
    ]  # fmt: skip
    async with Store(str(tmp_path / "d.db")) as store:
        await store.write(new_jobs=rows)
        got = await store.reads.get_jobs_by_id([row.job_id for row in rows])

    assert [got[row.job_id] for row in rows] == rows


async def test_a_batch_whose_new_row_reuses_a_job_id_stores_none_of_it(tmp_path: Path) -> None:
    """Given a stored job, when a batch of new rows holds one with the same job id
    among fresh ones, then the batch fails with a storage error and none of its rows is
    stored; the job stored before is unchanged."""
    first = new_row(1, "taken")
    async with Store(str(tmp_path / "d.db")) as store:
        await store.write(new_jobs=[first])
        batch = [new_row(2, "fresh-a"), new_row(3, "taken", task="other"), new_row(4, "fresh-b")]
        with pytest.raises(StorageError):
            await store.write(new_jobs=batch)
        got = await store.reads.get_jobs_by_id(["taken", "fresh-a", "fresh-b"])
        assert await store.reads.max_seq() == 1

    assert got == {"taken": first}


async def test_a_new_row_changed_before_its_commit_is_stored_changed(tmp_path: Path) -> None:
    """Given a new row written and, in the same group commit, written again changed (a
    change queued behind it), when the commit is over, then the stored row is the
    changed one."""
    async with Store(str(tmp_path / "d.db")) as store:
        row = new_row(1, "j")
        created = store.write(new_jobs=[row])
        row.status, row.attempts, row.started_at = "running", 1, 12.0
        changed = store.write(jobs=[row])
        await asyncio.gather(created, changed)
        assert store.group_commit.commits == 1  # both in one batch
        got = await store.reads.get_job("j")

    assert got == row
