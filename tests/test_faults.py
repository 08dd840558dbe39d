"""Fault injection, end to end: kill -9 storms, orphans, dying workers, timeouts in every
mode, graceful shutdown, floods of output and tasks that misbehave.

Every test runs a real ``pyrexisd`` subprocess on a real SQLite file, kills real
processes and polls with deadlines. Figures are printed (visible with ``pytest -s``).
"""

from __future__ import annotations

import collections
import os
import random
import re
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import Daemon, RawClient, wait_until
from e2e_helpers import (
    TERMINAL,
    Stopwatch,
    job_logs,
    kill_quietly,
    pid_alive,
    read_marker,
    read_pid,
    still_serving,
    wait_pid_gone,
    wait_status,
    wait_terminal,
)

from protocol.errors import WireError

TASKS = ("--tasks", "sample_tasks", "--tasks", "mode_tasks", "--tasks", "fault_tasks")
KILL_GRACE = ("--kill-grace", "1")


def _start(start_daemon: Callable[..., Daemon], *extra: str) -> Daemon:
    return start_daemon(*TASKS, *KILL_GRACE, *extra)


def _db_pids(db: str, job_ids: list[str]) -> dict[str, int | None]:
    """The pid the daemon recorded for each job (read from its database, committed data only)."""
    conn = sqlite3.connect(db, timeout=5)
    try:
        marks = ",".join("?" * len(job_ids))
        rows = conn.execute(
            f"SELECT job_id, pid FROM jobs WHERE job_id IN ({marks})", job_ids
        ).fetchall()
    finally:
        conn.close()
    return dict(rows)


def _wait_shell_pid_recorded(db: str, job_id: str, pid: int, timeout: float = 10.0) -> None:
    """Wait until the daemon's database holds the shell job's pid (an internal column: if
    the schema has none, fall back to a pause long enough for one commit)."""
    try:
        _db_pids(db, [job_id])
    except sqlite3.OperationalError:
        time.sleep(0.5)
        return
    wait_until(
        lambda: _db_pids(db, [job_id]).get(job_id) == pid,
        timeout,
        0.02,
        f"the pid of {job_id} to be recorded",
    )




