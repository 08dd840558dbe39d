"""End to end: crashes (kill -9), graceful stops (SIGTERM), restarts, refusals, the socket.

Every test runs a real ``pyrexisd`` on a real SQLite file and restarts it on the same
database. Waiting is always polling with a deadline.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable

from conftest import Daemon, RawClient
from e2e_helpers import (
    Stopwatch,
    kill_quietly,
    read_pid,
    still_serving,
    wait_status,
    wait_terminal,
)

TASKS = ("--tasks", "sample_tasks")


def _restart(d: Daemon) -> RawClient:
    d.restart()
    return d.client()


# == kill -9 ==============================================================================
def test_acknowledged_submits_survive_kill9(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(*TASKS)
    with d.client() as c:
        ids = [c.submit("echo", {"value": i}, mode="thread")["job_id"] for i in range(20)]
        ids.append(c.submit("echo", {"value": "last"}, job_id="my-own-id")["job_id"])
        d.kill9()  # right after the last acknowledgement
    with _restart(d) as c:
        for i, job_id in enumerate(ids):
            rec = c.get(job_id)  # the job is there
            assert rec["job_id"] == job_id
            done = wait_terminal(c, job_id, 15)
            assert done["status"] == "completed", done
            assert done["result"] == (i if job_id != "my-own-id" else "last")
        # the client's own id is still taken by that same job: an identical resubmit returns it
        again = c.submit("echo", {"value": "last"}, job_id="my-own-id")
        assert again["status"] == "completed"


def test_pending_and_scheduled_jobs_keep_their_place(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(*TASKS, "--threads", "1")
    with d.client() as c:
        c.request("pause", {"queue": "q"})
        first = c.submit("echo", {"value": "first"}, queue="q", mode="thread")
        second = c.submit("echo", {"value": "second"}, queue="q", mode="thread")
        later = c.submit("echo", {"value": "later"}, delay=3.0, mode="thread")
        assert first["status"] == second["status"] == "pending"
        assert later["status"] == "scheduled"
        run_at = later["run_at"]
        d.kill9()
    with _restart(d) as c:
        a, b, s = (c.get(j["job_id"]) for j in (first, second, later))
        assert a["status"] == "pending" and b["status"] == "pending", (a, b)
        assert a["attempts"] == b["attempts"] == 0
        assert s["run_at"] == run_at
        if time.time() < run_at - 0.2:
            assert s["status"] == "scheduled", s
        listed = c.request("list", {"queue": "q", "status": "pending"})["jobs"]
        assert [j["job_id"] for j in listed] == [first["job_id"], second["job_id"]]
        c.request("resume", {"queue": "q"})
        a = c.wait(first["job_id"], timeout=15)
        b = c.wait(second["job_id"], timeout=15)
        assert a["status"] == b["status"] == "completed"
        assert a["started_at"] <= b["started_at"], "the older pending job runs first"
        s = c.wait(later["job_id"], timeout=15)
        assert s["status"] == "completed" and s["result"] == "later"
        assert s["started_at"] >= run_at - 0.05, "a scheduled job does not run before run_at"
        assert s["attempts"] == 1


def test_running_async_job_is_retried_after_kill9(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(*TASKS)
    with d.client() as c:
        job = c.submit("sleep", {"seconds": 2}, queue="r")
        assert job["on_interrupt"] == "retry"
        wait_status(c, job["job_id"], "running")
        # Pausing does not touch the running job, but keeps it pending after the restart.
        c.request("pause", {"queue": "r"})
        d.kill9()
    with _restart(d) as c:
        rec = c.get(job["job_id"])
        assert rec["status"] == "pending", rec
        assert rec["attempts"] == 1, "the lost attempt stays counted"
        assert rec["error"] is None or rec["error"]["type"] == "interrupted"
        c.request("resume", {"queue": "r"})
        done = c.wait(job["job_id"], timeout=20)
        assert done["status"] == "completed", done
        assert done["attempts"] == 2


def test_running_async_job_is_retried_after_kill9_unpaused(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(*TASKS)
    with d.client() as c:
        job = c.submit("sleep", {"seconds": 1})
        wait_status(c, job["job_id"], "running")
        d.kill9()
    with _restart(d) as c:
        done = c.wait(job["job_id"], timeout=20)
        assert done["status"] == "completed", done
        assert done["attempts"] == 2


def test_running_shell_job_fails_interrupted_after_kill9(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(*TASKS)
    marker = os.path.join(d.workdir, "pid")
    pid = None
    try:
        with d.client() as c:
            job = c.submit("shell", {"cmd": f"echo $$ > {marker}; exec sleep 30"})
            assert job["on_interrupt"] == "fail"
            pid = read_pid(marker)
            wait_status(c, job["job_id"], "running")
            d.kill9()
        with _restart(d) as c:
            rec = wait_terminal(c, job["job_id"], 10)
            assert rec["status"] == "failed", rec
            assert rec["error"]["type"] == "interrupted"
            assert rec["error"]["retryable"] is False
            assert rec["attempts"] == 1
            still_serving(c)
    finally:
        kill_quietly(pid)  # the command's own session may outlive a kill -9 of the daemon


# == SIGTERM ==============================================================================
def test_sigterm_exits_0_and_removes_the_socket(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(*TASKS)
    assert os.path.exists(d.socket)
    assert d.terminate(20) == 0
    assert not os.path.exists(d.socket)


def test_sigterm_lets_a_short_job_finish(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(*TASKS)
    with d.client() as c:
        job = c.submit("sleep", {"seconds": 1})
        wait_status(c, job["job_id"], "running")
        watch = Stopwatch()
        assert d.terminate(20) == 0
        assert watch.elapsed < 8, "the daemon exits once the job is done, not after the full grace"
    assert not os.path.exists(d.socket)
    with _restart(d) as c:
        rec = c.get(job["job_id"])
        assert rec["status"] == "completed", rec
        assert rec["attempts"] == 1


def test_sigterm_with_short_grace_interrupts_the_job(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(*TASKS, "--grace", "0.2")
    with d.client() as c:
        job = c.submit("sleep", {"seconds": 30}, queue="g")
        wait_status(c, job["job_id"], "running")
        c.request("pause", {"queue": "g"})  # keeps it pending across the restart
        watch = Stopwatch()
        assert d.terminate(20) == 0
        assert watch.elapsed < 8
    assert not os.path.exists(d.socket)
    with _restart(d) as c:
        rec = c.get(job["job_id"])
        assert rec["status"] == "pending", rec
        assert rec["attempts"] == 1
        assert rec["on_interrupt"] == "retry"
        cancelled = c.request("cancel", {"job_id": job["job_id"]})
        assert cancelled["status"] == "cancelled"


# == refusals, stale socket, permissions ===================================================
def test_second_daemon_on_the_same_socket_refuses(start_daemon: Callable[..., Daemon], workdir: str) -> None:
    first = start_daemon(*TASKS)
    other_db = os.path.join(workdir, "other", "d.db")
    # the last --socket wins: the second daemon gets the first one's socket and its own db
    second = start_daemon(*TASKS, "--socket", first.socket, db=other_db, subdir="other", wait=False)
    assert second.proc is not None
    rc = second.proc.wait(30)
    assert rc != 0
    log = second.log()
    assert first.socket in log and ("another" in log or "already" in log), log
    with first.client() as c:
        still_serving(c)


def test_second_daemon_on_the_same_db_refuses(start_daemon: Callable[..., Daemon]) -> None:
    first = start_daemon(*TASKS)
    second = start_daemon(*TASKS, db=first.db, subdir="other", wait=False)
    assert second.proc is not None
    rc = second.proc.wait(30)
    assert rc != 0
    log = second.log()
    assert first.db in log and ("another" in log or "lock" in log), log
    assert not os.path.exists(second.socket)
    with first.client() as c:
        still_serving(c)


def test_stale_socket_is_replaced(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(*TASKS)
    d.kill9()
    assert stat.S_ISSOCK(os.lstat(d.socket).st_mode), "kill -9 leaves the socket file behind"
    with _restart(d) as c:
        still_serving(c)


def test_socket_is_owner_only(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(*TASKS)
    st = os.stat(d.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(stat.S_IMODE(st.st_mode))
    assert st.st_uid == os.getuid()
    # and again after a restart over a stale socket
    d.kill9()
    d.restart()
    assert stat.S_IMODE(os.stat(d.socket).st_mode) == 0o600
