"""End to end: shell jobs and the spawn helper that starts them.

A real ``pyrexisd`` subprocess; its spawn helper is found among its children. Waiting
is always polling with a deadline.
"""

from __future__ import annotations

import os
import signal
import stat
from collections.abc import Callable
from typing import Any

from conftest import Daemon, RawClient, wait_until
from e2e_helpers import (
    Stopwatch,
    job_logs,
    kill_quietly,
    pid_alive,
    read_pid,
    wait_pid_gone,
    wait_status,
)

KILL_GRACE = ("--kill-grace", "1")


def spawner_pid(daemon_pid: int) -> int | None:
    """The daemon's live spawn helper, if it has one."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                data = fh.read()
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except OSError:
            continue
        ppid = int(data[data.rfind(b")") + 2 :].split()[1])
        if ppid == daemon_pid and b"spawnd.py" in cmdline and pid_alive(int(entry)):
            return int(entry)
    return None


def kill_group_quietly(pgid: int | None) -> None:
    if pgid is None:
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def lines(c: RawClient, job_id: str) -> list[str]:
    return [e["line"] for e in job_logs(c, job_id) if e["stream"] in ("stdout", "stderr")]


def test_spawner_killed_mid_run_fails_running_jobs_and_the_next_ones_run(start_daemon: Callable[..., Daemon]) -> None:
    """Given shell jobs running, when the spawn helper is killed with SIGKILL, then each
    running job ends ``failed`` with ``worker_died`` (retryable: one with a retry left
    runs again and completes), its command is killed, and a new helper runs new jobs."""
    d = start_daemon(*KILL_GRACE, "--shell-slots", "4")
    markers = [os.path.join(d.workdir, f"m{i}") for i in range(3)]
    pids: list[int] = []
    with d.client() as c:
        try:
            plain = [c.submit("shell", {"cmd": f"echo $$ > {m}; exec sleep 60"}) for m in markers[:2]]
            again = c.submit(
                "shell",
                {"cmd": f'if [ "$PYREXIS_ATTEMPT" = 1 ]; then echo $$ > {markers[2]}; exec sleep 60; fi; echo second'},
                max_retries=1,
            )
            pids = [read_pid(m) for m in markers]
            for job in [*plain, again]:
                wait_status(c, job["job_id"], "running")
            old = wait_until(lambda: spawner_pid(d.pid), 10, 0.02, "the spawn helper")
            os.kill(old, signal.SIGKILL)
            for job in plain:
                rec = c.wait(job["job_id"], timeout=20)
                assert rec["status"] == "failed", rec
                assert rec["error"]["type"] == "worker_died" and rec["error"]["retryable"] is True
                assert "spawner died" in rec["error"]["message"]
            for pid in pids:
                wait_pid_gone(pid, 10, "a command of the killed spawner")
            rec = c.wait(again["job_id"], timeout=20)
            assert rec["status"] == "completed" and rec["attempts"] == 2, rec
            assert lines(c, again["job_id"]) == ["second"]
            nxt = c.submit("shell", {"cmd": "echo after"})
            rec = c.wait(nxt["job_id"], timeout=20)
            assert rec["status"] == "completed" and lines(c, nxt["job_id"]) == ["after"]
            new = spawner_pid(d.pid)
            assert new is not None and new != old
        finally:
            for pid in pids:
                kill_quietly(pid)


def test_a_command_that_cannot_start_fails_clearly(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(*KILL_GRACE)
    plain = os.path.join(d.workdir, "plain.sh")
    with open(plain, "w") as fh:
        fh.write("echo hi\n")
    with d.client() as c:
        cases: dict[str, tuple[dict[str, Any], str]] = {
            "pyrexis-no-such-program": (
                {"cmd": ["pyrexis-no-such-program", "x"]},
                "cannot start 'pyrexis-no-such-program': [Errno 2] No such file or directory: 'pyrexis-no-such-program'",
            ),
            "missing cwd": ({"cmd": "true", "cwd": "/nonexistent-pyrexis"}, "/nonexistent-pyrexis"),
            "not executable": ({"cmd": [plain]}, "Permission denied"),
        }
        for what, (args, expected) in cases.items():
            rec = c.wait(c.submit("shell", args, max_retries=3)["job_id"], timeout=20)
            assert rec["status"] == "failed" and rec["attempts"] == 1, (what, rec)
            assert rec["error"]["type"] == "exception" and rec["error"]["retryable"] is False, (what, rec)
            assert expected in rec["error"]["message"], (what, rec["error"])
        rec = c.wait(c.submit("shell", {"cmd": "echo still fine"})["job_id"], timeout=20)
        assert rec["status"] == "completed"


def test_a_program_is_found_in_the_jobs_own_path(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(*KILL_GRACE)
    bindir = os.path.join(d.workdir, "bin")
    os.mkdir(bindir)
    script = os.path.join(bindir, "pyrexis-hello")
    with open(script, "w") as fh:
        fh.write("#!/bin/sh\necho hello\n")
    os.chmod(script, 0o755)
    with d.client() as c:
        rec = c.wait(c.submit("shell", {"cmd": ["pyrexis-hello"], "env": {"PATH": bindir}})["job_id"], timeout=20)
        assert rec["status"] == "completed", rec
        assert lines(c, rec["job_id"]) == ["hello"]


def test_a_grandchild_holding_the_pipe_delays_the_end_by_the_drain_time_only(start_daemon: Callable[..., Daemon]) -> None:
    """The command exits while a background child keeps its stdout open: the output is
    read for DRAIN_AFTER_EXIT (1 s) more, then the job completes with what was read; the
    background child is not the job's to kill once the command succeeded."""
    d = start_daemon(*KILL_GRACE)
    marker = os.path.join(d.workdir, "pg")
    pgid = None
    with d.client() as c:
        try:
            watch = Stopwatch()
            cmd = f"echo $$ > {marker}; echo before; (sleep 0.2; echo soon; sleep 30; echo late) & echo after"
            job = c.submit("shell", {"cmd": cmd})
            pgid = read_pid(marker)
            rec = c.wait(job["job_id"], timeout=20)
            assert rec["status"] == "completed" and rec["result"] == {"exit_code": 0}, rec
            assert 0.9 <= watch.elapsed < 10
            assert lines(c, job["job_id"]) == ["before", "after", "soon"]
        finally:
            kill_group_quietly(pgid)


