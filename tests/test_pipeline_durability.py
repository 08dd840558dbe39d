"""Pipelines across kill -9 and graceful restarts, and memory with a million items."""

from __future__ import annotations

import json
import os
import resource
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgpack
from conftest import Daemon, wait_until
from e2e_helpers import rss_kib
from test_storage_faults import PipedDaemon

ARGS = ("--tasks", "pipeline_tasks", "--kill-grace", "2")


def committed_state(db: str, job_id: str) -> dict[str, Any]:
    """The pipeline state the daemon last committed (read from its database file)."""
    conn = sqlite3.connect(db)
    try:
        (blob,) = conn.execute("SELECT pipeline FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    finally:
        conn.close()
    assert blob is not None, "no checkpoint was committed"
    return msgpack.unpackb(blob, raw=False)  # type: ignore[no-any-return]


def finished_items(state: dict[str, Any]) -> set[int]:
    """The items a checkpoint counts as finished: read, and not in flight."""
    resume = state["resume"]
    in_flight = {i for start, end in resume["redo"] for i in range(start, end)}
    return set(range(resume["next"])) - in_flight


def lines_of(path: str) -> list[str]:
    try:
        with open(path) as fh:
            return fh.read().splitlines()
    except FileNotFoundError:
        return []


def slow_pipeline(workdir: str, count: int) -> tuple[dict[str, Any], str, str]:
    effects = os.path.join(workdir, "effects")
    out = os.path.join(workdir, "out.jsonl")
    spec = {
        "input": {"items": list(range(count))},
        "output": out,
        "stages": [
            {"task": "double", "concurrency": 2},
            # The side effect a resume must not repeat for a finished item.
            {"task": "record", "item": "x", "args": {"path": effects, "seconds": 0.03}, "concurrency": 2},
        ],
    }
    return spec, effects, out


def check_resumed(effects: str, out: str, count: int, finished: set[int], bound: int) -> None:
    seen = Counter(int(line) for line in lines_of(effects))
    assert set(seen) == {2 * i for i in range(count)}
    # Finished before the stop: never run again.
    assert all(seen[2 * i] == 1 for i in finished), {i: seen[2 * i] for i in finished if seen[2 * i] != 1}
    # At-least-once only for what was in flight: a handful, within the stages' bounds.
    assert sum(seen.values()) - count <= bound
    # The output file was cut back to the last checkpoint: every output exactly once.
    assert sorted(json.loads(line) for line in lines_of(out)) == sorted(2 * i for i in range(count))


def test_kill9_mid_pipeline_resumes_without_redoing_finished_items(start_daemon: Callable[..., Daemon], workdir: str) -> None:
    d = start_daemon(*ARGS)
    count = 120
    spec, effects, out = slow_pipeline(workdir, count)
    with d.client() as c:
        job = c.submit("pipeline", spec)
        job_id = job["job_id"]
        # A checkpoint has been committed (a record only shows committed state).
        wait_until(lambda: ((c.get(job_id)["pipeline"] or {}).get("items") or {}).get("done", 0) >= 15, 60, 0.02, "15 items done")
    d.kill9()
    state = committed_state(d.db, job_id)
    finished = finished_items(state)
    assert 15 <= len(finished) < count
    assert state["items"]["done"] == len(finished)
    d.restart()
    with d.client() as c:
        done = c.wait(job_id, timeout=90)
    assert done["status"] == "completed", done
    assert done["attempts"] == 2  # the lost attempt stays counted
    assert done["result"]["done"] == count and done["result"]["outputs"] == count
    # In flight at most: each stage's buffer and workers.
    check_resumed(effects, out, count, finished, bound=2 * (4 + 2))


def test_a_graceful_restart_checkpoints_at_once_and_resumes(start_daemon: Callable[..., Daemon], workdir: str) -> None:
    d = start_daemon(*ARGS, "--grace", "30")
    count = 120
    spec, effects, out = slow_pipeline(workdir, count)
    with d.client() as c:
        job_id = c.submit("pipeline", spec)["job_id"]
        wait_until(lambda: len(lines_of(effects)) >= 15, 60, 0.02, "15 side effects")
    stopping = time.monotonic()
    assert d.terminate() == 0
    # A pipeline does not hold the stop up for the grace period: it checkpoints and stops.
    assert time.monotonic() - stopping < 20
    state = committed_state(d.db, job_id)
    finished = finished_items(state)
    assert len(finished) >= 10
    d.restart()
    with d.client() as c:
        done = c.wait(job_id, timeout=90)
    assert done["status"] == "completed", done
    assert done["attempts"] == 2
    check_resumed(effects, out, count, finished, bound=2 * (4 + 2))


def test_memory_stays_flat_across_a_million_items(start_daemon: Callable[..., Daemon], workdir: str) -> None:
    count = 1_000_000
    source = os.path.join(workdir, "million.jsonl")
    target = os.path.join(workdir, "million-out.jsonl")
    with open(source, "w") as fh:
        fh.write("".join(f'{{"i":{i}}}\n' for i in range(count)))
    d = start_daemon(*ARGS)
    spec = {"input": {"path": source}, "output": target, "stages": [{"task": "pass_batch", "batch": 1000, "concurrency": 2}]}
    samples: list[tuple[int, int]] = []  # (items done, RSS KiB)
    with d.client() as c:
        job_id = c.submit("pipeline", spec)["job_id"]

        def finished() -> dict[str, Any] | None:
            record = c.get(job_id)
            done = ((record["pipeline"] or {}).get("items") or {}).get("done", 0)
            samples.append((done, rss_kib(d.pid)))
            return record if record["status"] in ("completed", "failed", "cancelled") else None

        record = wait_until(finished, 180, 0.1, "a million items through the pipeline")
    assert record["status"] == "completed", record
    assert record["result"] == {"items": count, "done": count, "errors": 0, "outputs": count, "output": target}
    with open(target, "rb") as fh:
        assert sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b"")) == count
    early = [rss for done, rss in samples if 0 < done <= 200_000]
    late = [rss for done, rss in samples if done > 200_000]
    assert early and late, samples
    # Holding anything per item would add well over 100 MiB by the millionth item.
    growth = max(late) - max(early)
    assert growth < 24 * 1024, f"RSS grew by {growth} KiB after the first 200,000 items: {samples}"


