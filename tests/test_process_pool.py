"""End to end: the process pool's own failure modes, beyond those of test_modes.py and
test_faults.py — a worker killed in the middle of a frame, a worker sending frames that
are not ours, a worker that ignores SIGTERM, a worker that cannot load its tasks — and
the order of a process job's events and its end on the one socket.

Every test talks to a real ``pyrexisd`` subprocess over its Unix socket, with real
worker processes; waiting is always polling with a deadline.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import pytest
from conftest import Daemon, RawClient, wait_until
from e2e_helpers import (
    Stopwatch,
    job_logs,
    kill_quietly,
    read_pid,
    still_serving,
    wait_pid_gone,
    wait_status,
)

TASKS = ("--tasks", "sample_tasks", "--tasks", "fault_tasks", "--tasks", "pool_tasks")
KILL_GRACE = 1.0


def _start(start_daemon: Callable[..., Daemon], *extra: str) -> tuple[Daemon, RawClient]:
    d = start_daemon(*TASKS, "--kill-grace", str(KILL_GRACE), *extra)
    return d, d.client()


def _next_process_job_runs(c: RawClient, not_in: int) -> None:
    """The pool still works: a process job completes, in another worker than ``not_in``."""
    job = c.submit("t.pid", {"hold": 0}, mode="process")
    done = c.wait(job["job_id"], timeout=30)
    assert done["status"] == "completed", done
    assert done["result"] != not_in


def test_worker_killed_mid_result_frame_fails_only_its_attempt(start_daemon: Callable[..., Daemon]) -> None:
    """Given a worker that dies (SIGKILL) after writing half a frame, its attempt fails
    ``worker_died`` and the half frame is dropped with it; the next job gets a new worker."""
    d, c = _start(start_daemon, "--processes", "1")
    marker = os.path.join(d.workdir, "half")
    with c:
        job = c.submit("pool.half_frame", {"marker": marker}, max_retries=0)
        victim = read_pid(marker)
        done = c.wait(job["job_id"], timeout=30)
        assert done["status"] == "failed", done
        assert done["error"]["type"] == "worker_died", done
        assert "SIGKILL" in done["error"]["message"], done["error"]
        assert done["attempts"] == 1
        wait_pid_gone(victim, 10, "the worker killed mid-frame")
        _next_process_job_runs(c, victim)
        still_serving(c)


@pytest.mark.parametrize("how", ["not-msgpack", "not-an-array", "unknown-kind", "huge-length"])
def test_worker_sending_a_frame_that_is_not_ours_is_killed(start_daemon: Callable[..., Daemon], how: str) -> None:
    """Given a worker whose task writes a frame no worker of ours sends (bad msgpack, the
    wrong shape, an unknown kind, a length far above the limit), the daemon kills that
    worker, fails its attempt ``worker_died`` saying why, and replaces it; the daemon and
    the other worker are unharmed."""
    d, c = _start(start_daemon, "--processes", "2")
    marker = os.path.join(d.workdir, "garbage")
    other_marker = os.path.join(d.workdir, "other")
    victim = other = None
    with c:
        try:
            neighbour = c.submit("t.pid", {"hold": 2, "marker": other_marker}, max_retries=0)
            other = read_pid(other_marker)
            job = c.submit("pool.garbage", {"marker": marker, "how": how}, max_retries=0)
            victim = read_pid(marker)
            done = c.wait(job["job_id"], timeout=30)
            assert done["status"] == "failed", done
            assert done["error"]["type"] == "worker_died", done
            assert "was killed" in done["error"]["message"], done["error"]
            wait_pid_gone(victim, 10, "the worker that sent a bad frame")
            ok = c.wait(neighbour["job_id"], timeout=30)
            assert ok["status"] == "completed" and ok["result"] == other, ok
            _next_process_job_runs(c, victim)
            still_serving(c)
        finally:
            kill_quietly(victim)
            kill_quietly(other)
    assert "broke the channel" in d.log()


def test_worker_ignoring_sigterm_is_killed_after_the_grace_period(start_daemon: Callable[..., Daemon]) -> None:
    """Given a process job whose task ignores SIGTERM, a cancel answers at once; the worker
    gets SIGKILL once the kill grace period has passed, and only then is its slot reused."""
    grace = 3.0  # longer than a cancel's answer takes even on a loaded machine
    d = start_daemon(*TASKS, "--kill-grace", str(grace), "--processes", "1")
    c = d.client()
    marker = os.path.join(d.workdir, "deaf")
    victim = None
    with c:
        try:
            job = c.submit("pool.deaf", {"marker": marker})
            victim = read_pid(marker)
            wait_status(c, job["job_id"], "running")
            nxt = c.submit("t.pid", {"hold": 0})  # waits for the only process slot
            watch = Stopwatch()
            cancelled = c.request("cancel", {"job_id": job["job_id"]})
            assert cancelled["status"] == "cancelled"
            assert watch.elapsed < grace, "the cancel answers without waiting for the worker"
            wait_pid_gone(victim, 30, "the worker that ignored SIGTERM")
            done = c.wait(nxt["job_id"], timeout=30)
            assert done["status"] == "completed", done
            assert done["result"] != victim
            # The slot was not reused while the worker lived: not before the grace period.
            assert done["started_at"] - cancelled["finished_at"] >= grace * 0.9, (cancelled, done)
            final = c.get(job["job_id"])
            assert final["status"] == "cancelled" and final["result"] is None, final
        finally:
            kill_quietly(victim)


def test_timeout_of_a_worker_ignoring_sigterm(start_daemon: Callable[..., Daemon]) -> None:
    """The same for a timeout: the job fails ``timeout`` when the limit passes, the worker
    is killed after the grace period, and the pool runs the next job."""
    d, c = _start(start_daemon, "--processes", "1")
    marker = os.path.join(d.workdir, "deaf")
    victim = None
    with c:
        try:
            job = c.submit("pool.deaf", {"marker": marker}, timeout=0.5, max_retries=0)
            victim = read_pid(marker)
            done = c.wait(job["job_id"], timeout=30)
            assert done["status"] == "failed" and done["error"]["type"] == "timeout", done
            wait_pid_gone(victim, 30, "the timed-out worker that ignored SIGTERM")
            _next_process_job_runs(c, victim)
        finally:
            kill_quietly(victim)


def test_worker_that_cannot_load_its_tasks(start_daemon: Callable[..., Daemon]) -> None:
    """Given a task module that loads in the daemon but raises in a worker, a process job
    fails ``worker_died`` with the module's error, the daemon keeps serving (other modes
    run the task), and workers are not restarted in a loop."""
    d = start_daemon("--tasks", "pool_broken_tasks", "--processes", "2")
    with d.client() as c:
        job = c.submit("broken.anywhere", {"value": 1}, max_retries=0)
        done = c.wait(job["job_id"], timeout=30)
        assert done["status"] == "failed", done
        assert done["error"]["type"] == "worker_died", done
        assert "refuses to load in a worker" in done["error"]["message"], done["error"]
        threaded = c.submit("broken.anywhere", {"value": 2}, mode="thread")
        assert c.wait(threaded["job_id"], timeout=30)["result"] == 2
        still_serving(c)
        # Two workers at start, perhaps one more for the job: a loop of restarts would
        # have started dozens by now.
        wait_until(lambda: d.log().count("cannot load the task modules") >= 2, 30, 0.05, "the failures logged")
        assert d.log().count("cannot load the task modules") <= 3, d.log()


def test_process_job_events_are_stored_before_its_end(start_daemon: Callable[..., Daemon]) -> None:
    """Events and the end share one ordered socket: when a process job is seen completed,
    every line it logged is already there, without waiting."""
    d, c = _start(start_daemon, "--processes", "2")
    with c:
        jobs = [c.submit("fault.chatty", {"lines": 300, "width": 50}, mode="process") for _ in range(4)]
        for job in jobs:
            done = c.wait(job["job_id"], timeout=60)
            assert done["status"] == "completed" and done["result"] == 300, done
            lines = [e for e in job_logs(c, job["job_id"]) if e["stream"] == "log"]
            assert len(lines) == 300
            assert all(e["line"] == "z" * 50 for e in lines)


class _ScriptDaemon(Daemon):
    """A daemon run as users run it, through its console script (``python -m`` would put
    the working directory on the daemon's own path too)."""

    def command(self) -> list[str]:
        script = os.path.join(os.path.dirname(sys.executable), "pyrexisd")
        return [script, *super().command()[3:]]


def test_workers_do_not_import_modules_from_the_daemons_working_directory(workdir: str) -> None:
    """Given a module in the daemon's working directory named like a task module, the
    process workers still load the real one (the forkserver runs as ``python -c``, which
    would put that directory first on its import path)."""
    with open(os.path.join(workdir, "pool_tasks.py"), "w") as fh:
        fh.write(f"open({os.path.join(workdir, 'shadow-imported')!r}, 'w').close()\n")
    d = _ScriptDaemon(workdir, (*TASKS, "--processes", "1"))
    d.start()
    try:
        with d.client() as c:
            job = c.submit("pool.deaf", {"marker": os.path.join(workdir, "ran"), "seconds": 0})
            done = c.wait(job["job_id"], timeout=30)
            assert done["status"] == "completed" and done["result"] == "finished", done
        assert not os.path.exists(os.path.join(workdir, "shadow-imported"))
    finally:
        d.terminate()
