"""End-to-end tests of scheduling: dependency graphs, hold/release/update, fair share,
``max_concurrency``, delays across a restart, and recurring schedules.

The contract is ``protocol-v1.md`` (JobSpec ``depends_on``/``dependency_policy``,
``hold``/``release``/``update``, ``schedule_*``); the daemon's own description is
``docs/scheduling.md``. A real ``pyrexisd`` in a subprocess, clients made of ``socket`` +
``msgpack`` only. Waiting is polling with a deadline or the protocol's own ``wait``.

Most tests share one module-scoped daemon and keep out of each other's way with unique
queue names and job ids; tests that need odd flags or restarts start their own.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import Daemon, RawClient, expect_error, require_alive, shared_daemon, wait_until
from e2e_helpers import job_logs, wait_status

ARGS = ("--tasks", "sample_tasks", "--tasks", "stream_tasks", "--kill-grace", "2")
TERMINAL = {"completed", "failed", "cancelled"}


def uid(prefix: str = "") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def queue_row(c: RawClient, name: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = [r for r in c.request("queues")["queues"] if r["queue"] == name]
    assert len(rows) == 1, rows
    return rows[0]


def jobs_of(c: RawClient, **filters: Any) -> list[dict[str, Any]]:
    """Every job matching ``filters`` (following ``next``)."""
    out: list[dict[str, Any]] = []
    after = None
    while True:
        args = {"limit": 1000, **filters}
        if after is not None:
            args["after"] = after
        page = c.request("list", args)
        out += page["jobs"]
        after = page["next"]
        if after is None:
            return out


@pytest.fixture(scope="module")
def shared() -> Iterator[Daemon]:
    yield from shared_daemon("pxg", ARGS)


@pytest.fixture
def c(shared: Daemon) -> Iterator[RawClient]:
    require_alive(shared)
    with RawClient(shared.socket, timeout=60) as client:
        yield client


# =======================================================================================
# dependency graphs
# =======================================================================================

def test_graph_results_flow_along_the_edges(c: RawClient) -> None:
    a, b, cc, d = uid("A-"), uid("B-"), uid("C-"), uid("D-")
    specs = [
        {"job_id": a, "task": "shell", "args": {"cmd": "printf '{\"n\": 7}' > \"$PYREXIS_OUTPUT\""}},
        {"job_id": b, "task": "st.double", "mode": "process", "args": {"source": a}, "depends_on": [a]},
        {"job_id": cc, "task": "st.plus_one", "args": {"source": b}, "depends_on": [b]},
        {"job_id": d, "task": "shell", "args": {"cmd": "cat \"$PYREXIS_INPUTS\""}, "depends_on": [a, cc]},
    ]
    jobs = c.request("submit_many", {"jobs": specs})["jobs"]
    assert [j["job_id"] for j in jobs] == [a, b, cc, d]
    assert jobs[1]["status"] == "blocked" and jobs[2]["status"] == "blocked" and jobs[3]["status"] == "blocked"
    assert jobs[0]["status"] in ("pending", "running")
    assert jobs[3]["depends_on"] == [a, cc] and jobs[3]["dependency_policy"] == "all_completed"
    done = c.wait(d, 60)
    assert done["status"] == "completed", done
    assert c.get(a)["result"] == {"exit_code": 0, "output": {"n": 7}}
    assert c.get(b)["result"] == 14
    rc = c.get(cc)
    assert rc["mode"] == "async" and rc["result"] == {"from": b, "value": 15, "inputs": [b]}
    text = "\n".join(e["line"] for e in job_logs(c, d))
    inputs = json.loads(text)
    assert inputs == {a: {"exit_code": 0, "output": {"n": 7}}, cc: {"from": b, "value": 15, "inputs": [b]}}
    # Each ran after its dependencies finished.
    ra, rb, rd = c.get(a), c.get(b), c.get(d)
    assert ra["finished_at"] <= rb["started_at"]
    assert rb["finished_at"] <= rc["started_at"]
    assert rc["finished_at"] <= rd["started_at"]


def test_failed_dependency_cancels_dependents_two_levels_down(c: RawClient) -> None:
    a, b, cc, t = uid("fa-"), uid("fb-"), uid("fc-"), uid("ft-")
    specs = [
        {"job_id": a, "task": "t.fail", "args": {"message": "broken"}},
        {"job_id": b, "task": "echo", "args": {"value": "b"}, "depends_on": [a]},
        {"job_id": cc, "task": "echo", "args": {"value": "c"}, "depends_on": [b]},
        {"job_id": t, "task": "st.plus_one", "args": {"source": a}, "depends_on": [a],
         "dependency_policy": "all_terminal"},
    ]
    c.request("submit_many", {"jobs": specs})
    assert c.wait(a)["status"] == "failed"
    rb = c.wait(b)
    assert rb["status"] == "cancelled", rb
    assert rb["error"]["type"] == "dependency_failed" and rb["error"]["retryable"] is False
    assert a in rb["error"]["message"], rb["error"]
    assert rb["attempts"] == 0 and rb["started_at"] is None
    rc = c.wait(cc)
    assert rc["status"] == "cancelled", rc
    assert rc["error"]["type"] == "dependency_failed"
    assert b in rc["error"]["message"], rc["error"]
    assert rc["attempts"] == 0
    # all_terminal: runs anyway, with nil for the dependency that did not complete.
    # (st.plus_one adds 1 to it, so it fails on None; the point is that it ran.)
    rt = c.wait(t)
    assert rt["attempts"] == 1 and rt["started_at"] is not None, rt
    assert rt["status"] == "failed" and "TypeError" in rt["error"]["message"], rt


def test_all_terminal_runs_after_a_cancelled_dependency(c: RawClient) -> None:
    q = uid("held-")
    c.request("pause", {"queue": q})
    try:
        dep = c.submit("echo", {"value": 1}, queue=q)
        after = c.submit("echo", {"value": "ran"}, depends_on=[dep["job_id"]], dependency_policy="all_terminal")
        strict = c.submit("echo", {"value": "no"}, depends_on=[dep["job_id"]])
        assert after["status"] == "blocked" and strict["status"] == "blocked"
        c.request("cancel", {"job_id": dep["job_id"]})
        ra = c.wait(after["job_id"])
        assert ra["status"] == "completed" and ra["result"] == "ran"
        rs = c.wait(strict["job_id"])
        assert rs["status"] == "cancelled" and rs["error"]["type"] == "dependency_failed"
        assert dep["job_id"] in rs["error"]["message"]
    finally:
        c.request("resume", {"queue": q})


def test_dependency_on_an_already_completed_job_is_not_blocked(c: RawClient) -> None:
    dep = c.submit("echo", {"value": 3})
    assert c.wait(dep["job_id"])["status"] == "completed"
    job = c.submit("st.plus_one", {"source": dep["job_id"]}, depends_on=[dep["job_id"]])
    assert job["status"] != "blocked"
    assert c.wait(job["job_id"])["result"]["value"] == 4


def test_invalid_dependencies(c: RawClient) -> None:
    missing = uid("missing-")
    err = expect_error("invalid_request", lambda: c.submit("echo", {"value": 1}, depends_on=[missing]))
    assert ["depends_on"] in [e["loc"] for e in err.details["errors"]], err.details
    # A spec depending on a later spec of the same batch: refused, nothing stored.
    x, y = uid("x-"), uid("y-")
    specs = [
        {"job_id": x, "task": "echo", "args": {"value": 1}, "depends_on": [y]},
        {"job_id": y, "task": "echo", "args": {"value": 2}},
    ]
    err = expect_error("invalid_request", lambda: c.request("submit_many", {"jobs": specs}))
    assert err.details["index"] == 0, err.details
    expect_error("not_found", lambda: c.get(x))
    expect_error("not_found", lambda: c.get(y))
    # The same with the second spec naming the first is fine: the order matters.
    ok = c.request("submit_many", {"jobs": [specs[1], {**specs[0], "depends_on": [y]} | {"job_id": uid("x2-")}]})
    assert [j["status"] for j in ok["jobs"]][1] in ("blocked", "pending", "running")
    # A job depending on itself.
    me = uid("me-")
    err = expect_error("invalid_request", lambda: c.submit("echo", {"value": 1}, job_id=me, depends_on=[me]))
    expect_error("not_found", lambda: c.get(me))
    err = expect_error(
        "invalid_request",
        lambda: c.request("submit_many", {"jobs": [{"job_id": me, "task": "echo", "args": {"value": 1}, "depends_on": [me]}]}),
    )
    assert err.details["index"] == 0
    # An unknown id in a batch names the spec.
    err = expect_error(
        "invalid_request",
        lambda: c.request("submit_many", {"jobs": [
            {"task": "echo", "args": {"value": 1}},
            {"task": "echo", "args": {"value": 1}, "depends_on": [missing]},
        ]}),
    )
    assert err.details["index"] == 1


# =======================================================================================
# hold, release, update
# =======================================================================================

def test_hold_and_release_a_pending_job(c: RawClient) -> None:
    q = uid("hq-")
    c.request("pause", {"queue": q})
    try:
        job = c.submit("echo", {"value": "held"}, queue=q)
        jid = job["job_id"]
        assert job["status"] == "pending"
        held = c.request("hold", {"job_id": jid})
        assert held["status"] == "held" and held["job_id"] == jid
        assert c.get(jid)["status"] == "held"
        assert queue_row(c, q)["waiting"] == 1  # held counts as waiting
        err = expect_error("invalid_state", lambda: c.request("hold", {"job_id": jid}))
        assert err.details == {"status": "held"}
        c.request("resume", {"queue": q})
        # A job submitted after it runs through the resumed queue; the held one does not.
        sentinel = c.submit("echo", {"value": "sentinel"}, queue=q)
        assert c.wait(sentinel["job_id"])["status"] == "completed"
        assert c.get(jid)["status"] == "held"
        err = expect_error("timeout", lambda: c.wait(jid, 0.3))
        released = c.request("release", {"job_id": jid})
        assert released["status"] in ("pending", "running"), released
        done = c.wait(jid)
        assert done["status"] == "completed" and done["result"] == "held" and done["attempts"] == 1
        err = expect_error("invalid_state", lambda: c.request("release", {"job_id": jid}))
        assert err.details == {"status": "completed"}
    finally:
        c.request("resume", {"queue": q})


def test_hold_of_a_completed_job_is_invalid_state(c: RawClient) -> None:
    job = c.submit("echo", {"value": 1})
    assert c.wait(job["job_id"])["status"] == "completed"
    err = expect_error("invalid_state", lambda: c.request("hold", {"job_id": job["job_id"]}))
    assert err.details == {"status": "completed"}
    err = expect_error("invalid_state", lambda: c.request("update", {"job_id": job["job_id"], "priority": 3}))
    assert err.details == {"status": "completed"}
    expect_error("not_found", lambda: c.request("hold", {"job_id": uid("nope-")}))


def test_hold_of_a_running_job_is_invalid_state(c: RawClient) -> None:
    job = c.submit("sleep", {"seconds": 30})
    try:
        wait_status(c, job["job_id"], "running")
        err = expect_error("invalid_state", lambda: c.request("hold", {"job_id": job["job_id"]}))
        assert err.details == {"status": "running"}
    finally:
        c.request("cancel", {"job_id": job["job_id"]})


def test_hold_a_blocked_job_release_returns_it_to_blocked(c: RawClient) -> None:
    q = uid("dq-")
    c.request("pause", {"queue": q})
    try:
        dep = c.submit("echo", {"value": 20}, queue=q)
        job = c.submit("st.plus_one", {"source": dep["job_id"]}, depends_on=[dep["job_id"]])
        jid = job["job_id"]
        assert job["status"] == "blocked"
        assert c.request("hold", {"job_id": jid})["status"] == "held"
        assert c.request("release", {"job_id": jid})["status"] == "blocked"
        assert c.get(jid)["status"] == "blocked"
        c.request("resume", {"queue": q})
        done = c.wait(jid)
        assert done["status"] == "completed" and done["result"]["value"] == 21
    finally:
        c.request("resume", {"queue": q})


def test_a_held_blocked_job_stays_held_when_its_dependency_completes(c: RawClient) -> None:
    q = uid("dq2-")
    c.request("pause", {"queue": q})
    try:
        dep = c.submit("echo", {"value": 1}, queue=q)
        job = c.submit("echo", {"value": 2}, depends_on=[dep["job_id"]])
        jid = job["job_id"]
        assert c.request("hold", {"job_id": jid})["status"] == "held"
        c.request("resume", {"queue": q})
        assert c.wait(dep["job_id"])["status"] == "completed"
        assert c.get(jid)["status"] == "held"
        released = c.request("release", {"job_id": jid})
        # Its dependency completed: blocked, then pending at once (or already further).
        assert released["status"] in ("blocked", "pending", "running")
        assert c.wait(jid)["status"] == "completed"
    finally:
        c.request("resume", {"queue": q})


def test_release_of_a_held_delayed_job_is_scheduled(c: RawClient) -> None:
    job = c.submit("echo", {"value": 1}, delay=30)
    jid = job["job_id"]
    try:
        assert job["status"] == "scheduled"
        assert c.request("hold", {"job_id": jid})["status"] == "held"
        assert c.request("release", {"job_id": jid})["status"] == "scheduled"
    finally:
        c.request("cancel", {"job_id": jid})


def test_update_priority_and_queue_of_a_waiting_job(c: RawClient) -> None:
    q1, q3 = uid("uq1-"), uid("uq3-")
    c.request("pause", {"queue": q1})
    c.request("pause", {"queue": q3})
    try:
        job = c.submit("echo", {"value": "moved"}, queue=q1)
        jid = job["job_id"]
        assert job["status"] == "pending" and job["priority"] == 0
        assert queue_row(c, q1)["waiting"] == 1
        assert queue_row(c, q3)["waiting"] == 0
        updated = c.request("update", {"job_id": jid, "priority": 5, "queue": q3})
        assert updated["status"] == "pending" and updated["priority"] == 5 and updated["queue"] == q3
        rec = c.get(jid)
        assert rec["priority"] == 5 and rec["queue"] == q3
        assert queue_row(c, q1)["waiting"] == 0
        assert queue_row(c, q3)["waiting"] == 1
        # Only priority, then nothing: an update needs one of them.
        assert c.request("update", {"job_id": jid, "priority": -7})["priority"] == -7
        expect_error("invalid_request", lambda: c.request("update", {"job_id": jid}))
        expect_error("invalid_request", lambda: c.request("update", {"job_id": jid, "priority": 1001}))
        # Resuming the old queue does not run it; resuming the new one does.
        c.request("resume", {"queue": q1})
        sentinel = c.submit("echo", {"value": 0}, queue=q1)
        assert c.wait(sentinel["job_id"])["status"] == "completed"
        assert c.get(jid)["status"] == "pending"
        c.request("resume", {"queue": q3})
        done = c.wait(jid)
        assert done["status"] == "completed" and done["queue"] == q3 and done["priority"] == -7
        assert queue_row(c, q3)["waiting"] == 0 and queue_row(c, q3)["running"] == 0
        by_queue = c.request("stats")["by_queue"]
        assert by_queue[q3] == {"completed": 1}, by_queue.get(q3)
        assert by_queue[q1] == {"completed": 1}, by_queue.get(q1)
    finally:
        c.request("resume", {"queue": q1})
        c.request("resume", {"queue": q3})


def test_update_of_a_held_job(c: RawClient) -> None:
    q = uid("uh-")
    c.request("pause", {"queue": q})
    try:
        job = c.submit("echo", {"value": 1}, queue=q)
        c.request("hold", {"job_id": job["job_id"]})
        updated = c.request("update", {"job_id": job["job_id"], "priority": 9})
        assert updated["status"] == "held" and updated["priority"] == 9
    finally:
        c.request("cancel", {"job_id": job["job_id"]})
        c.request("resume", {"queue": q})


def test_update_priority_changes_the_start_order(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(*ARGS, "--threads", "1")
    with d.client() as c:
        c.request("configure_queue", {"queue": "po", "aging": 0})
        c.request("pause", {"queue": "po"})
        jobs = c.request("submit_many", {"jobs": [
            {"task": "echo", "args": {"value": i}, "mode": "thread", "queue": "po"} for i in range(5)
        ]})["jobs"]
        c.request("update", {"job_id": jobs[3]["job_id"], "priority": 100})
        c.request("resume", {"queue": "po"})
        done = [c.wait(j["job_id"]) for j in jobs]
        order = [r["result"] for r in sorted(done, key=lambda r: r["started_at"])]
        assert order == [3, 0, 1, 2, 4], order


# =======================================================================================
# fair share and max_concurrency
# =======================================================================================

def test_fair_share_weights_1_and_3(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(*ARGS, "--threads", "1")
    with d.client() as c:
        assert c.request("configure_queue", {"queue": "a", "weight": 1})["weight"] == 1
        assert c.request("configure_queue", {"queue": "b", "weight": 3})["weight"] == 3
        c.request("pause", {"queue": "a"})
        c.request("pause", {"queue": "b"})
        ids = []
        for q in ("a", "b"):
            batch = c.request("submit_many", {"jobs": [
                {"task": "echo", "args": {"value": [q, i]}, "mode": "thread", "queue": q} for i in range(40)
            ]})["jobs"]
            assert {j["status"] for j in batch} == {"pending"}
            ids += [j["job_id"] for j in batch]
        rows = c.request("resume")["queues"]
        assert {r["queue"]: r["paused"] for r in rows if r["queue"] in ("a", "b")} == {"a": False, "b": False}
        done = [c.wait(j, 60) for j in ids]
    assert all(r["status"] == "completed" for r in done)
    order = [r["queue"] for r in sorted(done, key=lambda r: r["started_at"])]
    first = order[:40]
    share_b = first.count("b") / 40
    assert 0.6 <= share_b <= 0.9, f"b had {share_b:.0%} of the first 40 starts: {''.join(first)}"


def test_max_concurrency_caps_running_jobs(c: RawClient) -> None:
    q = uid("mc-")
    row = c.request("configure_queue", {"queue": q, "max_concurrency": 1})
    assert row["max_concurrency"] == 1
    jobs = c.request("submit_many", {"jobs": [
        {"task": "sleep", "args": {"seconds": 0.3}, "queue": q} for _ in range(5)
    ]})["jobs"]
    ids = [j["job_id"] for j in jobs]
    assert sum(j["status"] == "running" for j in jobs) <= 1
    peak = 0

    def all_done() -> bool:
        nonlocal peak
        running = queue_row(c, q)["running"]
        by_queue = c.request("stats")["by_queue"].get(q, {})
        peak = max(peak, running, by_queue.get("running", 0))
        return bool(by_queue.get("completed", 0) == 5)

    wait_until(all_done, 30, 0.02, "the 5 sleep jobs to complete")
    assert peak == 1, f"{peak} jobs of a max_concurrency 1 queue ran at once"
    done = sorted((c.get(j) for j in ids), key=lambda r: r["started_at"])
    for earlier, later in zip(done, done[1:], strict=False):
        assert earlier["finished_at"] <= later["started_at"], "two jobs overlapped"
    # Lifting the cap (nil) lets them run together.
    assert c.request("configure_queue", {"queue": q, "max_concurrency": None})["max_concurrency"] is None
    more = c.request("submit_many", {"jobs": [
        {"task": "sleep", "args": {"seconds": 1.0}, "queue": q} for _ in range(3)
    ]})["jobs"]
    wait_until(lambda: queue_row(c, q)["running"] == 3, 10, 0.02, "3 jobs running at once")
    for j in more:
        c.wait(j["job_id"])


# =======================================================================================
# time
# =======================================================================================

def test_delay_survives_a_kill_9(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(*ARGS)
    with d.client() as c:
        job = c.submit("echo", {"value": "later"}, delay=3)
        jid = job["job_id"]
        assert job["status"] == "scheduled"
        run_at = job["run_at"]
        assert abs(run_at - (job["created_at"] + 3)) < 0.01
    d.kill9()
    d.restart()
    with d.client() as c:
        rec = c.get(jid)
        if time.time() < run_at - 0.05:
            assert rec["status"] == "scheduled", rec
        assert rec["run_at"] == run_at
        done = c.wait(jid, 30)
    assert done["status"] == "completed" and done["result"] == "later"
    assert done["started_at"] >= run_at, f"started {run_at - done['started_at']:.3f} s before its run_at"
    assert done["attempts"] == 1


# =======================================================================================
# recurring schedules
# =======================================================================================

def test_schedule_every_submits_repeatedly_and_remove_stops_it(c: RawClient) -> None:
    name, q = uid("hb-"), uid("sq-")
    sched = c.request("schedule_add", {"name": name, "every": 0.5, "job": {"task": "echo", "args": {"value": "tick"}, "queue": q}})
    assert sched["name"] == name and sched["every"] == 0.5 and sched["cron"] is None
    assert sched["job"]["task"] == "echo" and sched["last_run"] is None and sched["last_job_id"] is None
    assert time.time() < sched["next_run"] <= time.time() + 0.6
    wait_until(lambda: len(jobs_of(c, task="echo", queue=q)) >= 3, 10, 0.05, "3 jobs from the schedule")
    listed = [s for s in c.request("schedule_list")["schedules"] if s["name"] == name]
    assert len(listed) == 1
    s = listed[0]
    assert isinstance(s["last_run"], float) and s["last_run"] <= time.time()
    assert isinstance(s["last_job_id"], str) and s["last_job_id"].startswith(f"{name}@")
    assert c.get(s["last_job_id"])["queue"] == q
    assert s["next_run"] > s["last_run"]
    assert c.request("schedule_remove", {"name": name}) == {}
    removed_at = time.time()
    assert name not in [s["name"] for s in c.request("schedule_list")["schedules"]]
    expect_error("not_found", lambda: c.request("schedule_remove", {"name": name}))

    # No new job after the removal: watch the queue for 4 intervals.
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        late = [j for j in jobs_of(c, queue=q) if j["created_at"] > removed_at]
        assert not late, f"the removed schedule submitted {late}"
        time.sleep(0.1)
    for j in jobs_of(c, queue=q):
        assert j["job_id"].startswith(f"{name}@")
        assert c.wait(j["job_id"])["status"] == "completed"


def test_schedule_every_half_second_gives_each_run_its_own_job(c: RawClient) -> None:
    """Each run submits a job (contract: ``every`` is any duration > 0). The daemon names
    a run's job ``NAME@CREATED:SLOT`` with SLOT in whole seconds, so with ``every < 1``
    two runs can share a name, and the second submit only returns the first job."""
    name, q = uid("half-"), uid("hq-")
    c.request("schedule_add", {"name": name, "every": 0.5, "job": {"task": "echo", "args": {"value": 1}, "queue": q}})
    runs: dict[float, str] = {}
    try:
        def six_runs() -> bool:
            s = [s for s in c.request("schedule_list")["schedules"] if s["name"] == name][0]
            if s["last_run"] is not None:
                runs.setdefault(s["last_run"], s["last_job_id"])
            return len(runs) >= 6

        wait_until(six_runs, 15, 0.02, "6 runs of the schedule")
    finally:
        c.request("schedule_remove", {"name": name})
    n_runs, n_jobs = len(runs), len(set(runs.values()))
    assert n_jobs == n_runs, f"{n_runs} runs made only {n_jobs} distinct jobs: {sorted(runs.values())}"


def test_schedule_cron_next_run_is_on_a_minute(c: RawClient) -> None:
    name = uid("cron-")
    s = c.request("schedule_add", {"name": name, "cron": "* * * * *", "job": {"task": "echo", "args": {"value": 1}}})
    try:
        assert s["cron"] == "* * * * *" and s["every"] is None
        assert time.time() < s["next_run"] <= time.time() + 60.5
        assert s["next_run"] % 60 == pytest.approx(0, abs=1e-6) or s["next_run"] % 60 == pytest.approx(60, abs=1e-6)
    finally:
        c.request("schedule_remove", {"name": name})


@pytest.mark.parametrize(
    "args",
    [
        {"cron": "*/5 * * * *", "every": 10},                    # both
        {},                                                       # neither
        {"cron": "61 * * * *"},                                   # a bad minute
        {"cron": "* * *"},                                        # 3 fields
        {"cron": "not a cron at all"},
        {"every": 0},
        {"every": -1},
        {"every": 1, "job": {"task": "echo", "args": {"value": 1}, "delay": 5}},
        {"every": 1, "job": {"task": "echo", "args": {"value": 1}, "run_at": 2e9}},
        {"every": 1, "job": {"task": "echo", "args": {"value": 1}, "job_id": "fixed"}},
        {"every": 1, "job": {"task": "echo", "args": {"value": 1}, "depends_on": ["x"]}},
        {"every": 1, "job": {"task": "echo", "args": {}}},       # bad task args
        {"every": 1, "job": {"task": "sleep", "args": {"seconds": 1}, "mode": "process"}},
    ],
    ids=["cron-and-every", "neither", "bad-minute", "three-fields", "garbage", "every-0", "every-negative",
         "job-delay", "job-run_at", "job-job_id", "job-depends_on", "job-bad-args", "job-bad-mode"],
)
def test_schedule_add_invalid_requests(c: RawClient, args: dict[str, Any]) -> None:
    name = uid("bad-")
    full = {"name": name, "job": {"task": "echo", "args": {"value": 1}}, **args}
    expect_error("invalid_request", lambda: c.request("schedule_add", full))
    assert name not in [s["name"] for s in c.request("schedule_list")["schedules"]]


def test_schedule_add_unknown_task_and_name_conflict(c: RawClient) -> None:
    expect_error("unknown_task", lambda: c.request("schedule_add", {"name": uid("u-"), "every": 60, "job": {"task": "no.such"}}))
    name = uid("dup-")
    first = c.request("schedule_add", {"name": name, "every": 3600, "job": {"task": "echo", "args": {"value": 1}}})
    try:
        err = expect_error(
            "conflict",
            lambda: c.request("schedule_add", {"name": name, "every": 60, "job": {"task": "echo", "args": {"value": 2}}}),
        )
        assert err.details == {"name": name}
        listed = [s for s in c.request("schedule_list")["schedules"] if s["name"] == name]
        assert listed == [first]
    finally:
        c.request("schedule_remove", {"name": name})


def test_missed_runs_are_caught_up_by_one_run(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(*ARGS)
    name = "catchup"
    with d.client() as c:
        s = c.request("schedule_add", {"name": name, "every": 3600, "job": {"task": "echo", "args": {"value": "caught"}, "queue": "cq"}})
        assert s["next_run"] > time.time() + 3500
        assert jobs_of(c, queue="cq") == []
    assert d.terminate() == 0
    missed = time.time() - 3 * 3600
    with sqlite3.connect(d.db) as db:
        changed = db.execute("UPDATE schedules SET next_run = ? WHERE name = ?", (missed, name)).rowcount
        assert changed == 1
    db.close()
    d.restart()
    with d.client() as c:
        wait_until(lambda: jobs_of(c, queue="cq"), 10, 0.05, "the catch-up run")
        # A burst would be submitted at once at start-up; look for more for a while.
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            jobs = jobs_of(c, queue="cq")
            assert len(jobs) == 1, f"{len(jobs)} catch-up runs, not one: {[j['job_id'] for j in jobs]}"
            time.sleep(0.1)
        job = jobs[0]
        assert job["job_id"].startswith(f"{name}@")
        assert c.wait(job["job_id"])["result"] == "caught"
        s = [s for s in c.request("schedule_list")["schedules"] if s["name"] == name][0]
        assert s["last_job_id"] == job["job_id"]
        assert s["next_run"] > time.time() + 3500, s
        assert s["last_run"] is not None and s["last_run"] <= time.time()
