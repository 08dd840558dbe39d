"""End to end: the execution modes (thread, process, async, shell), cancel, timeouts, results.

Every test talks to a real ``pyrexisd`` subprocess over its Unix socket. Waiting is
always polling with a deadline.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable

import pytest
from conftest import Daemon, RawClient
from e2e_helpers import (
    Stopwatch,
    job_logs,
    kill_quietly,
    pid_alive,
    read_pid,
    still_serving,
    wait_pid_gone,
    wait_status,
)

TASKS = ("--tasks", "sample_tasks", "--tasks", "mode_tasks")
KILL_GRACE = ("--kill-grace", "2")


def start(start_daemon: Callable[..., Daemon], *extra: str) -> tuple[Daemon, RawClient]:
    d = start_daemon(*TASKS, *KILL_GRACE, *extra)
    return d, d.client()


# == echo in every mode =================================================================
@pytest.mark.parametrize("mode", ["thread", "process", "async"])
def test_echo_in_each_mode(client: RawClient, mode: str) -> None:
    value = {"mode": mode, "list": [1, 2.5, "x", None, True], "bytes": b"\x00\xff"}
    job = client.submit("echo", {"value": value}, mode=mode)
    assert job["mode"] == mode
    done = client.wait(job["job_id"], timeout=30)
    assert done["status"] == "completed", done
    assert done["result"] == value
    assert done["mode"] == mode
    assert done["attempts"] == 1
    assert done["error"] is None


def test_a_long_thread_job_shortens_the_gil_switch_interval_while_it_runs(start_daemon: Callable[..., Daemon]) -> None:
    """Given thread jobs, when one computes longer than the executor's LONG_JOB, then it
    sees the GIL switch at 1 ms (so the loop and the store's writer get the GIL back
    soon), while a job that ends at once, before and after it, sees Python's usual 5 ms."""
    _, client = start(start_daemon)
    before = client.wait(client.submit("modes.switch_interval", {})["job_id"], timeout=30)
    long = client.wait(client.submit("modes.switch_interval", {"compute": 0.2})["job_id"], timeout=30)
    after = client.wait(client.submit("modes.switch_interval", {})["job_id"], timeout=30)
    assert [r["status"] for r in (before, long, after)] == ["completed"] * 3
    assert (before["result"], long["result"], after["result"]) == (0.005, 0.001, 0.005)


# == cancel of a running job, per mode ===================================================
def test_cancel_async_sleep(client: RawClient) -> None:
    job = client.submit("sleep", {"seconds": 30})
    assert job["mode"] == "async"
    wait_status(client, job["job_id"], "running")
    watch = Stopwatch()
    cancelled = client.request("cancel", {"job_id": job["job_id"]})
    assert cancelled["status"] == "cancelled"
    assert cancelled["error"]["type"] == "cancelled"
    assert cancelled["error"]["retryable"] is False
    done = client.wait(job["job_id"], timeout=5)
    assert watch.elapsed < 5
    assert done["status"] == "cancelled"
    assert done["error"]["type"] == "cancelled"
    assert done["finished_at"] is not None
    # It stays cancelled: the attempt's late end does not overwrite the record.
    again = client.get(job["job_id"])
    assert again["status"] == "cancelled" and again["error"]["type"] == "cancelled"
    still_serving(client)


def test_cancel_thread_spin_frees_the_slot(start_daemon: Callable[..., Daemon]) -> None:
    d, c = start(start_daemon, "--threads", "1")
    with c:
        job = c.submit("t.spin", {"seconds": 30})
        assert job["mode"] == "thread"
        wait_status(c, job["job_id"], "running")
        watch = Stopwatch()
        cancelled = c.request("cancel", {"job_id": job["job_id"]})
        assert cancelled["status"] == "cancelled"
        assert cancelled["error"]["type"] == "cancelled"
        assert watch.elapsed < 2, "cancel of a thread job must answer at once"
        # The thread sees ctx.cancelled and returns: the only thread slot frees up.
        nxt = c.submit("echo", {"value": "after"}, mode="thread")
        done = c.wait(nxt["job_id"], timeout=10)
        assert done["status"] == "completed" and done["result"] == "after"
        assert watch.elapsed < 10
        # The late result ("stopped") is discarded.
        final = c.get(job["job_id"])
        assert final["status"] == "cancelled"
        assert final["result"] is None


