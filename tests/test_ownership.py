"""Ownership, visibility, allowed tasks and quotas, in the job core itself (in-process:
a real store, executors the test drives, callers made up by the test).

The core believes it runs as ``DAEMON_UID``; ``ADMIN`` is that uid, and ``user(n)`` is a
peer that is not an admin.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from core_harness import ADMIN, DAEMON_UID, CoreHarness, running_core, user

from protocol.errors import Conflict, InvalidRequest, NotFound, Overloaded, Unauthorized, WireError
from pyrexisd.access import Caller
from pyrexisd.core.model import JobRow
from pyrexisd.events import EventFilter
from pyrexisd.executors.base import Outcome, RunAs

ALICE = user(1001)
BOB = user(1002)
ROOT = Caller(0, 0, None, True)


@pytest.fixture
async def h(tmp_path: Any) -> AsyncIterator[CoreHarness]:
    async with running_core(os.path.join(tmp_path, "core.db"), slots=2, user_tasks=("work",)) as harness:
        yield harness


async def error_of(coro: Any) -> WireError:
    try:
        await coro
    except WireError as exc:
        return exc
    raise AssertionError("no error was raised")


# ------------------------------------------------------------------------ who owns what


async def test_a_job_belongs_to_its_submitter_and_its_record_says_so(h: CoreHarness) -> None:
    """Given jobs submitted by Alice and by the admin, then each record's ``owner`` is the
    submitter's uid, and so is the stored row's."""
    mine = await h.service.submit(ALICE, {"task": "work", "delay": 60})
    admins = await h.service.submit(ADMIN, {"task": "work", "delay": 60})
    assert (mine["owner"], admins["owner"]) == (ALICE.uid, DAEMON_UID)
    assert (await h.stored(mine["job_id"])).owner == ALICE.uid


async def test_another_users_job_is_not_found_exactly_like_a_missing_one(h: CoreHarness) -> None:
    """Given Alice's waiting job, when Bob gets, waits on, cancels, retries, holds,
    releases or updates it, then each answers not_found with the very message and details
    of a job that does not exist; Alice and the admin act on it normally."""
    job = await h.service.submit(ALICE, {"task": "work", "delay": 60})
    job_id = job["job_id"]
    s = h.service
    missing = await error_of(s.get(BOB, "no-such-job"))
    for attempt in (
        s.get(BOB, job_id), s.wait(BOB, job_id, 0.01), s.cancel(BOB, job_id), s.retry(BOB, job_id),
        s.hold(BOB, job_id), s.release(BOB, job_id), s.update(BOB, job_id, 5, None), s.current(BOB, job_id),
    ):  # fmt: skip
        err = await error_of(attempt)
        assert isinstance(err, NotFound)
        assert (err.message, err.details) == (missing.message.replace("no-such-job", job_id), {"job_id": job_id})
    assert await s.find(BOB, job_id) is None
    assert (await s.get(ALICE, job_id))["job_id"] == job_id
    assert (await s.hold(ALICE, job_id))["status"] == "held"
    assert (await s.release(ADMIN, job_id))["status"] == "scheduled"
    assert (await s.cancel(ROOT, job_id))["status"] == "cancelled"


async def test_a_wait_on_another_users_running_job_is_refused_at_once_not_when_it_ends(h: CoreHarness) -> None:
    """Given Alice's running job (pinned in memory) and one that ended (a recent end),
    then Bob's wait on either is not_found at once, without waiting for anything."""
    running = await h.service.submit(ALICE, {"task": "work"})
    await h.started(running["job_id"])
    ended = await h.service.submit(ALICE, {"task": "work"})
    await h.started(ended["job_id"])
    h.executor.finish(ended["job_id"], Outcome.success(1))
    await h.service.wait(ALICE, ended["job_id"], 5)
    for job_id in (running["job_id"], ended["job_id"]):
        with pytest.raises(NotFound):
            await asyncio.wait_for(h.service.wait(BOB, job_id, None), 1)


