"""Retention: finished jobs are pruned in the background (--keep-max, --keep-finished),
`clean` removes them on demand, the file gives the space back, and nobody waiting on a
job is told it does not exist because of a prune. Real daemons, real SQLite files."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

from conftest import Daemon, RawClient, expect_error, wait_until

from protocol.errors import WireError
from pyrexisd.store import Store


def count_rows(db: str, table: str = "jobs") -> int:
    with closing(sqlite3.connect(db, timeout=30)) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def finished_kept(client: RawClient) -> int:
    return int(client.request("stats")["retention"]["finished"])


def db_bytes(db: str) -> int:
    return sum(os.path.getsize(db + s) for s in ("", "-wal") if os.path.exists(db + s))


def test_keep_max_prunes_the_oldest_finished_jobs_with_their_logs(start_daemon: Callable[..., Daemon]) -> None:
    """Given --keep-max 5, when 20 jobs that log a line each finish, then only the 5 that
    ended last are kept: the others answer not_found, and their log lines are gone too."""
    d = start_daemon("--tasks", "sample_tasks", "--keep-max", "5")
    with d.client() as c:
        ids = []
        for i in range(20):
            job = c.submit("shell", {"cmd": f"echo line-{i}"})
            c.wait(job["job_id"])
            ids.append(job["job_id"])
        wait_until(lambda: finished_kept(c) <= 5, 60, 0.05, "pruning down to 5 finished jobs")
        for job_id in ids[:15]:
            expect_error("not_found", lambda j=job_id: c.get(j))
        for job_id in ids[15:]:
            assert c.get(job_id)["status"] == "completed"
        assert c.request("stats")["retention"]["pruned"] == 15
    assert count_rows(d.db) == 5
    with closing(sqlite3.connect(d.db)) as conn:
        orphans = conn.execute("SELECT count(*) FROM logs WHERE job_seq NOT IN (SELECT seq FROM jobs)").fetchone()[0]
    assert orphans == 0


def test_keep_finished_prunes_by_age_and_a_job_a_waiting_job_depends_on_is_kept(
    start_daemon: Callable[..., Daemon],
) -> None:
    """Given --keep-finished 1s, when jobs end, then they are pruned about a second later,
    except one that a blocked job still depends on (its dependent's fate needs it): that
    one stays until the dependent has run, then goes too."""
    d = start_daemon("--keep-finished", "1s")
    with d.client() as c:
        done = c.submit("echo", {"value": "dep"})
        c.wait(done["job_id"])
        gate = c.submit("echo", {"value": "gate"}, delay=4.0)
        dependent = c.submit("echo", {"value": "child"}, depends_on=[done["job_id"], gate["job_id"]])
        plain = c.submit("echo", {"value": "plain"})
        c.wait(plain["job_id"])
        assert c.get(dependent["job_id"])["status"] == "blocked"

        def plain_gone() -> bool:
            try:
                c.get(plain["job_id"])
            except WireError as exc:
                return exc.code == "not_found"
            return False

        wait_until(plain_gone, 30, 0.1, "the plain job to be pruned after 1 s")
        if c.get(dependent["job_id"])["status"] == "blocked":
            assert c.get(done["job_id"])["status"] == "completed", "kept: a blocked job depends on it"
        assert c.wait(dependent["job_id"])["status"] == "completed"
        for job in (done, gate, dependent):
            wait_until(lambda j=job["job_id"]: _gone(c, j), 30, 0.1, f"{job['job_id']} to be pruned")


def _gone(c: RawClient, job_id: str) -> bool:
    try:
        c.get(job_id)
    except WireError as exc:
        return exc.code == "not_found"
    return False


def test_clean_removes_finished_jobs_by_status_queue_and_age_and_answers_how_many(
    start_daemon: Callable[..., Daemon],
) -> None:
    """Given finished jobs of two queues and statuses and a waiting one, when `clean` runs
    with filters, then exactly the matching finished jobs go and the count says so; a
    waiting job is never cleaned, and a non-terminal status is refused."""
    d = start_daemon("--tasks", "sample_tasks")
    with d.client() as c:
        ok_a = [c.submit("echo", {"value": i}, queue="a")["job_id"] for i in range(3)]
        bad_b = [c.submit("t.fail", {}, queue="b")["job_id"] for _ in range(2)]
        ok_b = c.submit("echo", {"value": 1}, queue="b")["job_id"]
        for job_id in [*ok_a, *bad_b, ok_b]:
            c.wait(job_id)
        later = c.submit("echo", {"value": 2}, queue="a", delay=3600)["job_id"]
        assert c.request("clean", {"older_than": 3600}) == {"removed": 0, "kept": 0}
        assert c.request("clean", {"status": "failed"})["removed"] == 2
        assert c.request("clean", {"queue": "a"})["removed"] == 3
        assert c.get(ok_b)["status"] == "completed"
        assert c.get(later)["status"] == "scheduled"
        assert c.request("clean", {})["removed"] == 1
        expect_error("invalid_state", lambda: c.request("clean", {"status": "pending"}))
        expect_error("invalid_request", lambda: c.request("clean", {"older_than": -1}))
        assert c.get(later)["status"] == "scheduled"


def test_cli_clean_older_than_and_json(start_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    """`pyrexisctl clean --older-than 1h` keeps a fresh job; `clean --json` answers the count."""
    import subprocess
    import sys

    d = start_daemon()
    with d.client() as c:
        c.wait(c.submit("echo", {"value": 1})["job_id"])
    cli = [sys.executable, "-m", "pyrexisctl", "--socket", d.socket]
    out = subprocess.run([*cli, "clean", "--older-than", "1h"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "removed 0 finished jobs", out
    out = subprocess.run([*cli, "clean", "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == '{"removed":1,"kept":0}', out
    out = subprocess.run([*cli, "clean", "--older-than", "soon"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "not a duration" in out.stderr


async def test_a_file_made_without_auto_vacuum_is_switched_once_and_keeps_its_data(tmp_path: Path) -> None:
    """Given a database made before retention (auto_vacuum NONE) holding a job, when the
    store opens it, then it is rewritten once with incremental auto-vacuum, the job is
    still there, and the next open does not rewrite it again."""
    path = str(tmp_path / "old.db")
    async with Store(path) as store:
        pass
    with closing(sqlite3.connect(path)) as conn:  # what an older daemon left: no auto-vacuum
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA auto_vacuum=NONE")
        conn.execute("VACUUM")
        conn.execute(
            "INSERT INTO jobs (seq, job_id, task, args, queue, priority, mode, status, created_at, max_retries, "
            "on_interrupt, dependency_policy, depends_on, labels, attempts, round_base, enqueued_at, log_seq, "
            "spec_digest) VALUES (1, 'old-1', 'echo', x'80', 'default', 0, 'thread', 'completed', 1.0, 0, "
            "'retry', 'all_completed', x'90', x'80', 1, 0, 1.0, 0, x'')"
        )
        conn.commit()
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    async with Store(path) as store:
        assert (await store.reads.get_job("old-1")) is not None
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL


def test_backup_while_running_is_a_consistent_copy_that_a_new_daemon_restores(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """Given a daemon with finished jobs and one still running, when `pyrexisctl backup
    FILE` runs, then FILE is a whole SQLite database (integrity ok, no WAL needed) with
    those jobs, and a daemon started on a copy of it serves them."""
    import subprocess
    import sys

    d = start_daemon("--tasks", "sample_tasks")
    with d.client() as c:
        ids = [c.submit("echo", {"value": i})["job_id"] for i in range(50)]
        for job_id in ids:
            c.wait(job_id)
        running = c.submit("sleep", {"seconds": 30})["job_id"]
        target = str(tmp_path / "copy.db")
        cli = [sys.executable, "-m", "pyrexisctl", "--socket", d.socket]
        out = subprocess.run([*cli, "backup", target, "--json"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out
        assert not os.path.exists(target + ".part")
        assert c.get(running)["status"] == "running", "the daemon went on meanwhile"
    with closing(sqlite3.connect(target)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT count(*) FROM jobs WHERE status = 'completed'").fetchone()[0] == 50
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert not [n for n in os.listdir(os.path.dirname(d.db)) if n.startswith(".backup-")], "the copy is removed"
    stale = tmp_path / ".backup-left-by-a-crash.db"
    stale.write_bytes(b"partial")
    restored = start_daemon(db=target, subdir="restored")
    assert not stale.exists(), "a copy a dead daemon left is removed at start"
    with restored.client() as c:
        assert c.get(ids[7])["result"] == 7
        # The job that was running when the copy was made follows its on_interrupt policy
        # (retry, for sleep): it runs again.
        assert c.get(running)["status"] in ("pending", "running")
        assert c.request("cancel", {"job_id": running})["status"] == "cancelled"


TOTAL = 200_000
BATCH = 10_000
KEEP = 10_000


def test_200000_jobs_with_keep_max_10000_stay_bounded_and_waiters_are_answered(
    start_daemon: Callable[..., Daemon],
) -> None:
    """Given a daemon with --keep-max 10000, when 200,000 async echo jobs go through it in
    batches of 10,000 while another client waits on jobs of each batch as soon as it is
    accepted, then every wait is answered with the job's record (never not_found), the
    jobs table never holds far more than 10,000 finished jobs plus a batch in flight, and
    the file (with its WAL) stays a few MB instead of growing with every job."""
    # Durability is not what this test is about: sync normal spares the shared disk
    # 20 fsyncs a second, and a slot per job of a batch lets each start as it is accepted.
    d = start_daemon("--keep-max", str(KEEP), "--log-level", "INFO", "--sync", "normal", "--async-slots", str(BATCH))
    answered: list[dict[str, Any]] = []
    failures: list[str] = []
    to_wait: list[list[str]] = []
    ready = threading.Condition()
    sent = threading.Event()

    def waiter() -> None:
        with RawClient(d.socket, timeout=120) as w:
            while True:
                with ready:
                    ready.wait_for(lambda: bool(to_wait))
                    ids = to_wait.pop(0)
                if not ids:
                    return
                rids = {w.send_request("wait", {"job_id": j, "timeout": 60}): j for j in ids}
                # Answered once every wait above is registered (requests start in order).
                hello = w.send_request("hello", {"protocol": 1})
                frames = []
                registered = False
                while len(frames) < len(rids) or not registered:
                    frame = w.recv()
                    if frame.get("id") == hello:
                        registered = True
                        sent.set()
                    else:
                        frames.append(frame)
                for frame in frames:
                    if frame.get("ok"):
                        answered.append(frame["result"])
                    else:
                        failures.append(f"{rids.get(frame.get('id'))}: {frame.get('error')}")

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    peak_rows = 0
    peak_bytes = 0
    peaks: list[tuple[int, int]] = []
    with RawClient(d.socket, timeout=120) as c:
        for b in range(TOTAL // BATCH):
            specs = [{"task": "echo", "args": {"value": b * BATCH + i}, "mode": "async"} for i in range(BATCH)]
            jobs = c.request("submit_many", {"jobs": specs})["jobs"]
            sent.clear()
            with ready:
                to_wait.append([job["job_id"] for job in jobs[:: BATCH // 50]])  # 50 of each batch
                ready.notify()
            assert sent.wait(60) or failures, "the waiter did not register its waits"
            peak_rows = max(peak_rows, count_rows(d.db))
            peak_bytes = max(peak_bytes, db_bytes(d.db))
            peaks.append((count_rows(d.db), db_bytes(d.db)))
        with ready:
            to_wait.append([])
            ready.notify()
        thread.join(120)
        wait_until(lambda: finished_kept(c) <= KEEP, 60, 0.1, "pruning down to --keep-max")
        stats = c.request("stats")
    # The figures docs/operations.md quotes (pytest -s shows them).
    print(f"peak rows {peak_rows}, peak bytes {peak_bytes}, final file {os.path.getsize(d.db)}, pruned {stats['retention']['pruned']}")
    assert not failures, failures[:5]
    assert len(answered) == TOTAL // BATCH * 50
    assert all(r["status"] == "completed" for r in answered)
    assert stats["retention"]["pruned"] >= TOTAL - KEEP
    assert count_rows(d.db) <= KEEP
    # At most the kept jobs, a batch being submitted and one being pruned (never 200,000).
    assert peak_rows <= KEEP + 3 * BATCH, (peak_rows, peaks)
    # ~300 bytes a job: 10,000 kept is ~3 MB; the WAL is cut back to 64 MB after a checkpoint.
    # Without retention 200,000 jobs make a file of ~60 MB and growing.
    assert peak_bytes < 100 * 1024 * 1024, peak_bytes
    assert os.path.getsize(d.db) < 40 * 1024 * 1024, os.path.getsize(d.db)
    assert d.terminate() == 0
