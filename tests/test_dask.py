"""The dask mode against a real daemon and a real LocalCluster (processes, 2 workers).

One daemon with ``--dask-local 2`` serves the whole module (starting a cluster costs
seconds); each test leaves the cluster with its two workers, so they do not depend on
their order.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import ROOT, Daemon, RawClient, expect_error, require_alive, shared_daemon, wait_until
from e2e_helpers import job_logs, read_pid, wait_pid_gone, wait_status, wait_terminal

DEADLINE = 60.0


def dask_state(client: RawClient) -> dict[str, Any]:
    return client.request("stats")["dask"]  # type: ignore[no-any-return]


def wait_cluster(client: RawClient, workers: int = 2) -> dict[str, Any]:
    """The cluster connected with ``workers`` workers (a killed one is back)."""

    def ready() -> dict[str, Any] | None:
        state = dask_state(client)
        return state if state["status"] == "connected" and state["workers"] == workers else None

    return wait_until(ready, DEADLINE, 0.05, f"the dask cluster with {workers} workers")  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def dk() -> Iterator[Daemon]:
    # Eight slots on two threads: Dask queues the next small jobs on its workers, hiding
    # its round trip (the 1,000 jobs take a third of the time). The default (slots follow
    # the threads) is tested on a cluster of its own below.
    args = ("--tasks", "dask_tasks", "--dask-local", "2", "--dask-slots", "8", "--processes", "2", "--kill-grace", "1")
    for d in shared_daemon("pxdk", args):
        with d.client() as c:
            wait_cluster(c)
        yield d


@pytest.fixture
def client(dk: Daemon) -> Iterator[RawClient]:
    require_alive(dk)
    with dk.client() as c:
        yield c
    require_alive(dk)


def test_stats_show_the_cluster(client: RawClient) -> None:
    stats = client.request("stats")
    assert stats["slots"]["dask"] == 8  # --dask-slots
    state = stats["dask"]
    assert state["status"] == "connected" and state["local"] is True
    assert state["workers"] == 2 and state["threads"] == 2
    assert state["scheduler"].startswith("tcp://127.0.0.1:")
    tasks = {t["name"]: t for t in client.request("tasks")["tasks"]}
    assert "dask" in tasks["echo"]["modes"]


def test_echo_runs_on_a_worker_process(client: RawClient, dk: Daemon) -> None:
    job = client.submit("echo", {"value": {"a": [1, 2.5, "x", None]}}, mode="dask")
    assert job["mode"] == "dask"
    done = client.wait(job["job_id"])
    assert done["status"] == "completed" and done["result"] == {"a": [1, 2.5, "x", None]}
    pid = client.wait(client.submit("dk.pid", {})["job_id"])["result"]
    assert isinstance(pid, int) and pid != dk.pid  # the function ran in a worker, not the daemon


def test_progress_and_logs_reach_watchers_in_order_and_are_stored(client: RawClient) -> None:
    watch_id = client.send_request("watch", {"task": "dk.chatty"})
    job = client.submit("dk.chatty", {"lines": 40})
    events: list[dict[str, Any]] = []
    while not (events and events[-1].get("kind") == "state" and events[-1]["status"] == "completed"):
        frame = client.recv()
        if frame.get("id") == watch_id and "event" in frame:
            events.append(frame["event"])
    # Every line arrived, in order, before the job's end was told.
    lines = [e["line"] for e in events if e["kind"] == "log"]
    assert lines == [f"line {i}" for i in range(1, 41)]
    progress = [e for e in events if e["kind"] == "progress"]
    assert progress and progress[-1]["fraction"] == 1.0 and progress[-1]["message"] == "step 40"
    fractions = [p["fraction"] for p in progress]
    assert fractions == sorted(fractions)  # coalesced, but never out of order
    stored = job_logs(client, job["job_id"])
    assert [e["line"] for e in stored] == lines
    assert [e["seq"] for e in stored] == list(range(1, 41))
    assert client.get(job["job_id"])["progress"] == {"fraction": 1.0, "message": "step 40"}


def test_a_failing_task_is_retried_by_the_daemon(client: RawClient, dk: Daemon) -> None:
    marker = os.path.join(dk.workdir, "flaky")
    job = client.submit("dk.flaky", {"marker": marker, "fails": 1}, max_retries=3)
    done = wait_terminal(client, job["job_id"], DEADLINE)
    assert done["status"] == "completed" and done["result"] == "ok after 2"
    assert done["attempts"] == 2  # each Dask run is one counted attempt: Dask retried nothing itself
    tracebacks = [e["line"] for e in job_logs(client, job["job_id"]) if e["stream"] == "stderr"]
    assert any("failing attempt 1 on purpose" in line for line in tracebacks)
    # Out of retries: failed, with the task's error.
    gone = client.submit("dk.flaky", {"marker": marker + "2", "fails": 5})
    failed = wait_terminal(client, gone["job_id"], DEADLINE)
    assert failed["status"] == "failed" and failed["attempts"] == 1
    assert failed["error"]["type"] == "exception" and "failing attempt 1" in failed["error"]["message"]


def test_cancel_of_a_long_task_reaches_the_cluster(client: RawClient, dk: Daemon) -> None:
    marker = os.path.join(dk.workdir, "cancelled")
    job = client.submit("dk.until_cancelled", {"marker": marker})
    wait_until(lambda: os.path.exists(marker + ".began"), DEADLINE, 0.02, "the function to begin")
    cancelled = client.request("cancel", {"job_id": job["job_id"]})
    assert cancelled["status"] == "cancelled"
    # The worker saw ctx.cancelled turn true: the cancel reached the cluster.
    wait_until(lambda: os.path.exists(marker) and open(marker).read() == "stopped", DEADLINE, 0.05, "the task to stop")
    assert client.get(job["job_id"])["status"] == "cancelled"
    wait_until(lambda: client.request("stats")["running_by_mode"].get("dask", 0) == 0, DEADLINE, 0.05, "the slot to be free")
    assert client.wait(client.submit("echo", {"value": 7}, mode="dask")["job_id"])["result"] == 7


def test_a_cancel_right_after_the_start_is_not_lost(client: RawClient, dk: Daemon) -> None:
    # Each would run for a minute if its cancel did not reach the cluster.
    ids = []
    for i in range(10):
        job = client.submit("dk.until_cancelled", {"marker": os.path.join(dk.workdir, f"quick-{i}")})
        assert client.request("cancel", {"job_id": job["job_id"]})["status"] == "cancelled"
        ids.append(job["job_id"])
    wait_until(lambda: client.request("stats")["running_by_mode"].get("dask", 0) == 0, 30, 0.05, "every slot to be free")
    wait_until(lambda: dask_state(client)["running"] == 0, 30, 0.05, "no attempt left on the cluster")
    assert {client.get(job_id)["status"] for job_id in ids} == {"cancelled"}


def test_timeout_ends_the_attempt_and_stops_the_task(client: RawClient, dk: Daemon) -> None:
    marker = os.path.join(dk.workdir, "timed-out")
    job = client.submit("dk.until_cancelled", {"marker": marker}, timeout=1.0)
    done = wait_terminal(client, job["job_id"], DEADLINE)
    assert done["status"] == "failed"
    assert done["error"]["type"] == "timeout" and done["error"]["retryable"] is True
    wait_until(lambda: os.path.exists(marker) and open(marker).read() == "stopped", DEADLINE, 0.05, "the task to stop")


def test_a_task_ignoring_cancel_is_abandoned_and_its_slot_freed(client: RawClient, dk: Daemon) -> None:
    before = dask_state(client)["abandoned"]
    marker = os.path.join(dk.workdir, "sleeping")
    job = client.submit("dk.sleep", {"seconds": 2.0, "marker": marker})
    wait_until(lambda: os.path.exists(marker), DEADLINE, 0.02, "the function to begin")
    assert client.request("cancel", {"job_id": job["job_id"]})["status"] == "cancelled"
    wait_until(lambda: client.request("stats")["running_by_mode"].get("dask", 0) == 0, DEADLINE, 0.05, "its slot to be free")
    wait_until(lambda: dask_state(client)["abandoned"] == before + 1, DEADLINE, 0.05, "it to be counted abandoned")
    # The daemon keeps running dask jobs (on the other worker meanwhile).
    assert client.wait(client.submit("echo", {"value": "next"}, mode="dask")["job_id"])["result"] == "next"


def test_a_result_above_max_result_fails_without_crossing(client: RawClient) -> None:
    job = client.submit("dk.big", {"size": 2 * 1024 * 1024})
    done = wait_terminal(client, job["job_id"], DEADLINE)
    assert done["status"] == "failed" and done["error"]["type"] == "result_too_large"
    assert done["result"] is None


def test_dependencies_across_dask_and_process_modes(client: RawClient) -> None:
    jobs = client.request("submit_many", {"jobs": [
        {"task": "dk.sum_inputs", "args": {"base": 1}, "job_id": "dep-a", "mode": "dask"},
        {"task": "dk.sum_inputs", "args": {"base": 10}, "job_id": "dep-b", "mode": "process", "depends_on": ["dep-a"]},
        {"task": "dk.sum_inputs", "args": {"base": 100}, "job_id": "dep-c", "mode": "dask", "depends_on": ["dep-a", "dep-b"]},
        {"task": "dk.flaky", "args": {"marker": "/nonexistent/dir/x", "fails": 0}, "job_id": "dep-bad"},
        {"task": "echo", "args": {"value": 1}, "job_id": "dep-after-bad", "mode": "dask", "depends_on": ["dep-bad"]},
    ]})["jobs"]
    assert [j["status"] for j in jobs][1:3] == ["blocked", "blocked"]
    c = wait_terminal(client, "dep-c", DEADLINE)
    assert c["status"] == "completed" and c["result"] == 100 + 1 + 11
    assert client.get("dep-b")["result"] == 11 and client.get("dep-b")["mode"] == "process"
    after = wait_terminal(client, "dep-after-bad", DEADLINE)
    assert after["status"] == "cancelled" and after["error"]["type"] == "dependency_failed"


def test_a_killed_worker_fails_the_attempt_and_the_job_is_retried(client: RawClient, dk: Daemon) -> None:
    marker = os.path.join(dk.workdir, "die-first")
    job = client.submit("dk.die_first", {"marker": marker}, max_retries=2)
    worker = read_pid(marker, DEADLINE)
    assert worker != dk.pid
    os.kill(worker, signal.SIGKILL)
    done = wait_terminal(client, job["job_id"], DEADLINE)
    assert done["status"] == "completed" and done["result"] == "survived"
    assert done["attempts"] == 2
    state = wait_cluster(client)  # the nanny started a new worker in its place
    assert state["threads"] == 2
    # Without retries left, the same death fails the job as worker_died.
    marker2 = marker + "2"
    job2 = client.submit("dk.die_first", {"marker": marker2})
    os.kill(read_pid(marker2, DEADLINE), signal.SIGKILL)
    failed = wait_terminal(client, job2["job_id"], DEADLINE)
    assert failed["status"] == "failed" and failed["error"]["type"] == "worker_died"
    assert failed["error"]["retryable"] is True and failed["attempts"] == 1
    wait_cluster(client)


def test_a_thousand_small_jobs(client: RawClient) -> None:
    specs = [{"task": "echo", "args": {"value": i}, "mode": "dask"} for i in range(1000)]
    ids = [j["job_id"] for j in client.request("submit_many", {"jobs": specs})["jobs"]]
    for i, job_id in enumerate(ids):
        done = client.wait(job_id, timeout=DEADLINE)
        assert done["status"] == "completed" and done["result"] == i, done
    assert client.request("stats")["running_by_mode"].get("dask", 0) == 0


# -- without the cluster ----------------------------------------------------------------


def test_a_daemon_without_the_dask_mode_refuses_it_naming_the_extra(start_daemon: Any) -> None:
    d = start_daemon()
    with d.client() as c:
        err = expect_error("invalid_request", lambda: c.submit("echo", {"value": 1}, mode="dask"))
        assert "pyrexis[dask]" in err.message and "--dask-local" in err.message
        assert "dask" not in c.request("stats")["slots"]
        assert c.wait(c.submit("echo", {"value": 2})["job_id"])["result"] == 2  # nothing else affected


def test_the_dask_mode_without_distributed_installed_is_one_clear_error(workdir: str) -> None:
    # A package of that name that cannot be imported stands for the missing extra.
    hide = os.path.join(workdir, "hide")
    os.makedirs(os.path.join(hide, "distributed"))
    with open(os.path.join(hide, "distributed", "__init__.py"), "w") as fh:
        fh.write("raise ImportError(\"No module named 'distributed'\")\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([hide, str(ROOT)])}
    proc = subprocess.run(
        [sys.executable, "-m", "pyrexisd", "--socket", os.path.join(workdir, "s.sock"), "--db", os.path.join(workdir, "d.db"), "--dask-local", "1"],
        env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 1, proc.stderr
    assert "pip install 'pyrexis[dask]'" in proc.stderr
    assert not os.path.exists(os.path.join(workdir, "s.sock"))


@pytest.mark.parametrize("args", [
    ("--dask-local", "1", "--dask-scheduler", "tcp://127.0.0.1:1"),
    ("--dask-slots", "4"),
    ("--dask-scheduler", "127.0.0.1:8786"),
    ("--dask-local", "0"),
])
def test_bad_dask_options_are_usage_errors(workdir: str, args: tuple[str, ...]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pyrexisd", "--socket", os.path.join(workdir, "s.sock"), "--db", os.path.join(workdir, "d.db"), *args],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2, proc.stderr
    assert "dask" in proc.stderr


# -- a cluster of its own, whose scheduler goes away -----------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Cluster:
    """A scheduler and one worker as separate processes, as on a real cluster."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.port = _free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
        self.procs: list[subprocess.Popen[bytes]] = []

    def _start(self, *args: str) -> subprocess.Popen[bytes]:
        log = open(os.path.join(self.workdir, "cluster.log"), "ab")
        proc = subprocess.Popen([sys.executable, "-m", *args], env=self.env, cwd=self.workdir, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        self.procs.append(proc)
        return proc

    def scheduler(self) -> subprocess.Popen[bytes]:
        return self._start("distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard")

    def worker(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        saved = self.env
        self.env = env or saved
        try:
            return self._start("distributed.cli.dask_worker", self.address, "--nthreads", "2", "--no-nanny", "--no-dashboard")
        finally:
            self.env = saved

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


def test_a_lost_scheduler_fails_running_attempts_as_retryable_and_the_mode_reconnects(start_daemon: Any, workdir: str) -> None:
    cluster = _Cluster(workdir)
    try:
        scheduler = cluster.scheduler()
        worker = cluster.worker()
        d = start_daemon("--tasks", "dask_tasks", "--dask-scheduler", cluster.address)
        with d.client() as c:
            state = wait_cluster(c, workers=1)
            assert state["threads"] == 2 and state["local"] is False and state["scheduler"] == cluster.address
            assert c.request("stats")["slots"]["dask"] == 2
            marker = os.path.join(workdir, "first")
            job = c.submit("dk.die_first", {"marker": marker}, max_retries=1)
            read_pid(marker, DEADLINE)  # it runs on the worker
            scheduler.kill()
            scheduler.wait(10)
            worker.kill()  # a worker of the old scheduler: the restarted cluster gets a new one
            # The attempt failed as retryable; the job waits (no slots while disconnected).
            retried = wait_status(c, job["job_id"], ("retrying", "pending"), DEADLINE)
            assert retried["error"]["type"] == "scheduler_lost" and retried["error"]["retryable"] is True
            state = wait_until(lambda: (s := dask_state(c))["status"] == "disconnected" and s, DEADLINE, 0.05, "disconnected")
            assert state["workers"] == 0 and state["error"]
            assert c.request("stats")["slots"]["dask"] == 0
            waiting = c.submit("echo", {"value": "queued"}, mode="dask")
            time.sleep(1.0)
            assert c.get(waiting["job_id"])["status"] == "pending"
            assert c.get(job["job_id"])["status"] in ("retrying", "pending")
            # The scheduler comes back at the same address: the mode reconnects by itself.
            cluster.scheduler()
            cluster.worker()
            state = wait_cluster(c, workers=1)
            assert state["reconnects"] >= 1
            done = wait_terminal(c, job["job_id"], DEADLINE)
            assert done["status"] == "completed" and done["result"] == "survived" and done["attempts"] == 2
            assert wait_terminal(c, waiting["job_id"], DEADLINE)["result"] == "queued"
            # The slots follow the cluster's threads as workers join.
            cluster.worker()
            assert wait_cluster(c, workers=2)["threads"] == 4
            wait_until(lambda: c.request("stats")["slots"]["dask"] == 4, DEADLINE, 0.05, "four dask slots")
    finally:
        cluster.close()


def test_a_worker_without_the_task_module_is_reported_and_its_jobs_fail_saying_why(start_daemon: Any, workdir: str) -> None:
    cluster = _Cluster(workdir)
    try:
        cluster.scheduler()
        cluster.worker(env={**os.environ, "PYTHONPATH": str(ROOT)})  # pyrexis, but not the tests' task module
        # In the cluster before the daemon connects: the registration of the daemon's
        # plugin is what reports it (a worker joining later says so in its own log).
        from distributed import Client

        with Client(cluster.address, timeout=DEADLINE) as probe:
            probe.wait_for_workers(1, timeout=DEADLINE)
        d = start_daemon("--tasks", "dask_tasks", "--dask-scheduler", cluster.address)
        with d.client() as c:
            state = wait_cluster(c, workers=1)
            assert "dask_tasks" in state["error"]  # reported at connection, not job by job only
            failed = wait_terminal(c, c.submit("dk.pid", {}, max_retries=3)["job_id"], DEADLINE)
            assert failed["status"] == "failed" and failed["attempts"] == 1
            assert "not loaded on the Dask worker" in failed["error"]["message"] and failed["error"]["retryable"] is False
            # The built-ins are there: the mode itself works.
            assert c.wait(c.submit("echo", {"value": 3}, mode="dask")["job_id"])["result"] == 3
    finally:
        cluster.close()


def test_dask_jobs_wait_while_unreachable_and_survive_a_restart_without_the_mode(start_daemon: Any, workdir: str) -> None:
    db = os.path.join(workdir, "kept.db")
    port = _free_port()  # nothing listens there
    d = start_daemon("--dask-scheduler", f"tcp://127.0.0.1:{port}", db=db, subdir="a")
    with d.client() as c:
        job = c.submit("echo", {"value": "later"}, mode="dask")
        state = dask_state(c)
        assert state["status"] == "connecting" and state["workers"] == 0  # it keeps trying, with backoff
        assert c.request("stats")["slots"]["dask"] == 0
        assert c.get(job["job_id"])["status"] == "pending"
    assert d.terminate() == 0
    # Restarted without the mode: the job is kept, waiting, and the daemon serves the rest.
    d2 = start_daemon(db=db, subdir="b")
    with d2.client() as c:
        assert c.get(job["job_id"])["status"] == "pending"
        assert "dask" not in c.request("stats")["slots"]
        assert c.wait(c.submit("echo", {"value": 1})["job_id"])["result"] == 1


def test_kill_9_of_the_daemon_leaves_no_local_worker_and_the_job_runs_again(start_daemon: Any, workdir: str) -> None:
    db = os.path.join(workdir, "crash.db")
    args = ("--tasks", "dask_tasks", "--dask-local", "1")
    d = start_daemon(*args, db=db, subdir="a")
    marker = os.path.join(workdir, "crash-marker")
    with d.client() as c:
        job = c.submit("dk.die_first", {"marker": marker})  # on_interrupt retry, the default
    worker = read_pid(marker, DEADLINE)
    d.kill9()
    wait_pid_gone(worker, DEADLINE, "the LocalCluster worker of the killed daemon")
    d2 = start_daemon(*args, db=db, subdir="b")
    with d2.client() as c:
        done = wait_terminal(c, job["job_id"], DEADLINE)
        assert done["status"] == "completed" and done["result"] == "survived"
        assert done["attempts"] == 2  # the lost attempt stays counted