async def test_list_shows_the_callers_own_jobs_and_all_users_is_for_admins(h: CoreHarness) -> None:
    """Given jobs of Alice, Bob, the admin and one from before ownership (no owner), then
    Alice lists only hers, Bob only his, the admin its own and the unowned one (it belongs
    to the daemon's uid), and with all_users every job; all_users is refused to Bob."""
    a = await h.service.submit(ALICE, {"task": "work", "delay": 60})
    b = await h.service.submit(BOB, {"task": "work", "delay": 60})
    d = await h.service.submit(ADMIN, {"task": "work", "delay": 60})
    legacy = await h.service.submit(ADMIN, {"task": "work", "delay": 60})
    await h.store.write(jobs=[_without_owner(await h.stored(legacy["job_id"]))])

    async def ids(caller: Caller, all_users: bool = False) -> set[str]:
        page = await h.service.list_jobs(caller, None, None, None, 100, None, all_users)
        return {j["job_id"] for j in page["jobs"]}

    assert await ids(ALICE) == {a["job_id"]}
    assert await ids(BOB) == {b["job_id"]}
    assert await ids(ADMIN) == {d["job_id"], legacy["job_id"]}
    assert await ids(ADMIN, all_users=True) == {a["job_id"], b["job_id"], d["job_id"], legacy["job_id"]}
    assert await ids(ROOT) == set()  # root is an admin, but has no jobs of its own
    assert isinstance(await error_of(h.service.list_jobs(BOB, None, None, None, 100, None, True)), Unauthorized)


def _without_owner(row: JobRow) -> JobRow:
    row.owner = None
    return row


async def test_a_job_without_an_owner_belongs_to_the_daemons_uid(h: CoreHarness) -> None:
    """Given a job stored before ownership (owner nil), then its record says nil, the
    daemon's own user sees it, and a user who is not an admin does not."""
    job = await h.service.submit(ADMIN, {"task": "work", "delay": 60})
    await h.store.write(jobs=[_without_owner(await h.stored(job["job_id"]))])
    assert (await h.service.get(ADMIN, job["job_id"]))["owner"] is None
    with pytest.raises(NotFound):
        await h.service.get(ALICE, job["job_id"])


async def test_watchers_see_only_the_events_of_jobs_they_may_see(h: CoreHarness) -> None:
    """Given a broad watcher each for Alice, Bob and the admin, when Alice's job runs and
    ends, then Alice's and the admin's watchers get its events and Bob's gets none."""
    subs = {c.uid: h.service.subscribe(c, EventFilter()) for c in (ALICE, BOB, ADMIN)}
    job = await h.service.submit(ALICE, {"task": "work"})
    await h.started(job["job_id"])
    h.executor.finish(job["job_id"], Outcome.success(1))
    await h.service.wait(ALICE, job["job_id"], 5)
    seen = {uid: [e for e in sub.take() if isinstance(e, dict)] for uid, sub in subs.items()}
    assert [e["status"] for e in seen[ALICE.uid]] == ["running", "completed"]
    assert seen[DAEMON_UID] == seen[ALICE.uid]
    assert seen[BOB.uid] == []


async def test_stats_and_queue_rows_count_only_the_callers_jobs_unless_admin(h: CoreHarness) -> None:
    await h.service.submit(ALICE, {"task": "work", "delay": 60})
    await h.service.submit(ALICE, {"task": "work", "delay": 60, "queue": "q2"})
    await h.service.submit(BOB, {"task": "work", "delay": 60})
    assert h.service.stats(ALICE)["by_status"] == {"scheduled": 2}
    assert h.service.stats(BOB)["by_status"] == {"scheduled": 1}
    assert h.service.stats(ADMIN)["by_status"] == {"scheduled": 3}
    rows = {r["queue"]: r["waiting"] for r in h.service.queue_rows(BOB)}
    assert rows == {"default": 1, "q2": 0}
    assert {r["queue"]: r["waiting"] for r in h.service.queue_rows(ADMIN)} == {"default": 2, "q2": 1}


async def test_queue_settings_are_for_admins_only(h: CoreHarness) -> None:
    """The queues are shared: a user who is not an admin may not pause, resume or
    configure them (unauthorized); an admin may."""
    for attempt in (
        h.service.set_paused(ALICE, None, True),
        h.service.set_paused(ALICE, "default", False),
        h.service.configure_queue(ALICE, "default", {"weight": 5.0}),
    ):
        assert isinstance(await error_of(attempt), Unauthorized)
    assert (await h.service.configure_queue(ADMIN, "default", {"weight": 5.0}))["weight"] == 5.0