def test_cancel_process_kills_the_worker(start_daemon: Callable[..., Daemon]) -> None:
    d, c = start(start_daemon, "--processes", "1")
    marker = os.path.join(d.workdir, "pid")
    worker = None
    with c:
        try:
            job = c.submit("t.pid", {"hold": 30, "marker": marker})
            assert job["mode"] == "process"
            worker = read_pid(marker)
            assert worker != d.pid
            wait_status(c, job["job_id"], "running")
            cancelled = c.request("cancel", {"job_id": job["job_id"]})
            assert cancelled["status"] == "cancelled"
            assert cancelled["error"]["type"] == "cancelled"
            # SIGTERM, then SIGKILL after --kill-grace 2: gone well within 8 s.
            wait_pid_gone(worker, 8, "the cancelled job's worker")
            # The only process slot is usable again.
            nxt = c.submit("t.pid", {"hold": 0})
            done = c.wait(nxt["job_id"], timeout=30)
            assert done["status"] == "completed", done
            assert done["result"] != worker
            assert c.get(job["job_id"])["status"] == "cancelled"
        finally:
            kill_quietly(worker)


def test_cancel_process_job_kills_what_its_task_spawned(start_daemon: Callable[..., Daemon]) -> None:
    """Given a process job whose task started a child process, when the job is cancelled,
    then the worker and the child are both gone (the worker leads a process group)."""
    d, c = start(start_daemon, "--processes", "1")
    marker = os.path.join(d.workdir, "child")
    child = None
    with c:
        try:
            job = c.submit("modes.spawner", {"marker": marker})
            child = read_pid(marker)
            wait_status(c, job["job_id"], "running")
            assert c.request("cancel", {"job_id": job["job_id"]})["status"] == "cancelled"
            wait_pid_gone(child, 10, "the child a cancelled process job spawned")
        finally:
            kill_quietly(child)


def test_cancel_shell_kills_the_command(start_daemon: Callable[..., Daemon]) -> None:
    d, c = start(start_daemon)
    marker = os.path.join(d.workdir, "pid")
    pid = None
    with c:
        try:
            job = c.submit("shell", {"cmd": f"echo $$ > {marker}; exec sleep 30"})
            assert job["mode"] == "shell"
            pid = read_pid(marker)
            wait_status(c, job["job_id"], "running")
            cancelled = c.request("cancel", {"job_id": job["job_id"]})
            assert cancelled["status"] == "cancelled"
            assert cancelled["error"]["type"] == "cancelled"
            wait_pid_gone(pid, 8, "the cancelled shell command")
            done = c.wait(job["job_id"], timeout=5)
            assert done["status"] == "cancelled"
            still_serving(c)
        finally:
            kill_quietly(pid)


def test_cancel_shell_kills_background_grandchild(start_daemon: Callable[..., Daemon]) -> None:
    d, c = start(start_daemon)
    shell_marker = os.path.join(d.workdir, "sh.pid")
    child_marker = os.path.join(d.workdir, "child.pid")
    pids: list[int] = []
    with c:
        try:
            cmd = f"echo $$ > {shell_marker}; sleep 300 & echo $! > {child_marker}; wait"
            job = c.submit("shell", {"cmd": cmd})
            pids.append(read_pid(shell_marker))
            pids.append(read_pid(child_marker))
            assert pid_alive(pids[1])
            wait_status(c, job["job_id"], "running")
            cancelled = c.request("cancel", {"job_id": job["job_id"]})
            assert cancelled["status"] == "cancelled"
            wait_pid_gone(pids[1], 8, "the background grandchild")
            wait_pid_gone(pids[0], 8, "the shell")
            assert c.get(job["job_id"])["status"] == "cancelled"
        finally:
            for p in pids:
                kill_quietly(p)


# == a process worker dying ===============================================================
def test_sigkilled_worker_fails_only_its_job(start_daemon: Callable[..., Daemon]) -> None:
    d, c = start(start_daemon, "--processes", "2")
    victim_marker = os.path.join(d.workdir, "victim")
    other_marker = os.path.join(d.workdir, "other")
    victim = other = None
    with c:
        try:
            a = c.submit("t.pid", {"hold": 30, "marker": victim_marker}, max_retries=0)
            b = c.submit("t.pid", {"hold": 3, "marker": other_marker}, max_retries=0)
            victim = read_pid(victim_marker)
            other = read_pid(other_marker)
            assert victim != other
            os.kill(victim, signal.SIGKILL)
            failed = c.wait(a["job_id"], timeout=15)
            assert failed["status"] == "failed", failed
            assert failed["error"]["type"] == "worker_died"
            assert failed["error"]["message"]
            # The other worker's job, running at the same time, is unharmed.
            ok = c.wait(b["job_id"], timeout=20)
            assert ok["status"] == "completed", ok
            assert ok["result"] == other
            assert ok["attempts"] == 1
            # And the next process job runs fine.
            nxt = c.submit("t.pid", {"hold": 0})
            done = c.wait(nxt["job_id"], timeout=30)
            assert done["status"] == "completed", done
            assert done["result"] != victim
        finally:
            kill_quietly(victim)
            kill_quietly(other)


