"""``pyrexisctl`` end to end: every command as a subprocess against a real daemon.

Checks human and ``--json`` output and the exit codes of the contract of the CLI:
0 ok, 1 the daemon answered an error, 2 usage error, 3 the waited job failed or was
cancelled, 69 the daemon is unreachable. Long-running commands (``watch``, ``logs -f``,
``wait``) run under ``Popen``; their output is read by a thread so that a test waits
for a line with a deadline, and they are stopped with SIGINT.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest
from conftest import Daemon, RawClient, wait_until
from e2e_helpers import wait_status, wait_terminal

ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    )
    env.pop("PYREXIS_SOCKET", None)
    env["COLUMNS"] = "200"
    return env


ENV = _env()


def command(socket: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "pyrexisctl", "--socket", socket, *args]


def ctl(
    socket: str, *args: str, input: str | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run one ``pyrexisctl`` command to its end."""
    return subprocess.run(
        command(socket, *args),
        check=False,
        input=input,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
        stdin=None if input is not None else subprocess.DEVNULL,
    )


def ok(socket: str, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command that must succeed."""
    proc = ctl(socket, *args, input=input)
    assert proc.returncode == 0, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc


def ndjson(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class Lines:
    """The lines of a pipe, read by a thread, so a test can wait for one with a deadline."""

    def __init__(self, pipe: IO[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(pipe,), daemon=True).start()

    def _read(self, pipe: IO[str]) -> None:
        for line in pipe:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching line within {timeout} s; saw {self.seen}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the stream ended without a matching line; saw {self.seen}")
            self.seen.append(line)
            if predicate(line):
                return line

    def rest(self, timeout: float = 15.0) -> list[str]:
        """The lines not read yet, up to the end of the stream."""
        deadline = time.monotonic() + timeout
        lines = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"the stream did not end within {timeout} s")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                return lines
            lines.append(line)


class Background:
    """A long-running ``pyrexisctl`` command."""

    def __init__(self, socket: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            command(socket, *args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.stdout = Lines(self.proc.stdout)
        self.stderr = Lines(self.proc.stderr)

    def interrupt(self, timeout: float = 10.0) -> int:
        """Ctrl-C, and the exit code."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def background() -> Any:
    started: list[Background] = []

    def start(socket: str, *args: str) -> Background:
        bg = Background(socket, *args)
        started.append(bg)
        return bg

    yield start
    for bg in started:
        bg.stop()


# --------------------------------------------------------------------------- basics


def test_ping_human_and_json(daemon: Daemon) -> None:
    human = ok(daemon.socket, "ping")
    assert "pyrexisd" in human.stdout and daemon.socket in human.stdout
    answer = json.loads(ok(daemon.socket, "--json", "ping").stdout)
    assert answer["server"]["name"] == "pyrexisd"
    assert answer["protocol"] == 1
    assert answer["socket"] == daemon.socket


def test_unreachable_daemon_exits_69_naming_the_socket(workdir: str) -> None:
    missing = os.path.join(workdir, "nothing-here.sock")
    for args in (("ping",), ("list",), ("submit", "echo", "--arg", "value=1", "--wait")):
        proc = ctl(missing, *args)
        assert proc.returncode == 69, (args, proc.stdout, proc.stderr)
        assert missing in proc.stderr
        assert proc.stdout == ""


GRAPH = '[{"task": "echo", "args": {"value": 1}}]'


@pytest.mark.parametrize(
    "args",
    [
        ("no-such-command",),
        ("submit",),
        ("submit", "echo", "--priority", "5000"),
        ("submit", "echo", "--policy", "sometimes"),
        ("list", "--limit", "0"),
        ("update", "JOB"),
        ("queue", "set", "q", "--max-concurrency", "0"),
        ("schedule", "add", "s", "echo"),
        ("schedule", "add", "s", "--cron", "* * * * *", "--every", "5", "echo"),
        ("submit", "--graph", "-", "echo"),
        ("submit", "--graph", "-", "--queue", "q"),
    ],
    ids=lambda args: " ".join(args),
)
def test_usage_errors_exit_2_before_connecting(workdir: str, args: tuple[str, ...]) -> None:
    # No daemon: a usage error is found before the CLI connects (else it would exit 69).
    proc = ctl(os.path.join(workdir, "none.sock"), *args, input=GRAPH)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Usage:" in proc.stderr


def test_tasks_and_stats(daemon: Daemon) -> None:
    table = ok(daemon.socket, "tasks").stdout
    assert table.splitlines()[0].split()[:3] == ["TASK", "MODES", "DEFAULT"]
    assert "echo" in table and "t.fail" in table
    names = {row["name"] for row in ndjson(ok(daemon.socket, "tasks", "--json").stdout)}
    assert {"echo", "sleep", "shell", "t.fail"} <= names

    ok(daemon.socket, "submit", "echo", "--arg", "value=1", "--wait")
    assert "uptime" in ok(daemon.socket, "stats").stdout
    stats = json.loads(ok(daemon.socket, "--json", "stats").stdout)
    assert stats["by_status"].get("completed", 0) >= 1
    text = ok(daemon.socket, "metrics").stdout
    assert "# TYPE pyrexis_jobs_ended_total counter" in text
    assert 'pyrexis_jobs_ended_total{outcome="completed",queue="default",task="echo"} 1.0' in text


# --------------------------------------------------------------------------- submit, wait, run


def test_submit_prints_the_id_and_submit_wait_prints_the_result(
    daemon: Daemon, client: RawClient
) -> None:
    job_id = ok(daemon.socket, "submit", "echo", "--arg", "value=7").stdout.strip()
    assert wait_terminal(client, job_id)["result"] == 7

    proc = ok(daemon.socket, "submit", "echo", "--arg", "value=42", "--wait")
    outcome, result = proc.stdout.splitlines()
    assert " completed in " in outcome
    assert json.loads(result) == 42
    assert "\x1b[" not in proc.stderr  # not a terminal: no progress bar

    record = json.loads(
        ok(daemon.socket, "submit", "echo", "--args-json", '{"value": [1, 2]}', "--json").stdout
    )
    assert record["args"] == {"value": [1, 2]}
    assert record["status"] in ("pending", "running", "completed")


def test_submit_wait_json_prints_events_then_the_record(daemon: Daemon) -> None:
    proc = ok(daemon.socket, "--json", "submit", "t.progress", "--arg", "steps=3", "--wait")
    lines = ndjson(proc.stdout)
    *events, record = lines
    assert events and all("kind" in event for event in events)
    assert events[0]["kind"] == "state"
    assert all(event["job_id"] == record["job_id"] for event in events)
    assert record["status"] == "completed" and record["result"] == 3


def test_waited_job_that_fails_exits_3(daemon: Daemon) -> None:
    proc = ctl(daemon.socket, "submit", "t.fail", "--arg", "message=kaput", "--wait")
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    assert "failed" in proc.stderr and "kaput" in proc.stderr

    proc = ctl(daemon.socket, "--json", "submit", "t.fail", "--wait")
    assert proc.returncode == 3
    record = ndjson(proc.stdout)[-1]
    assert record["status"] == "failed" and record["error"]["type"] == "exception"

    job_id = json.loads(ok(daemon.socket, "--json", "submit", "t.fail").stdout)["job_id"]
    proc = ctl(daemon.socket, "wait", job_id)
    assert proc.returncode == 3 and "failed" in proc.stderr


def test_wait_shows_state_lines_and_exits_3_when_cancelled(daemon: Daemon, background: Any) -> None:
    job_id = ok(daemon.socket, "submit", "echo", "--arg", "value=1", "--delay", "60").stdout.strip()
    waiter = background(daemon.socket, "wait", job_id)
    # Not a terminal: a plain line per state, here the state the job is in when attached.
    waiter.stderr.wait_for(lambda line: line == f"{job_id} scheduled")
    assert ok(daemon.socket, "cancel", job_id).stdout.split() == [job_id, "cancelled"]
    assert waiter.proc.wait(15) == 3
    waiter.stderr.wait_for(lambda line: line.startswith(f"{job_id} cancelled"))


def test_wait_of_a_completed_job_timeout_and_unknown_job(daemon: Daemon) -> None:
    job_id = ok(daemon.socket, "submit", "echo", "--arg", "value=5").stdout.strip()
    proc = ok(daemon.socket, "wait", job_id)
    assert json.loads(proc.stdout.splitlines()[-1]) == 5
    assert ndjson(ok(daemon.socket, "wait", job_id, "--json").stdout)[-1]["result"] == 5

    held = ok(daemon.socket, "submit", "echo", "--arg", "value=1", "--delay", "60").stdout.strip()
    proc = ctl(daemon.socket, "wait", held, "--timeout", "0.2")
    assert proc.returncode == 1 and "timeout" in proc.stderr

    proc = ctl(daemon.socket, "wait", "no-such-job")
    assert proc.returncode == 1 and "not_found" in proc.stderr


def test_run_and_logs(daemon: Daemon, client: RawClient) -> None:
    job_id = ok(daemon.socket, "run", "--", "sh", "-c", "echo hi").stdout.strip()
    assert wait_terminal(client, job_id)["status"] == "completed"
    logs = ok(daemon.socket, "logs", job_id)
    assert logs.stdout == "hi\n"
    events = ndjson(ok(daemon.socket, "--json", "logs", job_id).stdout)
    assert [(e["kind"], e["seq"], e["stream"], e["line"]) for e in events] == [
        ("log", 1, "stdout", "hi")
    ]

    # --wait shows the output as the job runs: stdout to stdout, stderr to stderr.
    proc = ok(daemon.socket, "run", "--wait", "--", "sh", "-c", "echo out; echo err >&2; echo out2")
    assert proc.stdout == "out\nout2\n"
    assert "err" in proc.stderr.splitlines()
    outcome = next(line for line in proc.stderr.splitlines() if " completed in " in line)
    job_id = outcome.split()[0]

    logs = ok(daemon.socket, "logs", job_id)
    assert logs.stdout == "out\nout2\n" and logs.stderr == "err\n"
    prefixed = ok(daemon.socket, "logs", job_id, "--prefix").stdout.splitlines()
    assert sorted(prefixed) == ["stderr: err", "stdout: out", "stdout: out2"]
    events = ndjson(ok(daemon.socket, "logs", job_id, "--json").stdout)
    assert [e["seq"] for e in events] == [1, 2, 3]
    assert {(e["stream"], e["line"]) for e in events} == {
        ("stdout", "out"),
        ("stderr", "err"),
        ("stdout", "out2"),
    }
    since = ndjson(ok(daemon.socket, "logs", job_id, "--json", "--since", "3").stdout)
    assert [e["seq"] for e in since] == [3]

    # One word with spaces runs through /bin/sh -c; a non-zero exit fails the job: exit 3.
    proc = ctl(daemon.socket, "run", "--wait", "--", "echo bye; exit 4")
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    assert proc.stdout == "bye\n" and "exit_code" in proc.stderr

    proc = ctl(daemon.socket, "logs", "no-such-job")
    assert proc.returncode == 1 and "not_found" in proc.stderr


def test_run_wait_json_has_every_log_line_once(daemon: Daemon) -> None:
    proc = ok(daemon.socket, "--json", "run", "--wait", "--", "sh", "-c", "seq 1 50")
    *events, record = ndjson(proc.stdout)
    lines = [e["line"] for e in events if e.get("kind") == "log"]
    assert lines == [str(n) for n in range(1, 51)]
    assert record["status"] == "completed" and record["result"]["exit_code"] == 0


def test_logs_follow_streams_until_the_job_ends(daemon: Daemon) -> None:
    job_id = ok(daemon.socket, "run", "--", "sh", "-c", "echo one; sleep 0.5; echo two").stdout
    proc = ok(daemon.socket, "logs", "-f", job_id.strip())
    assert proc.stdout == "one\ntwo\n"


def test_logs_follow_detaches_on_ctrl_c(daemon: Daemon, client: RawClient, background: Any) -> None:
    job_id = ok(daemon.socket, "run", "--", "sh", "-c", "echo start; sleep 60").stdout.strip()
    try:
        follower = background(daemon.socket, "logs", "-f", job_id)
        follower.stdout.wait_for(lambda line: line == "start")
        assert follower.interrupt() == 0
        assert follower.stderr.rest() == []  # quietly
        assert follower.stdout.rest() == []
        assert client.get(job_id)["status"] == "running"  # the job goes on
    finally:
        client.request("cancel", {"job_id": job_id})
    assert wait_terminal(client, job_id)["status"] == "cancelled"


# --------------------------------------------------------------------------- inspect and control


def test_list_human_and_ndjson(daemon: Daemon, client: RawClient) -> None:
    ids = [client.submit("echo", {"value": n})["job_id"] for n in range(3)]
    for job_id in ids:
        wait_terminal(client, job_id)
    table = ok(daemon.socket, "list").stdout.splitlines()
    assert table[0].split()[:5] == ["ID", "TASK", "QUEUE", "PRI", "STATUS"]
    assert [line.split()[0] for line in table[1:]] == ids

    jobs = ndjson(ok(daemon.socket, "list", "--json").stdout)
    assert [job["job_id"] for job in jobs] == ids
    assert all(job["status"] == "completed" for job in jobs)
    assert ndjson(ok(daemon.socket, "--json", "list", "--status", "failed").stdout) == []

    page = ok(daemon.socket, "list", "-n", "2")
    assert len(page.stdout.splitlines()) == 3 and "more jobs" in page.stderr
    every = ndjson(ok(daemon.socket, "list", "--all", "-n", "2", "--json").stdout)
    assert [job["job_id"] for job in every] == ids


def test_status_human_json_and_unknown_job(daemon: Daemon, client: RawClient) -> None:
    job_id = client.submit("echo", {"value": "x"})["job_id"]
    wait_terminal(client, job_id)
    detail = dict(
        line.split(None, 1) for line in ok(daemon.socket, "status", job_id).stdout.splitlines()
    )
    assert detail["job"] == job_id and detail["status"] == "completed"
    assert detail["result"] == '"x"'
    record = json.loads(ok(daemon.socket, "status", job_id, "--json").stdout)
    assert record["job_id"] == job_id and record["result"] == "x"

    proc = ctl(daemon.socket, "status", "no-such-job")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: not_found:")
    assert proc.stdout == ""


def test_cancel_and_retry(daemon: Daemon, client: RawClient) -> None:
    job_id = client.submit("echo", {"value": 1}, delay=60)["job_id"]
    assert ok(daemon.socket, "cancel", job_id).stdout.split() == [job_id, "cancelled"]
    proc = ctl(daemon.socket, "cancel", job_id)
    assert proc.returncode == 1 and "invalid_state" in proc.stderr

    failed = client.submit("t.fail", {})["job_id"]
    assert wait_terminal(client, failed)["status"] == "failed"
    record = json.loads(ok(daemon.socket, "--json", "retry", failed).stdout)
    assert record["job_id"] == failed and record["status"] not in ("failed", "cancelled")
    assert wait_status(client, failed, "failed")["attempts"] == 2

    done = client.submit("echo", {"value": 1})["job_id"]
    wait_terminal(client, done)
    proc = ctl(daemon.socket, "retry", done)
    assert proc.returncode == 1 and "invalid_state" in proc.stderr


def test_pause_resume_and_queues(daemon: Daemon, client: RawClient) -> None:
    table = ok(daemon.socket, "pause", "slow").stdout
    row = next(line.split() for line in table.splitlines() if line.startswith("slow"))
    assert row[1] == "yes"
    job_id = client.submit("echo", {"value": 1}, queue="slow")["job_id"]
    assert client.get(job_id)["status"] == "pending"

    rows = {row["queue"]: row for row in ndjson(ok(daemon.socket, "--json", "queues").stdout)}
    assert rows["slow"]["paused"] is True and rows["slow"]["waiting"] == 1

    rows = {
        row["queue"]: row for row in ndjson(ok(daemon.socket, "resume", "slow", "--json").stdout)
    }
    assert rows["slow"]["paused"] is False
    assert wait_terminal(client, job_id)["status"] == "completed"
    assert "slow" in ok(daemon.socket, "queues").stdout


def test_hold_release_update(daemon: Daemon, client: RawClient) -> None:
    job_id = client.submit("echo", {"value": 1}, delay=60)["job_id"]
    assert ok(daemon.socket, "hold", job_id).stdout.split() == [job_id, "held"]
    assert client.get(job_id)["status"] == "held"

    line = ok(daemon.socket, "update", job_id, "--priority", "5", "--queue", "other").stdout
    assert line.split() == [job_id, "held", "priority", "5", "queue", "other"]
    record = json.loads(ok(daemon.socket, "--json", "update", job_id, "-p", "-3").stdout)
    assert record["priority"] == -3 and record["queue"] == "other"

    released = json.loads(ok(daemon.socket, "release", job_id, "--json").stdout)
    assert released["status"] == "scheduled"
    proc = ctl(daemon.socket, "release", job_id)
    assert proc.returncode == 1 and "invalid_state" in proc.stderr

    done = client.submit("echo", {"value": 1})["job_id"]
    wait_terminal(client, done)
    for args in (("hold", done), ("update", done, "--priority", "1")):
        proc = ctl(daemon.socket, *args)
        assert proc.returncode == 1 and "invalid_state" in proc.stderr, args
    proc = ctl(daemon.socket, "hold", "no-such-job")
    assert proc.returncode == 1 and "not_found" in proc.stderr


def test_queue_set_and_queues(daemon: Daemon) -> None:
    table = ok(
        daemon.socket,
        "queue",
        "set",
        "batch",
        "--weight",
        "2",
        "--max-concurrency",
        "3",
        "--aging",
        "0.5",
    ).stdout.splitlines()
    assert table[0].split() == ["QUEUE", "PAUSED", "WEIGHT", "MAX", "AGING", "WAITING", "RUNNING"]
    assert table[1].split()[:5] == ["batch", "no", "2", "3", "0.5"]

    row = json.loads(
        ok(daemon.socket, "--json", "queue", "set", "batch", "--max-concurrency", "none").stdout
    )
    assert row["queue"] == "batch"
    assert row["max_concurrency"] is None
    assert row["weight"] == 2 and row["aging"] == 0.5  # settings not given are kept

    rows = {row["queue"]: row for row in ndjson(ok(daemon.socket, "queues", "--json").stdout)}
    assert rows["batch"]["weight"] == 2 and rows["batch"]["max_concurrency"] is None


def test_schedule_add_list_remove(daemon: Daemon, client: RawClient) -> None:
    detail = ok(
        daemon.socket,
        "schedule",
        "add",
        "hourly",
        "--every",
        "3600",
        "--queue",
        "batch",
        "--",
        "echo",
        "value=42",
    ).stdout
    assert "hourly" in detail and "every 1h00m" in detail

    record = json.loads(
        ok(
            daemon.socket,
            "--json",
            "schedule",
            "add",
            "often",
            "--cron",
            "*/5 * * * *",
            "--priority",
            "3",
            "echo",
            "--arg",
            "value=x",
        ).stdout
    )
    assert record["name"] == "often" and record["cron"] == "*/5 * * * *"
    assert record["every"] is None and record["next_run"] > time.time()
    assert record["job"]["task"] == "echo"
    assert record["job"]["args"] == {"value": "x"} and record["job"]["priority"] == 3

    proc = ctl(daemon.socket, "schedule", "add", "hourly", "--every", "5", "echo", "value=1")
    assert proc.returncode == 1 and "conflict" in proc.stderr
    proc = ctl(daemon.socket, "schedule", "add", "bad", "--cron", "every day", "echo", "value=1")
    assert proc.returncode == 1 and "invalid_request" in proc.stderr

    table = ok(daemon.socket, "schedule", "list").stdout.splitlines()
    assert table[0].split()[:3] == ["NAME", "WHEN", "JOB"]
    assert [line.split()[0] for line in table[1:]] == ["hourly", "often"]
    listed = ndjson(ok(daemon.socket, "schedule", "list", "--json").stdout)
    assert [row["name"] for row in listed] == ["hourly", "often"]
    assert listed[0]["job"] == {"task": "echo", "args": {"value": 42}, "queue": "batch"}

    assert "removed" in ok(daemon.socket, "schedule", "remove", "hourly").stdout
    assert json.loads(ok(daemon.socket, "--json", "schedule", "remove", "often").stdout) == {
        "removed": "often"
    }
    proc = ctl(daemon.socket, "schedule", "remove", "hourly")
    assert proc.returncode == 1 and "not_found" in proc.stderr
    assert ctl(daemon.socket, "schedule", "list").stderr.strip() == "no schedules"


def test_a_schedule_submits_its_job(daemon: Daemon, client: RawClient) -> None:
    ok(daemon.socket, "schedule", "add", "fast", "--every", "0.2", "--", "echo", "value=9")
    try:
        job_id = wait_until(
            lambda: client.request("schedule_list")["schedules"][0]["last_job_id"],
            10,
            0.05,
            "the schedule's first run",
        )
    finally:
        ok(daemon.socket, "schedule", "remove", "fast")
    assert wait_terminal(client, job_id)["result"] == 9


# --------------------------------------------------------------------------- dependencies


def test_submit_after_and_policy(daemon: Daemon, client: RawClient) -> None:
    first = client.submit("echo", {"value": 1}, delay=60)["job_id"]
    strict = json.loads(
        ok(daemon.socket, "--json", "submit", "echo", "-a", "value=2", "--after", first).stdout
    )
    assert strict["depends_on"] == [first] and strict["status"] == "blocked"
    assert strict["dependency_policy"] == "all_completed"
    lenient = json.loads(
        ok(
            daemon.socket,
            "--json",
            "submit",
            "echo",
            "-a",
            "value=3",
            "--after",
            first,
            "--policy",
            "all_terminal",
        ).stdout
    )
    assert lenient["dependency_policy"] == "all_terminal"

    client.request("cancel", {"job_id": first})
    failed = wait_terminal(client, strict["job_id"])
    assert failed["status"] == "cancelled"
    assert failed["error"]["type"] == "dependency_failed"
    assert wait_terminal(client, lenient["job_id"])["status"] == "completed"

    # Waiting on a job whose dependency failed: exit 3.
    proc = ctl(daemon.socket, "submit", "echo", "-a", "value=4", "--after", first, "--wait")
    assert proc.returncode == 3 and "dependency_failed" in proc.stderr

    proc = ctl(daemon.socket, "submit", "echo", "-a", "value=1", "--after", "no-such-job")
    assert proc.returncode == 1 and "invalid_request" in proc.stderr


def test_submit_graph(daemon: Daemon, client: RawClient, workdir: str) -> None:
    graph = [
        {"task": "echo", "job_id": "fetch", "args": {"value": 1}, "delay": 60},
        {"task": "echo", "job_id": "build", "args": {"value": 2}, "depends_on": ["fetch"]},
        {
            "task": "echo",
            "job_id": "report",
            "args": {"value": 3},
            "depends_on": ["build"],
            "dependency_policy": "all_terminal",
        },
    ]
    path = os.path.join(workdir, "graph.json")
    with open(path, "w") as fh:
        json.dump({"jobs": graph}, fh)
    table = ok(daemon.socket, "submit", "--graph", path).stdout.splitlines()
    assert table[0].split()[0] == "ID"
    rows = [line.split() for line in table[1:]]
    assert [(row[0], row[4]) for row in rows] == [
        ("fetch", "scheduled"),
        ("build", "blocked"),
        ("report", "blocked"),
    ]
    assert client.get("report")["depends_on"] == ["build"]

    # A plain list on stdin, --json: the records in order.
    second = [
        {"task": "echo", "job_id": "a", "args": {"value": 1}},
        {"task": "echo", "job_id": "b", "args": {"value": 2}, "depends_on": ["a", "fetch"]},
    ]
    records = ndjson(
        ok(daemon.socket, "--json", "submit", "--graph", "-", input=json.dumps(second)).stdout
    )
    assert [r["job_id"] for r in records] == ["a", "b"]
    assert records[1]["depends_on"] == ["a", "fetch"]

    # All or nothing: one bad spec rejects the batch, and the error names it.
    bad = [
        {"task": "echo", "job_id": "c", "args": {"value": 1}},
        {"task": "echo", "job_id": "d", "args": {"value": 1}, "depends_on": ["nowhere"]},
    ]
    proc = ctl(daemon.socket, "submit", "--graph", "-", input=json.dumps(bad))
    assert proc.returncode == 1 and "invalid_request" in proc.stderr
    assert "in job 1 of the batch" in proc.stderr
    assert ctl(daemon.socket, "status", "c").returncode == 1

    for text in ("not json", "{}", '[{"args": {}}]'):
        proc = ctl(daemon.socket, "submit", "--graph", "-", input=text)
        assert proc.returncode == 2, (text, proc.stderr)


# --------------------------------------------------------------------------- watch


def test_watch_prints_events_until_ctrl_c(
    daemon: Daemon, client: RawClient, background: Any
) -> None:
    watcher = background(daemon.socket, "watch")
    watcher.stderr.wait_for(lambda line: line.startswith("watching"))
    job_id = client.submit("echo", {"value": 1})["job_id"]
    line = watcher.stdout.wait_for(lambda line: job_id in line and "completed" in line)
    assert line.split()[1:4] == [job_id, "state", "completed"]
    assert watcher.interrupt() == 0
    assert watcher.stderr.rest() == []


def test_watch_json_with_filters(daemon: Daemon, client: RawClient, background: Any) -> None:
    watcher = background(
        daemon.socket, "--json", "watch", "--task", "t.progress", "--kind", "state,progress"
    )
    watcher.stderr.wait_for(lambda line: line.startswith("watching"))
    client.submit("echo", {"value": 1})  # another task: filtered out
    job_id = client.submit("t.progress", {"steps": 2})["job_id"]
    events: list[dict[str, Any]] = []

    def collect(line: str) -> bool:
        events.append(json.loads(line))
        return events[-1].get("status") == "completed"

    watcher.stdout.wait_for(collect)
    assert {event["job_id"] for event in events} == {job_id}
    assert {event["kind"] for event in events} <= {"state", "progress"}
    assert watcher.interrupt() == 0

    # --job: opens with the job's current state, even for a job that has ended.
    watcher = background(daemon.socket, "--json", "watch", "--job", job_id)
    first = json.loads(watcher.stdout.wait_for(lambda line: True))
    assert first["kind"] == "state" and first["status"] == "completed"
    assert watcher.interrupt() == 0

    proc = ctl(daemon.socket, "watch", "--job", "no-such-job")
    assert proc.returncode == 1 and "not_found" in proc.stderr


def test_bench_runs_its_scenarios_on_a_daemon_of_its_own_and_times_a_restart(workdir: str) -> None:
    """bench starts its own daemon (never the one on --socket), runs every scenario asked
    for, restarts the daemon holding the queued jobs, and reports a row per scenario."""
    nowhere = os.path.join(workdir, "none.sock")
    proc = ctl(
        nowhere, "--json", "bench", "-n", "20", "--serial-jobs", "5", "--sync", "normal",
        "--modes", "async", "--queued", "300", "--restart", timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = {row["scenario"]: row for row in ndjson(proc.stdout)}
    assert set(rows) == {"serial", "pipelined", "queued", "restart"}
    assert all(row["failed"] == 0 for row in rows.values())
    assert rows["queued"]["jobs"] == rows["restart"]["jobs"] == 300
    assert rows["restart"]["seconds"] > 0 and rows["restart"]["daemon_rss_kib"] > 0
    assert not os.path.exists(nowhere)

    usage = ctl(nowhere, "bench", "--restart")
    assert usage.returncode == 2 and "--queued" in usage.stderr