async def test_metrics_are_for_admins_only(h: CoreHarness) -> None:
    """The metrics count every user's jobs: a user who is not an admin may not read them."""
    await h.service.submit(ALICE, {"task": "work", "args": {}})
    with pytest.raises(Unauthorized):
        h.service.metrics_text(ALICE)
    assert 'pyrexis_jobs_submitted_total{queue="default",task="work"} 1.0' in h.service.metrics_text(ADMIN)


# ------------------------------------------------------------------ what a user may submit


async def test_a_user_may_submit_only_the_tasks_opened_to_users(tmp_path: Any) -> None:
    """Given a daemon whose --user-tasks does not list ``work``, then Alice's submit of it
    is unauthorized (naming the task), ``tasks`` does not show it to her, and the admin
    submits it as before."""
    async with running_core(os.path.join(tmp_path, "c.db"), user_tasks=("echo",)) as h:
        err = await error_of(h.service.submit(ALICE, {"task": "work"}))
        assert isinstance(err, Unauthorized) and err.details == {"task": "work"}
        err = await error_of(h.service.submit_many(ALICE, [{"task": "work", "delay": 5}] * 2))
        assert isinstance(err, Unauthorized) and err.details == {"task": "work", "index": 0}
        assert h.service.task_list(ALICE) == []
        assert [t["name"] for t in h.service.task_list(ADMIN)] == ["work"]
        assert (await h.service.submit(ADMIN, {"task": "work", "delay": 5}))["owner"] == DAEMON_UID


async def test_a_user_cannot_depend_on_another_users_job(h: CoreHarness) -> None:
    """Given Alice's job, then Bob's job that depends on it is refused as an unknown
    dependency (its result would reach Bob's job), while Alice's and the admin's are not."""
    await h.service.submit(ALICE, {"task": "work", "job_id": "A", "delay": 60})
    err = await error_of(h.service.submit(BOB, {"task": "work", "depends_on": ["A"]}))
    assert isinstance(err, InvalidRequest) and "unknown dependency" in err.message
    assert (await h.service.submit(ALICE, {"task": "work", "depends_on": ["A"]}))["status"] == "blocked"
    assert (await h.service.submit(ADMIN, {"task": "work", "depends_on": ["A"]}))["status"] == "blocked"


async def test_a_client_job_id_of_another_user_is_a_conflict_never_their_record(h: CoreHarness) -> None:
    """Client job ids are one space: Bob resubmitting Alice's id with the very same spec
    gets conflict (not her record); Alice gets her job back."""
    spec = {"task": "work", "job_id": "shared-id", "args": {"x": 3}, "delay": 60}
    first = await h.service.submit(ALICE, spec)
    err = await error_of(h.service.submit(BOB, spec))
    assert isinstance(err, Conflict) and err.details == {"job_id": "shared-id"}
    assert (await h.service.submit(ALICE, spec))["job_id"] == first["job_id"]


async def test_a_schedule_belongs_to_its_adder_and_its_runs_to_them(h: CoreHarness) -> None:
    """Given a schedule added by Alice, then Bob neither lists nor removes it (not_found),
    and its run is Alice's job."""
    await h.service.add_schedule(ALICE, "nightly", None, 60.0, {"task": "work"})
    assert [s["name"] for s in h.service.list_schedules(ALICE)] == ["nightly"]
    assert h.service.list_schedules(BOB) == []
    assert isinstance(await error_of(h.service.remove_schedule(BOB, "nightly")), NotFound)
    schedule = h.service.schedules.schedules["nightly"]
    h.clock.advance(61)
    await h.service.schedules._fire(schedule)  # noqa: SLF001 - one run, now
    run = await h.service.get(ALICE, schedule.last_job_id)
    assert run["owner"] == ALICE.uid
    await h.service.remove_schedule(ALICE, "nightly")


# ------------------------------------------------------------------------------- quotas