def test_sigkilled_worker_with_retries_left_is_retried(start_daemon: Callable[..., Daemon]) -> None:
    d, c = start(start_daemon, "--processes", "1")
    marker = os.path.join(d.workdir, "victim")
    victim = None
    with c:
        try:
            a = c.submit("t.pid", {"hold": 30, "marker": marker}, max_retries=1)
            victim = read_pid(marker)
            os.remove(marker)
            os.kill(victim, signal.SIGKILL)
            # the worker_died attempt is retryable: a second attempt starts in a new worker
            second = read_pid(marker, timeout=30)
            assert second != victim
            rec = wait_status(c, a["job_id"], "running", 10)
            assert rec["attempts"] == 2
            c.request("cancel", {"job_id": a["job_id"]})
            wait_pid_gone(second, 8, "the retried worker")
        finally:
            kill_quietly(victim)


# == shell ================================================================================
def test_shell_logs_streams_and_seq(client: RawClient) -> None:
    cmd = "echo out1; echo err1 >&2; echo out2; echo err2 >&2; printf 'no newline'"
    job = client.submit("shell", {"cmd": cmd})
    done = client.wait(job["job_id"], timeout=15)
    assert done["status"] == "completed", done
    assert done["result"] == {"exit_code": 0}
    lines = job_logs(client, job["job_id"])
    seqs = [e["seq"] for e in lines]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    assert seqs[0] == 1
    by_stream: dict[str, list[str]] = {}
    for e in lines:
        assert e["job_id"] == job["job_id"]
        assert isinstance(e["time"], float)
        by_stream.setdefault(e["stream"], []).append(e["line"])
    assert by_stream.get("stdout") == ["out1", "out2", "no newline"], lines
    assert by_stream.get("stderr") == ["err1", "err2"], lines
    # since: only the later lines
    events, final = client.stream("logs", {"job_id": job["job_id"], "since": 3})
    assert final["ok"] and [e["seq"] for e in events] == seqs[2:]
    assert final["result"]["next"] == seqs[-1] + 1


def test_shell_nonzero_exit_fails_retryable(client: RawClient) -> None:
    job = client.submit("shell", {"cmd": "echo about to fail; exit 3"})
    done = client.wait(job["job_id"], timeout=15)
    assert done["status"] == "failed", done
    assert done["error"]["type"] == "exit_code"
    assert done["error"]["retryable"] is True
    assert "3" in done["error"]["message"]
    assert done["result"] is None
    assert [e["line"] for e in job_logs(client, job["job_id"]) if e["stream"] == "stdout"] == ["about to fail"]


def test_shell_nonzero_exit_is_retried(client: RawClient, workdir: str) -> None:
    counter = os.path.join(workdir, "count")
    # fails on the first attempt, succeeds on the second
    cmd = f'echo x >> {counter}; [ "$PYREXIS_ATTEMPT" = 2 ]'
    job = client.submit("shell", {"cmd": cmd}, max_retries=1)
    done = client.wait(job["job_id"], timeout=20)
    assert done["status"] == "completed", done
    assert done["attempts"] == 2
    with open(counter) as fh:
        assert fh.read().count("x") == 2


def test_shell_environment(client: RawClient) -> None:
    cmd = 'echo "id=$PYREXIS_JOB_ID"; echo "attempt=$PYREXIS_ATTEMPT"; test -n "$PYREXIS_OUTPUT" && echo has-output'
    job = client.submit("shell", {"cmd": cmd}, job_id="env-job-1")
    done = client.wait(job["job_id"], timeout=15)
    assert done["status"] == "completed", done
    out = [e["line"] for e in job_logs(client, job["job_id"]) if e["stream"] == "stdout"]
    assert out == ["id=env-job-1", "attempt=1", "has-output"]


def test_shell_output_file_becomes_result_output(client: RawClient) -> None:
    value = {"answer": 42, "items": ["a", "b"], "nested": {"ok": True}}
    cmd = f"printf '%s' '{json.dumps(value)}' > \"$PYREXIS_OUTPUT\""
    job = client.submit("shell", {"cmd": cmd})
    done = client.wait(job["job_id"], timeout=15)
    assert done["status"] == "completed", done
    assert done["result"] == {"exit_code": 0, "output": value}