def test_timeout_kills_the_whole_group(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(*KILL_GRACE)
    shell_marker = os.path.join(d.workdir, "sh.pid")
    child_marker = os.path.join(d.workdir, "child.pid")
    pids: list[int] = []
    with d.client() as c:
        try:
            cmd = f"echo $$ > {shell_marker}; sleep 300 & echo $! > {child_marker}; wait"
            job = c.submit("shell", {"cmd": cmd}, timeout=1.0)
            pids = [read_pid(shell_marker), read_pid(child_marker)]
            rec = c.wait(job["job_id"], timeout=20)
            assert rec["status"] == "failed" and rec["error"]["type"] == "timeout", rec
            for pid in pids:
                wait_pid_gone(pid, 10, "a process of the timed-out job")
        finally:
            for pid in pids:
                kill_quietly(pid)


def test_a_command_ignoring_sigterm_is_killed_after_the_grace(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(*KILL_GRACE)
    marker = os.path.join(d.workdir, "pid")
    pid = None
    with d.client() as c:
        try:
            job = c.submit("shell", {"cmd": f"trap '' TERM; echo $$ > {marker}; while :; do sleep 0.05; done"})
            pid = read_pid(marker)
            wait_status(c, job["job_id"], "running")
            watch = Stopwatch()
            assert c.request("cancel", {"job_id": job["job_id"]})["status"] == "cancelled"
            wait_pid_gone(pid, 10, "the command ignoring SIGTERM")
            assert watch.elapsed >= 0.9  # it took the SIGKILL after --kill-grace 1
        finally:
            kill_quietly(pid)


def test_100_concurrent_commands_all_end_with_their_own_status_and_output(
    start_daemon: Callable[..., Daemon], workdir: str
) -> None:
    scratch = os.path.join(workdir, "scratch")  # where the output files go
    os.mkdir(scratch)
    d = start_daemon(*KILL_GRACE, "--shell-slots", "100", env={"TMPDIR": scratch})
    specs = []
    for i in range(100):
        if i % 5 == 0:
            cmd = f"echo fail-{i} >&2; exit {i % 7 + 1}"
        else:
            cmd = f"echo line-{i}; printf '{{\"i\": {i}}}' > \"$PYREXIS_OUTPUT\""
        specs.append({"task": "shell", "args": {"cmd": cmd}})
    with d.client() as c:
        jobs = c.request("submit_many", {"jobs": specs})["jobs"]
        assert sum(j["status"] == "running" for j in jobs) == 100
        for i, job in enumerate(jobs):
            rec = c.wait(job["job_id"], timeout=60)
            if i % 5 == 0:
                assert rec["status"] == "failed" and rec["error"]["type"] == "exit_code", rec
                assert rec["error"]["message"] == f"command exited with code {i % 7 + 1}"
                assert lines(c, job["job_id"]) == [f"fail-{i}"]
            else:
                assert rec["status"] == "completed", rec
                assert rec["result"] == {"exit_code": 0, "output": {"i": i}}
                assert lines(c, job["job_id"]) == [f"line-{i}"]
    assert not [n for n in os.listdir(scratch) if n.startswith("pyrexis-output-")], "output files left behind"


def test_the_spawner_holds_no_database_and_dies_with_the_daemon(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(*KILL_GRACE)
    helper = wait_until(lambda: spawner_pid(d.pid), 10, 0.02, "the spawn helper")
    targets = [os.readlink(f"/proc/{helper}/fd/{fd}") for fd in os.listdir(f"/proc/{helper}/fd")]
    assert not [t for t in targets if os.path.basename(d.db) in t], targets
    sockets = [t for t in targets if t.startswith("socket:")]
    assert len(sockets) == 1, targets  # its own, not the daemon's listening socket
    assert stat.S_ISSOCK(os.stat(d.socket).st_mode)
    d.kill9()
    wait_pid_gone(helper, 10, "the spawn helper of a killed daemon")