async def test_a_submit_past_the_users_waiting_quota_is_overloaded_naming_the_limit(tmp_path: Any) -> None:
    """Given max_waiting_per_user 2, then Alice's third waiting job is overloaded with
    details naming the limit, its value and a retry-after; a batch that would pass it is
    refused whole; Bob's quota is his own; when one of Alice's jobs ends, she may again."""
    async with running_core(os.path.join(tmp_path, "c.db"), user_tasks=("work",), max_waiting_per_user=2) as h:
        first = await h.service.submit(ALICE, {"task": "work", "delay": 60})
        await h.service.submit(ALICE, {"task": "work", "delay": 60})
        err = await error_of(h.service.submit(ALICE, {"task": "work", "delay": 60}))
        assert isinstance(err, Overloaded)
        assert err.details["limit"] == "max_waiting_per_user" and err.details["value"] == 2
        assert err.details["retry_after"] > 0
        assert isinstance(await error_of(h.service.submit_many(BOB, [{"task": "work", "delay": 9}] * 3)), Overloaded)
        assert len(await h.service.submit_many(BOB, [{"task": "work", "delay": 9}] * 2)) == 2
        await h.service.cancel(ALICE, first["job_id"])
        await h.service.submit(ALICE, {"task": "work", "delay": 60})
        # retry puts a job back to waiting: it counts too.
        assert isinstance(await error_of(h.service.retry(ALICE, first["job_id"])), Overloaded)


async def test_concurrent_submits_cannot_slip_past_a_quota_together(tmp_path: Any) -> None:
    """Given max_waiting_per_user 5, when 20 submits of Alice race, then exactly 5 are
    accepted: jobs being admitted count before their commit does."""
    async with running_core(os.path.join(tmp_path, "c.db"), user_tasks=("work",), max_waiting_per_user=5) as h:
        results = await asyncio.gather(
            *(h.service.submit(ALICE, {"task": "work", "delay": 60}) for _ in range(20)), return_exceptions=True
        )
        assert sum(isinstance(r, dict) for r in results) == 5
        assert all(isinstance(r, Overloaded) for r in results if not isinstance(r, dict))
        assert h.core.metrics.waiting_by_owner[ALICE.uid] == 5


async def test_max_waiting_bounds_all_users_together_with_a_retry_after_hint(tmp_path: Any) -> None:
    async with running_core(os.path.join(tmp_path, "c.db"), user_tasks=("work",), max_waiting=3) as h:
        await h.service.submit(ALICE, {"task": "work", "delay": 60})
        await h.service.submit(BOB, {"task": "work", "delay": 60})
        await h.service.submit(ADMIN, {"task": "work", "delay": 60})
        for caller in (ALICE, ADMIN):
            err = await error_of(h.service.submit(caller, {"task": "work", "delay": 60}))
            assert isinstance(err, Overloaded)
            assert err.details["limit"] == "max_waiting" and err.details["value"] == 3
            assert 1 <= err.details["retry_after"] <= 60


async def test_the_running_cap_holds_a_users_jobs_back_without_refusing_them(tmp_path: Any) -> None:
    """Given two slots and max_running_per_user 1, when Alice submits three jobs (the last
    one at a higher priority) and Bob one, then all four are accepted; one of Alice's and
    Bob's run, Alice's others stay pending; when her job ends, her highest-priority
    waiting job starts next, and so on: never two of hers at once."""
    async with running_core(
        os.path.join(tmp_path, "c.db"), slots=2, user_tasks=("work",), max_running_per_user=1
    ) as h:
        a1 = await h.service.submit(ALICE, {"task": "work", "job_id": "a1"})
        a2 = await h.service.submit(ALICE, {"task": "work", "job_id": "a2"})
        a3 = await h.service.submit(ALICE, {"task": "work", "job_id": "a3", "priority": 9})
        b1 = await h.service.submit(BOB, {"task": "work", "job_id": "b1"})
        assert a1["status"] == "running" and (a2["status"], a3["status"]) == ("pending", "pending")
        await h.started("b1")
        assert h.executor.running == {"a1", "b1"}
        await asyncio.sleep(0.05)
        assert h.executor.running == {"a1", "b1"}, "a second job of Alice's must not start"
        assert (await h.service.get(ALICE, "a2"))["status"] == "pending"
        h.executor.finish("a1")
        await h.started("a3")
        assert h.executor.running == {"a3", "b1"}
        h.executor.finish("a3")
        await h.started("a2")
        h.executor.finish("a2")
        h.executor.finish("b1")
        for job in (a2, b1):
            assert (await h.service.wait(ADMIN, job["job_id"], 5))["status"] == "completed"