def _leftovers(workdir: str) -> list[tuple[int, str]]:
    """Live processes working in ``workdir``: the daemon's descendants (workers, the
    forkserver, shell commands) all start there."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd in (workdir, workdir + " (deleted)") and pid_alive(int(entry)):
            found.append((int(entry), cmd[:150]))
    return found


def _no_leftovers(workdir: str, timeout: float = 10.0) -> None:
    """Every process the daemon started is gone (else they are killed, by pid, and reported)."""
    try:
        wait_until(
            lambda: not _leftovers(workdir), timeout, 0.1, "the daemon's processes to be gone"
        )
    except AssertionError:
        left = _leftovers(workdir)
        for pid, _ in left:
            kill_quietly(pid)
        raise AssertionError(
            f"processes left behind after the daemon exited ({timeout} s later): {left}"
        ) from None


def _kill_leftovers(workdir: str) -> None:
    for pid, _ in _leftovers(workdir):
        kill_quietly(pid)


def _logged_process_job(c: RawClient) -> tuple[float, int, dict[str, Any]]:
    """A process job that logs 3 lines: (seconds it took, lines stored, its record)."""
    watch = Stopwatch()
    job = c.submit("fault.chatty", {"lines": 3, "width": 5}, mode="process")
    rec = c.wait(job["job_id"], timeout=30)
    return watch.elapsed, len(job_logs(c, job["job_id"])), rec


def _log_tail(d: Daemon, lines: int = 30) -> str:
    """The daemon log's last lines, without aiosqlite's DEBUG chatter."""
    return "\n".join([ln for ln in d.log().splitlines() if "DEBUG aiosqlite" not in ln][-lines:])


# == the crash fault test =================================================================
CRASH_SEED = 20240611
CRASH_JOBS = 1000
CRASH_BATCH = 50
CRASH_KILLS = 4  # plus one more during a start-up: 5 kills


def _crash_specs(rng: random.Random, ledger: str) -> list[dict[str, Any]]:
    """~1,000 mixed specs: echo (thread/process/async), ledger shell jobs, short sleeps."""
    specs: list[dict[str, Any]] = []
    for n in range(CRASH_JOBS):
        job_id = f"cf-{n:04d}"
        r = rng.random()
        spec: dict[str, Any]
        if r < 0.5:
            mode = rng.choice(["thread", "process", "async"])
            spec = {"task": "echo", "args": {"value": [n, "v" * rng.randint(0, 40)]}, "mode": mode}
            if rng.random() < 0.2:
                spec["on_interrupt"] = "fail"
        elif r < 0.75:
            pause = rng.choice(["0", "0.02", "0.05", "0.1", "0.2"])
            cmd = f'echo "$PYREXIS_JOB_ID $PYREXIS_ATTEMPT" >> {ledger}; sleep {pause}'
            spec = {"task": "shell", "args": {"cmd": cmd}}
            if rng.random() < 0.4:
                spec["on_interrupt"] = "retry"  # shell's default is fail
        else:
            spec = {"task": "sleep", "args": {"seconds": round(rng.uniform(0.05, 0.3), 3)}}
            if rng.random() < 0.3:
                spec["on_interrupt"] = "fail"
        spec["job_id"] = job_id
        specs.append(spec)
    return specs


def _expected_on_interrupt(spec: dict[str, Any]) -> str:
    return spec.get("on_interrupt") or ("fail" if spec["task"] == "shell" else "retry")


def test_crash_fault_kill9_storm(start_daemon: Callable[..., Daemon]) -> None:
    """~1,000 mixed jobs, the daemon kill -9'd 5 times at random moments while they run.

    Every acknowledged job ends terminal; at-most-once jobs ran at most once; no shell job
    ran more often than its counted attempts; every completed job really ran; the
    database passes ``PRAGMA integrity_check``.
    """
    watch = Stopwatch()
    rng = random.Random(CRASH_SEED)
    d = _start(start_daemon)
    ledger = os.path.join(d.workdir, "ledger.txt")
    open(ledger, "w").close()
    specs = _crash_specs(rng, ledger)
    by_id = {s["job_id"]: s for s in specs}
    batches = [specs[i : i + CRASH_BATCH] for i in range(0, len(specs), CRASH_BATCH)]

    acked: dict[str, dict[str, Any]] = {}
    lost_answers = 0  # submit_many answers that never arrived (the daemon died first)
    stored_before_crash = 0  # of those, batches found already stored on resubmit
    ready = threading.Event()
    ready.set()
    failure: list[BaseException] = []
    sub_rng = random.Random(CRASH_SEED + 1)

    def submitter() -> None:
        nonlocal lost_answers, stored_before_crash
        i = 0
        answer_lost = False
        deadline = time.monotonic() + 60
        while i < len(batches):
            if time.monotonic() > deadline:
                failure.append(
                    AssertionError("the submitter could not submit every batch within 60 s")
                )
                return
            ready.wait(30)
            try:
                with RawClient(d.socket, timeout=20) as c:
                    while i < len(batches):
                        sent_at = time.time()
                        # Same job_ids and specs: an idempotent resubmit after a lost answer.
                        result = c.request("submit_many", {"jobs": batches[i]})
                        if answer_lost and all(r["created_at"] < sent_at for r in result["jobs"]):
                            stored_before_crash += 1
                        answer_lost = False
                        for rec in result["jobs"]:
                            acked[rec["job_id"]] = rec
                        i += 1
                        time.sleep(sub_rng.uniform(0.05, 0.35))
            except (OSError, ConnectionError):
                if not answer_lost:
                    lost_answers += 1
                answer_lost = True
                time.sleep(0.02)
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                failure.append(exc)
                return

    thread = threading.Thread(target=submitter, name="crash-submitter", daemon=True)
    thread.start()
    kills = 0
    kills_in_startup = 0
    for k in range(CRASH_KILLS):
        time.sleep(rng.uniform(0.4, 1.4))
        ready.clear()
        d.kill9()
        kills += 1
        if k == 2:
            # Once, a kill at a random moment of start-up (recovery, pool start, listen).
            d.start(wait=False)
            time.sleep(rng.uniform(0.05, 0.6))
            d.kill9()
            kills += 1
            kills_in_startup += 1
        d.restart()
        ready.set()
    thread.join(90)
    assert not thread.is_alive(), "the submitter is stuck"
    if failure:
        raise failure[0]
    assert set(acked) == set(by_id), "every batch was acknowledged in the end"

    # Every acknowledged job reaches a terminal state (wait on each).
    final: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 60
    with d.client() as c:
        for job_id in acked:
            left = max(1.0, deadline - time.monotonic())
            try:
                final[job_id] = c.wait(job_id, timeout=left)
            except WireError as exc:
                raise AssertionError(
                    f"job {job_id} ({by_id[job_id]}) is not terminal: {exc.code} {exc.message}; "
                    f"record: {c.get(job_id)}"
                ) from None

    ledger_lines: dict[str, list[int]] = collections.defaultdict(list)
    with open(ledger) as fh:
        for line in fh:
            parts = line.split()
            assert len(parts) == 2, f"torn ledger line {line!r}"
            ledger_lines[parts[0]].append(int(parts[1]))

    lost: list[str] = []
    duplicated: list[str] = []
    problems: list[str] = []
    for job_id, rec in final.items():
        spec = by_id[job_id]
        policy = _expected_on_interrupt(spec)
        if rec["status"] not in TERMINAL:
            lost.append(job_id)
            continue
        if rec["on_interrupt"] != policy:
            problems.append(f"{job_id}: on_interrupt {rec['on_interrupt']} != {policy}")
        attempts = rec["attempts"]
        lines = ledger_lines.get(job_id, [])
        if spec["task"] == "shell":
            if len(lines) > attempts:
                duplicated.append(job_id)
            if len(set(lines)) != len(lines):
                problems.append(f"{job_id}: one attempt number ran twice: {lines}")
            if any(a < 1 or a > attempts for a in lines):
                problems.append(f"{job_id}: ledger attempts {lines} outside 1..{attempts}")
        if policy == "fail" and (attempts > 1 or len(lines) > 1):
            problems.append(f"{job_id}: at-most-once job ran {attempts} attempts, ledger {lines}")
        if attempts > 1 + kills:
            problems.append(f"{job_id}: {attempts} attempts with only {kills} kills")
        if rec["status"] == "completed":
            if attempts < 1:
                problems.append(f"{job_id}: completed with attempts {attempts}")
            if spec["task"] == "shell":
                if attempts not in lines:
                    lost.append(job_id)  # completed, yet its final attempt never ran
                if rec["result"] != {"exit_code": 0}:
                    problems.append(f"{job_id}: shell result {rec['result']}")
            elif spec["task"] == "echo":
                if rec["result"] != spec["args"]["value"]:
                    lost.append(job_id)
            elif rec["result"] is not None:
                problems.append(f"{job_id}: sleep result {rec['result']!r}")
        elif rec["status"] == "failed":
            # Nothing here fails by itself: a failure is an interrupted at-most-once attempt.
            if rec["error"]["type"] != "interrupted" or policy != "fail" or attempts != 1:
                problems.append(
                    f"{job_id}: unexpected failure {rec['error']} (policy {policy}, attempts {attempts})"
                )
        else:
            problems.append(f"{job_id}: {rec['status']} — nobody cancelled it")

    recovered = [int(n) for n in re.findall(r"recovered (\d+) jobs that were running", d.log())]
    orphans_killed = len(re.findall(r"killed orphan process", d.log()))
    assert d.terminate(30) == 0
    _no_leftovers(d.workdir)
    conn = sqlite3.connect(d.db)
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchall()
        stored = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
        unfinished = conn.execute(
            "SELECT count(*) FROM jobs WHERE status NOT IN ('completed', 'failed', 'cancelled')"
        ).fetchone()[0]
    finally:
        conn.close()

    statuses = collections.Counter(r["status"] for r in final.values())
    interrupted = sum(
        1 for r in final.values() if r["error"] and r["error"]["type"] == "interrupted"
    )
    retried = sum(1 for r in final.values() if r["attempts"] > 1)
    print(
        f"\n[crash fault] jobs={len(acked)} kills={kills} (in start-up: {kills_in_startup}) "
        f"lost={len(lost)} duplicated={len(duplicated)} | statuses={dict(statuses)} "
        f"interrupted(at-most-once)={interrupted} re-run after a kill={retried} "
        f"recovered-running per restart={recovered} orphans killed={orphans_killed} "
        f"answers lost to a kill={lost_answers} (already stored: {stored_before_crash}) "
        f"ledger lines={sum(len(v) for v in ledger_lines.values())} "
        f"integrity={integrity} elapsed={watch.elapsed:.1f}s",
        flush=True,
    )
    assert not lost, f"lost: {lost[:20]}"
    assert not duplicated, (
        f"duplicated: {[(j, ledger_lines[j], final[j]['attempts']) for j in duplicated[:20]]}"
    )
    assert not problems, "\n".join(problems[:30])
    assert integrity == [("ok",)]
    assert stored == len(by_id), "exactly the submitted jobs are stored"
    assert unfinished == 0
    assert sum(recovered) > 0, "no kill caught a job running: the test did not test much"
    assert watch.elapsed < 120


# == orphans ==============================================================================
def test_orphans_of_a_kill9_are_killed_on_restart(start_daemon: Callable[..., Daemon]) -> None:
    d = _start(start_daemon, "--processes", "1")
    pmarker = os.path.join(d.workdir, "proc.pid")
    smarker = os.path.join(d.workdir, "shell.pid")
    pids: list[int] = []
    try:
        with d.client() as c:
            pj = c.submit("t.pid", {"hold": 60, "marker": pmarker}, queue="orph")
            sj = c.submit("shell", {"cmd": f"echo $$ > {smarker}; exec sleep 60"}, queue="orph")
            assert pj["on_interrupt"] == "retry" and sj["on_interrupt"] == "fail"
            ppid, spid = read_pid(pmarker), read_pid(smarker)
            pids += [ppid, spid]
            wait_status(c, pj["job_id"], "running")
            wait_status(c, sj["job_id"], "running")
            # The daemon records a shell job's pid (and start time) right after spawning
            # it, in a commit of its own: wait for it, or the kill -9 may come first.
            # (A process worker needs no such wait: it dies with its parent, and the
            # daemon records its live workers when they start.)
            _wait_shell_pid_recorded(d.db, sj["job_id"], spid)
            c.request("pause", {"queue": "orph"})  # the retried job waits, so we can look at it
            d.kill9()
        assert pid_alive(ppid) or pid_alive(spid), (
            "kill -9 of the daemon left its work running (as it must)"
        )
        d.restart()
        # Work that outlived the daemon is killed before anything else runs.
        wait_pid_gone(ppid, 10, "the orphaned process worker")
        wait_pid_gone(spid, 10, "the orphaned shell command")
        with d.client() as c:
            srec = wait_terminal(c, sj["job_id"], 10)
            assert srec["status"] == "failed", srec
            assert srec["error"]["type"] == "interrupted" and srec["error"]["retryable"] is False
            assert srec["attempts"] == 1
            prec = c.get(pj["job_id"])
            assert prec["status"] == "pending", prec
            assert prec["attempts"] == 1, "the lost attempt stays counted"
            # It runs again: attempt 2, in a new worker.
            os.remove(pmarker)
            c.request("resume", {"queue": "orph"})
            again = read_pid(pmarker, 30)
            pids.append(again)
            assert again != ppid
            rec = wait_status(c, pj["job_id"], "running")
            assert rec["attempts"] == 2
            c.request("cancel", {"job_id": pj["job_id"]})
            wait_pid_gone(again, 10, "the cancelled second attempt")
            still_serving(c)
    finally:
        for p in pids:
            kill_quietly(p)


# == dying workers ========================================================================
WORKER_KILLS = int(os.environ.get("PYREXIS_FAULT_WORKER_KILLS", "200"))


def test_many_worker_kills_never_wedge_the_pool(start_daemon: Callable[..., Daemon]) -> None:
    """200 process jobs whose worker is SIGKILLed while they run: each fails worker_died,
    and the pool still works afterwards. Two kills are in flight at a time."""
    d = start_daemon(*TASKS, *KILL_GRACE, "--processes", "2")
    try:
        _many_worker_kills(d)
    finally:
        _kill_leftovers(d.workdir)


def _many_worker_kills(d: Daemon) -> None:
    watch = Stopwatch()
    killed: set[int] = set()
    with d.client() as c:
        inflight: dict[str, list[Any]] = {}  # job_id -> [marker, pid or None, since]
        submitted = done = 0
        deadline = time.monotonic() + 240
        while done < WORKER_KILLS:
            assert time.monotonic() < deadline, (
                f"only {done} of {WORKER_KILLS} kills in 240 s; in flight: {inflight}"
            )
            while len(inflight) < 2 and submitted < WORKER_KILLS:
                marker = os.path.join(d.workdir, f"w{submitted}")
                job = c.submit("t.pid", {"hold": 20, "marker": marker}, max_retries=0)
                inflight[job["job_id"]] = [marker, None, time.monotonic()]
                submitted += 1
            for job_id, state in list(inflight.items()):
                if state[1] is None:
                    pid = read_marker(state[0])
                    if pid is not None:
                        assert pid not in killed, (
                            f"worker {pid} was killed already, yet it ran a job"
                        )
                        state[1] = pid
                        os.kill(pid, signal.SIGKILL)
                        killed.add(pid)
                    elif time.monotonic() - state[2] > 30:
                        raise AssertionError(
                            f"job {job_id} did not start within 30 s (pool wedged?): "
                            f"{c.get(job_id)}\n{_log_tail(d)}"
                        )
                else:
                    rec = c.get(job_id)
                    if rec["status"] in TERMINAL:
                        assert rec["status"] == "failed", rec
                        assert rec["error"]["type"] == "worker_died", rec
                        assert rec["attempts"] == 1
                        del inflight[job_id]
                        done += 1
            time.sleep(0.005)
        elapsed = watch.elapsed
        # The pool is whole: a process echo completes, and two jobs run side by side.
        job = c.submit("echo", {"value": "still here"}, mode="process")
        rec = c.wait(job["job_id"], timeout=30)
        assert rec["status"] == "completed" and rec["result"] == "still here", rec
        pair = [c.submit("t.pid", {"hold": 0.5}) for _ in range(2)]
        results = [c.wait(j["job_id"], timeout=30) for j in pair]
        assert all(r["status"] == "completed" for r in results), results
        assert results[0]["result"] != results[1]["result"], "two workers"
        assert not {r["result"] for r in results} & killed
        assert c.request("stats")["running_by_mode"].get("process", 0) == 0
        # The event channel of the pool is whole too: a process job's log lines arrive.
        took, lines, rec = _logged_process_job(c)
        print(
            f"\n[worker kills] {WORKER_KILLS} workers SIGKILLed in {elapsed:.1f}s "
            f"({elapsed / WORKER_KILLS * 1000:.0f} ms each); then a logging process job took "
            f"{took:.2f}s with {lines}/3 lines stored",
            flush=True,
        )
        assert rec["status"] == "completed", rec
        assert lines == 3 and took < 3, (
            f"after the kills, a process job's 3 log lines: {lines} stored, in {took:.1f} s "
            "(see the daemon's 'events of a process job were lost on the channel')"
        )
    assert d.terminate(30) == 0
    _no_leftovers(d.workdir)


def test_worker_killed_while_logging_does_not_break_the_event_channel(
    start_daemon: Callable[..., Daemon],
) -> None:
    """A worker SIGKILLed in the middle of sending log lines costs only its own job: other
    process jobs still deliver their events, and no process outlives the daemon."""
    d = _start(start_daemon, "--processes", "2")
    try:
        with d.client() as c:
            took, lines, _ = _logged_process_job(c)
            assert lines == 3, "baseline"
            marker = os.path.join(d.workdir, "chatty.pid")
            job = c.submit(
                "fault.chatty",
                {"lines": 10**8, "width": 200, "marker": marker},
                mode="process",
                max_retries=0,
            )
            victim = read_pid(marker)
            time.sleep(0.3)  # it is logging as fast as it can
            os.kill(victim, signal.SIGKILL)
            rec = c.wait(job["job_id"], timeout=30)
            assert rec["status"] == "failed" and rec["error"]["type"] == "worker_died", rec
            took, lines, rec = _logged_process_job(c)
            lost_warning = "events of a process job were lost" in d.log()
            assert rec["status"] == "completed", rec
        watch = Stopwatch()
        try:
            rc: int | str = d.terminate(12)
        except subprocess.TimeoutExpired:
            rc = "nothing: it was still running 12 s after SIGTERM, then got SIGKILL,"
            d.kill9()
        exit_took = watch.elapsed
        time.sleep(2)
        left = _leftovers(d.workdir)
        assert lines == 3 and took < 3 and not left, (
            f"after a worker was SIGKILLed while logging, another process job stored {lines} "
            f"of its 3 log lines and took {took:.1f} s (daemon warned 'events of a process job "
            f"were lost on the channel': {lost_warning}); the daemon then exited {rc} in "
            f"{exit_took:.1f} s and left {len(left)} processes running 2 s later: {left}. "
            "(The killed worker held the shared multiprocessing queue's write lock.)"
        )
        assert rc == 0 and exit_took < 8
    finally:
        _kill_leftovers(d.workdir)


def test_idle_worker_death_costs_no_job(start_daemon: Callable[..., Daemon]) -> None:
    """An idle worker that dies ran no job: no job may fail for it, and the pool replaces it."""
    d = _start(start_daemon, "--processes", "2")
    try:
        with d.client() as c:
            # Two jobs side by side: each worker reports its pid; then both are idle.
            first = [c.submit("t.pid", {"hold": 0.5}) for _ in range(2)]
            pids = {c.wait(j["job_id"], timeout=30)["result"] for j in first}
            assert len(pids) == 2, pids
            idle = min(pids)
            os.kill(idle, signal.SIGKILL)
            wait_pid_gone(idle, 5, "the idle worker")
            time.sleep(0.5)
            jobs = [c.submit("t.pid", {"hold": 0.5}, max_retries=0) for _ in range(4)]
            recs = [c.wait(j["job_id"], timeout=30) for j in jobs]
            failed = [r["error"] for r in recs if r["status"] != "completed"]
            assert not failed, (
                f"{len(failed)} of 4 process jobs failed after an IDLE worker was killed: {failed}"
            )
            assert idle not in {r["result"] for r in recs}
            still_serving(c)
        assert d.terminate(30) == 0
        _no_leftovers(d.workdir)
    finally:
        _kill_leftovers(d.workdir)


# == timeouts in every mode ===============================================================
def test_timeout_thread_cooperative(start_daemon: Callable[..., Daemon]) -> None:
    d = _start(start_daemon, "--threads", "1")
    with d.client() as c:
        watch = Stopwatch()
        job = c.submit("t.spin", {"seconds": 5}, timeout=0.3)
        nxt = c.submit("echo", {"value": "next"}, mode="thread")
        done = c.wait(job["job_id"], timeout=10)
        assert done["status"] == "failed", done
        assert done["error"]["type"] == "timeout" and done["error"]["retryable"] is True
        assert watch.elapsed < 3, "the timeout ends the attempt when the limit passes"
        assert done["finished_at"] - done["started_at"] < 2
        after = c.wait(nxt["job_id"], timeout=10)
        # t.spin sees the cancel flag and returns: the only thread slot frees up at once.
        assert after["status"] == "completed", after
        assert after["started_at"] >= done["finished_at"] - 0.01
        assert after["started_at"] - done["started_at"] < 4
        assert c.get(job["job_id"])["status"] == "failed"


def test_timeout_thread_stubborn_keeps_its_slot(start_daemon: Callable[..., Daemon]) -> None:
    """A thread that ignores its cancel flag: the job fails ``timeout`` as soon as the limit
    passes, but the slot stays taken until the thread returns; its late result is dropped."""
    d = _start(start_daemon, "--threads", "1")
    marker = os.path.join(d.workdir, "returned-at")
    seconds = 2.0
    with d.client() as c:
        watch = Stopwatch()
        job = c.submit("fault.stubborn", {"seconds": seconds, "marker": marker}, timeout=0.3)
        nxt = c.submit("echo", {"value": "next"}, mode="thread")
        done = c.wait(job["job_id"], timeout=10)
        failed_after = watch.elapsed
        assert done["status"] == "failed", done
        assert done["error"]["type"] == "timeout"
        assert failed_after < seconds - 0.5, (
            f"the timeout answered after {failed_after:.2f} s, not at 0.3 s"
        )
        assert done["finished_at"] - done["started_at"] < seconds - 0.5
        after = c.wait(nxt["job_id"], timeout=15)
        assert after["status"] == "completed", after
        with open(marker) as fh:
            returned_at = float(fh.read())
        assert after["started_at"] >= done["started_at"] + seconds - 0.05, (after, done)
        assert after["started_at"] >= returned_at - 0.05, (
            "the slot was reused before the thread returned"
        )
        final = c.get(job["job_id"])
        assert final["status"] == "failed" and final["error"]["type"] == "timeout"
        assert final["result"] is None, "the late result is discarded"


def test_timeout_process_kills_the_worker(start_daemon: Callable[..., Daemon]) -> None:
    d = _start(start_daemon, "--processes", "1")
    marker = os.path.join(d.workdir, "pid")
    worker = None
    with d.client() as c:
        try:
            watch = Stopwatch()
            job = c.submit("t.pid", {"hold": 30, "marker": marker}, timeout=0.8)
            worker = read_pid(marker)
            done = c.wait(job["job_id"], timeout=15)
            assert done["status"] == "failed", done
            assert done["error"]["type"] == "timeout" and done["error"]["retryable"] is True
            assert watch.elapsed < 8
            wait_pid_gone(worker, 8, "the timed-out worker")
            nxt = c.submit("t.pid", {"hold": 0})
            rec = c.wait(nxt["job_id"], timeout=30)
            assert rec["status"] == "completed", rec
            assert rec["result"] != worker
        finally:
            kill_quietly(worker)


def test_timeout_async_and_shell_and_retry(start_daemon: Callable[..., Daemon]) -> None:
    d = _start(start_daemon)
    marker = os.path.join(d.workdir, "shell.pid")
    attempts_file = os.path.join(d.workdir, "attempts")
    pid = None
    with d.client() as c:
        try:
            watch = Stopwatch()
            a = c.submit("sleep", {"seconds": 30}, timeout=0.3)
            s = c.submit("shell", {"cmd": f"echo $$ > {marker}; exec sleep 30"}, timeout=0.3)
            pid = read_pid(marker)
            for job in (a, s):
                done = c.wait(job["job_id"], timeout=10)
                assert done["status"] == "failed", done
                assert done["error"]["type"] == "timeout" and done["error"]["retryable"] is True
                assert done["attempts"] == 1
            assert watch.elapsed < 6
            wait_pid_gone(pid, 8, "the timed-out shell command")
            # Timeout is retryable: with max_retries=1 a second attempt really runs.
            cmd = f'echo "$PYREXIS_ATTEMPT" >> {attempts_file}; exec sleep 30'
            r = c.submit("shell", {"cmd": cmd}, timeout=0.3, max_retries=1)
            done = c.wait(r["job_id"], timeout=20)
            assert done["status"] == "failed", done
            assert done["error"]["type"] == "timeout"
            assert done["attempts"] == 2
            with open(attempts_file) as fh:
                assert fh.read().split() == ["1", "2"]
            still_serving(c)
        finally:
            kill_quietly(pid)


# == graceful shutdown ====================================================================
def _every_mode(
    c: RawClient, d: Daemon, seconds: float, queue: str
) -> tuple[dict[str, dict[str, Any]], str, str]:
    pmarker = os.path.join(d.workdir, f"p-{queue}.pid")
    smarker = os.path.join(d.workdir, f"s-{queue}.pid")
    jobs = {
        "async": c.submit("sleep", {"seconds": seconds}, queue=queue),
        "thread": c.submit("t.spin", {"seconds": seconds}, queue=queue),
        "process": c.submit("t.pid", {"hold": seconds, "marker": pmarker}, queue=queue),
        "shell": c.submit(
            "shell", {"cmd": f"echo $$ > {smarker}; exec sleep {seconds}"}, queue=queue
        ),
    }
    for mode, job in jobs.items():
        assert job["mode"] == mode
        wait_status(c, job["job_id"], ("running",) + TERMINAL)
    return jobs, pmarker, smarker


def test_sigterm_lets_jobs_of_every_mode_finish(start_daemon: Callable[..., Daemon]) -> None:
    d = _start(start_daemon)
    with d.client() as c:
        jobs, pmarker, _ = _every_mode(c, d, 0.5, "short")
        read_pid(pmarker)  # the process job has really started
        watch = Stopwatch()
        assert d.terminate(30) == 0
        assert watch.elapsed < 8, f"exit took {watch.elapsed:.1f} s for 0.5 s jobs"
    d.restart()
    with d.client() as c:
        for mode, job in jobs.items():
            rec = c.get(job["job_id"])
            assert rec["status"] == "completed", (mode, rec)
            assert rec["attempts"] == 1, (mode, rec)


def test_sigterm_short_grace_interrupts_every_mode(start_daemon: Callable[..., Daemon]) -> None:
    d = _start(start_daemon, "--grace", "0.3")
    pids: list[int] = []
    try:
        with d.client() as c:
            jobs, pmarker, smarker = _every_mode(c, d, 30, "long")
            pids += [read_pid(pmarker), read_pid(smarker)]
            c.request("pause", {"queue": "long"})  # the retried ones wait after the restart
            watch = Stopwatch()
            assert d.terminate(30) == 0
            assert watch.elapsed < 6, f"exit took {watch.elapsed:.1f} s with --grace 0.3"
        for p in pids:
            wait_pid_gone(p, 3, "a job process after the daemon exited")
        d.restart()
        with d.client() as c:
            for mode, job in jobs.items():
                rec = c.get(job["job_id"])
                assert rec["attempts"] == 1, (mode, rec)
                if mode == "shell":
                    assert rec["status"] == "failed", rec
                    assert rec["error"]["type"] == "interrupted"
                else:
                    assert rec["status"] == "pending", (mode, rec)
                    c.request("cancel", {"job_id": job["job_id"]})
            still_serving(c)
    finally:
        for p in pids:
            kill_quietly(p)


def test_sigterm_does_not_wait_for_a_stubborn_thread(start_daemon: Callable[..., Daemon]) -> None:
    """A thread job that ignores its cancel flag cannot be stopped, but it must not keep
    the daemon from exiting once the grace period is over: the contract says the rest
    of the jobs are stopped, follow on_interrupt, and the daemon exits 0."""
    d = _start(start_daemon, "--grace", "0.3")
    seconds = 8.0
    with d.client() as c:
        job = c.submit("fault.stubborn", {"seconds": seconds}, queue="stub")
        wait_status(c, job["job_id"], "running")
        c.request("pause", {"queue": "stub"})
    watch = Stopwatch()
    assert d.proc is not None
    d.proc.send_signal(signal.SIGTERM)
    rc = d.proc.wait(seconds + 10)
    elapsed = watch.elapsed
    stopped = "pyrexisd stopped" in d.log()
    d.restart()
    with d.client() as c:
        rec = c.get(job["job_id"])
        assert rec["status"] == "pending" and rec["attempts"] == 1, rec
        c.request("cancel", {"job_id": job["job_id"]})
    assert rc == 0
    assert elapsed < 4, (
        f"the daemon logged 'pyrexisd stopped'={stopped} but its process exited only after "
        f"{elapsed:.1f} s (the thread job sleeps {seconds} s): a thread that ignores its cancel "
        "flag holds the interpreter's exit (non-daemon ThreadPoolExecutor worker joined at exit)"
    )


def test_second_sigterm_skips_the_grace(start_daemon: Callable[..., Daemon]) -> None:
    d = _start(start_daemon, "--grace", "30")
    with d.client() as c:
        job = c.submit("sleep", {"seconds": 30}, queue="twice")
        wait_status(c, job["job_id"], "running")
        c.request("pause", {"queue": "twice"})
    assert d.proc is not None
    d.proc.send_signal(signal.SIGTERM)
    wait_until(
        lambda: "SIGTERM: shutting down" in d.log(), 5, 0.02, "the first SIGTERM to be handled"
    )
    time.sleep(0.5)
    assert d.proc.poll() is None, "the grace period of 30 s is running"
    watch = Stopwatch()
    d.proc.send_signal(signal.SIGTERM)
    rc = d.proc.wait(15)
    assert rc == 0
    assert watch.elapsed < 4, f"second SIGTERM: exit after {watch.elapsed:.1f} s"
    d.restart()
    with d.client() as c:
        rec = c.get(job["job_id"])
        assert rec["status"] == "pending" and rec["attempts"] == 1, rec
        c.request("cancel", {"job_id": job["job_id"]})


# == floods of output =====================================================================
LOG_LIMIT = 100_000


def _capped(c: RawClient, job_id: str) -> tuple[int, list[str]]:
    """Characters of the job's own stored lines, and the daemon's notes about the limit."""
    lines = job_logs(c, job_id)
    notes = [e["line"] for e in lines if e["stream"] == "log" and "log limit" in e["line"]]
    body = sum(
        len(e["line"])
        for e in lines
        if not (e["stream"] == "log" and e["line"].startswith("[pyrexis]"))
    )
    return body, notes


def test_megabytes_of_output_are_capped(start_daemon: Callable[..., Daemon]) -> None:
    d = _start(start_daemon, "--max-log-bytes", str(LOG_LIMIT))
    cases = {
        "50 MB in 1000-byte lines": "yes \"$(printf '%01000d' 0)\" | head -c 50000000",
        "5 MB of 2-byte lines": "yes | head -c 5000000",
        "5 MB without a newline": "head -c 5000000 /dev/zero | tr '\\0' x",
    }
    with d.client() as c, d.client() as probe:
        for name, cmd in cases.items():
            watch = Stopwatch()
            job = c.submit("shell", {"cmd": cmd})
            slowest = 0.0
            while True:  # the daemon keeps answering while it reads the flood
                t = time.monotonic()
                probe.request("hello", {"protocol": 1})
                slowest = max(slowest, time.monotonic() - t)
                rec = c.get(job["job_id"])
                if rec["status"] in TERMINAL:
                    break
                assert watch.elapsed < 60, f"{name}: not done after 60 s"
                time.sleep(0.05)
            assert rec["status"] == "completed", (name, rec)
            body, notes = _capped(c, job["job_id"])
            print(
                f"\n[log flood] {name}: {watch.elapsed:.1f}s, stored {body} bytes, "
                f"slowest hello {slowest * 1000:.0f} ms, notes {notes}",
                flush=True,
            )
            assert body <= LOG_LIMIT, (name, body)
            assert body >= LOG_LIMIT * 0.4, (name, body)  # the first part is kept
            assert notes, f"{name}: no note line saying the log limit was reached"
            assert slowest < 1.0, f"{name}: a hello took {slowest:.2f} s during the flood"
        # The same cap through a task's own log (thread mode).
        job = c.submit("fault.chatty", {"lines": 100_000, "width": 100})
        rec = c.wait(job["job_id"], timeout=60)
        assert rec["status"] == "completed" and rec["result"] == 100_000, rec
        body, notes = _capped(c, job["job_id"])
        assert body <= LOG_LIMIT and notes, (body, notes)
        still_serving(c)
    size = sum(os.path.getsize(d.db + s) for s in ("", "-wal") if os.path.exists(d.db + s))
    assert size < 10_000_000, f"the database holds {size} bytes after the floods"
    assert d.proc is not None and d.proc.poll() is None


# == tasks that misbehave =================================================================
FAILING = [
    ("t.fail", "thread", "exception", "ValueError: boom"),
    ("t.fail", "process", "exception", "ValueError: boom"),
    ("fault.async_raise", "async", "exception", "RuntimeError: async boom"),
    ("t.unencodable", "thread", "exception", "cannot be stored"),
    ("modes.unencodable", "process", "exception", "object"),
    ("fault.async_unencodable", "async", "exception", "cannot be stored"),
    ("fault.gen_unencodable", "thread", "exception", "object"),
    ("fault.gen_unencodable", "process", "exception", "object"),
    ("fault.unpicklable_exc", "process", "exception", "cannot travel by pickle"),
    ("fault.exit_worker", "process", "worker_died", "exit code 7"),
]


def test_failing_and_unencodable_tasks(start_daemon: Callable[..., Daemon]) -> None:
    d = _start(start_daemon)
    with d.client() as c:
        for task, mode, etype, text in FAILING:
            job = c.submit(task, {}, mode=mode)
            rec = c.wait(job["job_id"], timeout=30)
            assert rec["status"] == "failed", (task, mode, rec)
            assert rec["error"]["type"] == etype, (task, mode, rec["error"])
            assert text in rec["error"]["message"], (task, mode, rec["error"])
            assert rec["result"] is None
            assert rec["attempts"] == 1
        still_serving(c)
    assert d.proc is not None and d.proc.poll() is None


@pytest.mark.parametrize(
    "task,mode",
    [
        ("fault.sysexit", "process"),
        ("fault.kbint", "process"),
        ("fault.sysexit", "thread"),
        ("fault.kbint", "thread"),
        ("fault.async_sysexit", "async"),
    ],
)
def test_task_raising_base_exception_does_not_take_the_daemon_down(
    start_daemon: Callable[..., Daemon], task: str, mode: str
) -> None:
    """``sys.exit()`` or KeyboardInterrupt inside a task is the task's failure, never the
    daemon's: invariant 3. And it must not become a poison pill across restarts."""
    d = _start(start_daemon)
    with d.client() as c:
        job = c.submit(task, {}, mode=mode)
        try:
            rec = c.wait(job["job_id"], timeout=15)
        except (OSError, ConnectionError) as exc:
            time.sleep(1)
            assert d.proc is not None
            alive = d.proc.poll() is None
            socket_there = os.path.exists(d.socket)
            d.kill9()
            stored = (
                sqlite3.connect(d.db)
                .execute("SELECT status, attempts FROM jobs WHERE job_id = ?", (job["job_id"],))
                .fetchone()
            )
            d.start(wait=False)
            try:
                d.wait_ready(8)
                with RawClient(d.socket, timeout=10) as c2:
                    again = c2.wait(job["job_id"], timeout=8)
                restarted = f"after a restart the job ends {again['status']} {again['error']}"
            except (AssertionError, OSError, ConnectionError, WireError) as exc2:
                restarted = (
                    "after a restart the job is recovered (on_interrupt=retry), runs again and takes "
                    f"the new daemon down too: a poison pill ({type(exc2).__name__}: {exc2})"
                )
            pytest.fail(
                f"{task} in {mode} mode took the daemon down: {exc!r}; process still alive={alive}, "
                f"socket file present={socket_there}, job row {stored}; {restarted}.\n"
                f"daemon log:\n{_log_tail(d, 25)}"
            )
        assert rec["status"] == "failed", rec
        assert rec["error"]["type"] == "exception", rec
        assert ("SystemExit" if "sysexit" in task else "KeyboardInterrupt") in rec["error"][
            "message"
        ]
        still_serving(c)