def test_shell_cmd_list_runs_without_a_shell(client: RawClient) -> None:
    job = client.submit("shell", {"cmd": ["printf", "%s|%s\\n", "$HOME; echo hi", "*"]})
    done = client.wait(job["job_id"], timeout=15)
    assert done["status"] == "completed", done
    out = [e["line"] for e in job_logs(client, job["job_id"]) if e["stream"] == "stdout"]
    assert out == ["$HOME; echo hi|*"]


def test_shell_env_and_cwd(client: RawClient, workdir: str) -> None:
    sub = os.path.join(workdir, "cwd here")
    os.makedirs(sub)
    job = client.submit(
        "shell",
        {"cmd": 'pwd; echo "$PX_ONE/$PX_TWO"; echo "path-set=${PATH:+yes}"', "cwd": sub, "env": {"PX_ONE": "1", "PX_TWO": "two words"}},
    )
    done = client.wait(job["job_id"], timeout=15)
    assert done["status"] == "completed", done
    out = [e["line"] for e in job_logs(client, job["job_id"]) if e["stream"] == "stdout"]
    # env is laid over the daemon's environment: PATH is still there
    assert out == [os.path.realpath(sub), "1/two words", "path-set=yes"]


# == timeouts =============================================================================
def test_timeout_async_sleep(client: RawClient) -> None:
    watch = Stopwatch()
    job = client.submit("sleep", {"seconds": 30}, timeout=0.5)
    done = client.wait(job["job_id"], timeout=10)
    assert watch.elapsed < 10
    assert done["status"] == "failed", done
    assert done["error"]["type"] == "timeout"
    assert done["error"]["retryable"] is True
    assert done["attempts"] == 1
    still_serving(client)


def test_timeout_shell(start_daemon: Callable[..., Daemon]) -> None:
    d, c = start(start_daemon)
    marker = os.path.join(d.workdir, "pid")
    pid = None
    with c:
        try:
            watch = Stopwatch()
            job = c.submit("shell", {"cmd": f"echo $$ > {marker}; exec sleep 30"}, timeout=0.5)
            pid = read_pid(marker)
            done = c.wait(job["job_id"], timeout=10)
            assert watch.elapsed < 10
            assert done["status"] == "failed", done
            assert done["error"]["type"] == "timeout"
            assert done["error"]["retryable"] is True
            wait_pid_gone(pid, 8, "the timed-out shell command")
        finally:
            kill_quietly(pid)


# == results ==============================================================================
@pytest.mark.parametrize("task,mode", [("t.big", "thread"), ("modes.big", "process")])
def test_result_too_large(start_daemon: Callable[..., Daemon], task: str, mode: str) -> None:
    d, c = start(start_daemon, "--max-result", "2000")
    with c:
        small = c.submit(task, {"size": 100}, mode=mode)
        assert c.wait(small["job_id"], timeout=30)["status"] == "completed"
        job = c.submit(task, {"size": 10_000}, mode=mode, max_retries=2)
        done = c.wait(job["job_id"], timeout=30)
        assert done["status"] == "failed", done
        assert done["error"]["type"] == "result_too_large"
        assert done["error"]["message"]
        assert done["result"] is None
        # too large is not worth retrying: one attempt despite max_retries
        assert done["attempts"] == 1
        still_serving(c)
    assert d.proc is not None and d.proc.poll() is None


def test_unencodable_result_thread(start_daemon: Callable[..., Daemon]) -> None:
    d, c = start(start_daemon)
    with c:
        job = c.submit("t.unencodable", {})
        done = c.wait(job["job_id"], timeout=15)
        assert done["status"] == "failed", done
        assert done["error"]["type"] == "exception"
        message = done["error"]["message"]
        assert "result" in message.lower(), message
        still_serving(c)
    assert d.proc is not None and d.proc.poll() is None


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_unencodable_result_nested(start_daemon: Callable[..., Daemon], mode: str) -> None:
    d, c = start(start_daemon)
    with c:
        job = c.submit("modes.unencodable", {}, mode=mode)
        done = c.wait(job["job_id"], timeout=30)
        assert done["status"] == "failed", done
        assert done["error"]["type"] == "exception"
        assert done["error"]["message"]
        assert "object" in done["error"]["message"], done["error"]
        still_serving(c)
    assert d.proc is not None and d.proc.poll() is None