async def test_a_held_back_job_can_be_cancelled_held_and_updated_like_any_pending_job(tmp_path: Any) -> None:
    async with running_core(
        os.path.join(tmp_path, "c.db"), slots=2, user_tasks=("work",), max_running_per_user=1
    ) as h:
        await h.service.submit(ALICE, {"task": "work", "job_id": "run"})
        await h.service.submit(ALICE, {"task": "work", "job_id": "parked"})
        await h.service.submit(ALICE, {"task": "work", "job_id": "other"})
        await h.started("run")
        await h.until(lambda: h.core.waiting.is_parked(2) and h.core.waiting.is_parked(3), what="both parked")
        assert (await h.service.update(ALICE, "parked", 5, None))["priority"] == 5
        assert (await h.service.hold(ALICE, "other"))["status"] == "held"
        assert (await h.service.cancel(ALICE, "parked"))["status"] == "cancelled"
        assert (await h.service.release(ALICE, "other"))["status"] == "pending"
        h.executor.finish("run")
        await h.started("other")


# --------------------------------------------------------------- running as the owner


async def test_a_root_daemon_runs_another_users_shell_job_in_that_users_account(tmp_path: Any) -> None:
    """The core decides the account: a daemon running as root gives a user's shell job the
    user's uid, primary group, groups, home and shell (``RunAs``); root's own jobs and
    those of a daemon that is not root run as the daemon; an owner without an account
    fails the attempt instead of running it."""
    import pwd

    async with running_core(os.path.join(tmp_path, "c.db")) as h:
        dispatch = h.core.dispatch
        nobody = pwd.getpwnam("nobody")
        row = await h.stored((await h.service.submit(ADMIN, {"task": "work", "delay": 60}))["job_id"])
        row.owner = nobody.pw_uid
        dispatch.owners.daemon_uid = 0
        account = dispatch._account(row)  # noqa: SLF001
        assert isinstance(account, RunAs)
        assert (account.uid, account.gid, account.home) == (nobody.pw_uid, nobody.pw_gid, nobody.pw_dir)
        assert nobody.pw_gid in account.groups
        row.owner = 0
        assert dispatch._account(row) is None  # noqa: SLF001
        row.owner = 2**31 - 7  # no such account
        failure = dispatch._account(row)  # noqa: SLF001
        assert isinstance(failure, Outcome) and not failure.ok and not failure.retryable
        dispatch.owners.daemon_uid = DAEMON_UID
        row.owner = nobody.pw_uid
        assert dispatch._account(row) is None  # noqa: SLF001


async def test_the_running_cap_holds_with_jobs_paged_in_from_the_store(tmp_path: Any) -> None:
    """Given a window of 2 ready jobs per queue (the rest paged in from the store), two
    slots and max_running_per_user 1, when Alice submits 12 jobs and Bob 4, then every job
    runs to its end, never two of Alice's at once, and Bob's are not held behind hers."""
    async with running_core(
        os.path.join(tmp_path, "c.db"), slots=2, window=2, user_tasks=("work",), max_running_per_user=1
    ) as h:
        alice = [(await h.service.submit(ALICE, {"task": "work", "priority": i % 3}))["job_id"] for i in range(12)]
        bob = [(await h.service.submit(BOB, {"task": "work"}))["job_id"] for _ in range(4)]
        owners = {**{j: "alice" for j in alice}, **{j: "bob" for j in bob}}
        done: list[str] = []
        while len(done) < 16:
            await h.until(lambda: h.executor.running - set(done), what="a job to run")
            running = sorted(h.executor.running)
            assert [owners[j] for j in running].count("alice") <= 1, running
            for job_id in running:
                h.executor.finish(job_id)
                done.append(job_id)
            await asyncio.sleep(0.005)
        for job_id in alice + bob:
            assert (await h.service.wait(ADMIN, job_id, 5))["status"] == "completed"
        order = [owners[j] for j in h.executor.started]
        assert order.index("bob") < 4, order  # Bob did not wait for Alice's twelve