def test_a_full_disk_holds_a_pipeline_back_and_loses_no_output(workdir: str) -> None:
    d = PipedDaemon(workdir, (*ARGS, "--log-level", "INFO")).start()
    count = 300
    spec = {"input": {"items": list(range(count))}, "stages": [{"task": "padded", "args": {"size": 2000}}]}
    try:
        with d.client() as c:
            job_id = c.submit("pipeline", spec)["job_id"]
            sizes = [os.path.getsize(d.db + suffix) for suffix in ("", "-wal") if os.path.exists(d.db + suffix)]
            _soft, hard = resource.prlimit(d.pid, resource.RLIMIT_FSIZE)
            resource.prlimit(d.pid, resource.RLIMIT_FSIZE, (max(sizes) + 32 * 1024, hard))
            try:
                wait_until(lambda: "not stored" in d.log(), 60, 0.05, "a checkpoint to fail on the full disk")
                stuck = c.get(job_id)
                assert stuck["status"] == "running"
            finally:
                resource.prlimit(d.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, hard))
            done = c.wait(job_id, timeout=90)
            assert done["status"] == "completed", done
            events, final = c.stream("outputs", {"job_id": job_id})
            assert final["ok"]
            # Nothing lost, nothing twice, no gap in the seqs.
            assert [e["seq"] for e in events] == list(range(1, count + 1))
            assert sorted(e["value"]["x"] for e in events) == list(range(count))
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(10)
