"""The job core in-process: a real Store on a temp file, executors the test drives, a
clock the test moves. The middle layer between the pure rooms and the whole daemon:
the ledger's change primitive, dispatch and settle, waiting and promotion, and the
service's commands.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from core_harness import ADMIN, CoreHarness, running_core, writer_blocked

from protocol.errors import InvalidState, NotFound, ShuttingDown, StorageError, Timeout
from pyrexisd.core import model
from pyrexisd.core.linger import Linger
from pyrexisd.events import EventFilter, StoredRange
from pyrexisd.executors.base import Outcome


@pytest.fixture
async def h(tmp_path: Any) -> AsyncIterator[CoreHarness]:
    async with running_core(os.path.join(tmp_path, "core.db")) as harness:
        yield harness


@pytest.fixture
async def h2(tmp_path: Any) -> AsyncIterator[CoreHarness]:
    async with running_core(os.path.join(tmp_path, "core.db"), slots=2) as harness:
        yield harness


# --------------------------------------------------------------------- the ledger's change


async def test_a_change_is_stored_then_published_and_a_stalled_commit_shows_nothing(h: CoreHarness) -> None:
    """Given a waiting job and a watcher, when its change waits for the disk (another
    connection holds the write lock), then nobody sees the new state — not the store, not
    the watcher, not ``current`` — until the commit lands; then all of them do."""
    job = await h.service.submit(ADMIN, {"task": "work", "delay": 60})
    sub = h.service.subscribe(ADMIN, EventFilter(job_id=job["job_id"]))
    row = await h.core.ledger.current(job["job_id"])
    with writer_blocked(h.path) as release:
        change = asyncio.ensure_future(h.core.waiting.change(row, lambda r: r.move("held")))
        await asyncio.sleep(0.05)
        assert not change.done()
        assert (await h.stored(job["job_id"])).status == "scheduled"
        assert sub.take() == []
        current = asyncio.ensure_future(h.core.ledger.current(job["job_id"]))
        await asyncio.sleep(0.02)
        assert not current.done(), "current() must wait for the change in flight"
        release()
        await asyncio.wait_for(change, 5)
    assert (await h.stored(job["job_id"])).status == "held"
    assert [e["status"] for e in sub.take() if isinstance(e, dict)] == ["held"]
    assert (await asyncio.wait_for(current, 5)).status == "held"


async def test_a_change_that_cannot_commit_is_undone_and_tells_nobody(h: CoreHarness) -> None:
    """Given a waiting job, when its change fails to commit (the database is locked by
    another process past the busy timeout), then StorageError is raised, every field of
    the row is back as it was, no event is published, the job waits where it did, and
    the next change of it works."""
    job = await h.service.submit(ADMIN, {"task": "work", "delay": 60, "priority": 3})
    row = await h.core.ledger.current(job["job_id"])
    before = row.memento()
    sub = h.service.subscribe(ADMIN, EventFilter(job_id=job["job_id"]))
    await h.writer_busy_timeout(50)
    with writer_blocked(h.path), pytest.raises(StorageError):
        await h.service.update(ADMIN, job["job_id"], priority=9, queue="other")
    assert row.memento() == before
    assert sub.take() == []
    assert h.core.scheduler.is_waiting(row.seq)
    assert not h.core.ledger.is_locked(row.seq)
    assert (await h.service.hold(ADMIN, job["job_id"]))["status"] == "held"


async def test_a_failed_change_never_wakes_a_waiter_and_a_committed_end_does(h: CoreHarness) -> None:
    """Given a client waiting on a waiting job, when its cancel cannot commit, then the
    waiter keeps waiting; when the cancel commits, it gets the cancelled record."""
    job = await h.service.submit(ADMIN, {"task": "work", "delay": 60})
    waiter = asyncio.ensure_future(h.service.wait(ADMIN, job["job_id"], None))
    await asyncio.sleep(0.01)
    await h.writer_busy_timeout(50)
    with writer_blocked(h.path), pytest.raises(StorageError):
        await h.service.cancel(ADMIN, job["job_id"])
    await asyncio.sleep(0.02)
    assert not waiter.done()
    await h.service.cancel(ADMIN, job["job_id"])
    record = await asyncio.wait_for(waiter, 5)
    assert record["status"] == "cancelled" and record["error"]["type"] == "cancelled"


async def test_lines_written_with_a_change_are_published_before_the_end(h: CoreHarness) -> None:
    """Given a watcher of a running job, when it fails with a traceback, then the stored
    traceback lines reach the watcher before the terminal state event."""
    job = await h.service.submit(ADMIN, {"task": "work", "max_retries": 0})
    await h.started(job["job_id"])
    sub = h.service.subscribe(ADMIN, EventFilter(job_id=job["job_id"]))
    h.executor.finish(job["job_id"], Outcome.failure("exception", "boom", retryable=False, tb="Traceback\n  line\nError: boom\n"))
    await h.service.wait(ADMIN, job["job_id"], 5)
    events = sub.take()
    kinds = ["range" if isinstance(e, StoredRange) else e["kind"] for e in events]
    assert kinds == ["range", "state"], kinds
    stored = events[0]
    assert isinstance(stored, StoredRange) and (stored.first, stored.last) == (1, 3)
    assert [ln.line for ln in await h.service.read_logs((await h.stored(job["job_id"])).seq, 1)] == [
        "Traceback", "  line", "Error: boom",
    ]


async def cancelled_mid_commit(h: CoreHarness, command: Any) -> None:
    """Run ``command`` (a coroutine of the service) and cancel it while its commit waits
    for the disk, as the server does to the requests of a client that disconnects; then
    let the disk go. The command ends first; then its caller hears of the cancel."""
    with writer_blocked(h.path) as release:
        task = asyncio.ensure_future(command)
        await h.until(lambda: h.store.group_commit.committing, what="the command's commit on its way")
        task.cancel()
        release()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_submit_whose_caller_leaves_mid_commit_still_runs_and_frees_its_slot(h: CoreHarness) -> None:
    """Given one slot and a submit whose commit waits for the disk, when its caller is
    cancelled (its client went away), then the job, which commits regardless, runs and
    completes, and the slot then serves the next job. (It used to stay ``running`` in the
    store with no attempt, its slot lost for good: six such clients stalled thread mode.)"""
    await cancelled_mid_commit(h, h.service.submit(ADMIN, {"task": "work", "job_id": "gone"}))
    await h.started("gone")
    h.executor.finish("gone")
    assert (await h.service.wait(ADMIN, "gone", 5))["status"] == "completed"
    after = await h.service.submit(ADMIN, {"task": "work"})
    await h.started(after["job_id"])
    assert h.core.scheduler.busy["thread"] == 1


async def test_a_cancel_whose_caller_leaves_mid_commit_holds_and_the_job_never_runs(h: CoreHarness) -> None:
    """Given a job waiting behind a running one, when a cancel of it is itself cancelled
    while its commit waits for the disk, then the job is cancelled in memory as in the
    store, and the freed slot goes to the next job, never to the cancelled one. (The
    change used to be undone in memory and the job put back in the scheduler, while the
    store said cancelled: it would have run.)"""
    first = (await h.service.submit(ADMIN, {"task": "work"}))["job_id"]
    waiting = (await h.service.submit(ADMIN, {"task": "work"}))["job_id"]
    await h.started(first)
    await cancelled_mid_commit(h, h.service.cancel(ADMIN, waiting))
    assert (await h.service.wait(ADMIN, waiting, 5))["status"] == "cancelled"
    assert (await h.stored(waiting)).status == "cancelled"
    h.executor.finish(first)
    third = (await h.service.submit(ADMIN, {"task": "work"}))["job_id"]
    await h.started(third)
    assert waiting not in h.executor.started


# ------------------------------------------------------------------- dispatch and settle


async def test_a_submit_with_a_free_slot_is_stored_running_before_its_work_starts(h: CoreHarness) -> None:
    """Given a free slot, when a job is submitted, then its record says running with one
    attempt, the store says so too, and its work has started."""
    job = await h.service.submit(ADMIN, {"task": "work", "args": {"x": 7}})
    assert (job["status"], job["attempts"]) == ("running", 1)
    assert (await h.stored(job["job_id"])).status == "running"
    await h.started(job["job_id"])
    assert h.executor.calls[job["job_id"]].args == {"x": 7}


async def test_an_end_and_the_next_start_share_one_commit(h: CoreHarness) -> None:
    """Given one slot, a running job and one waiting, when the first finishes, then one
    group commit records both its end and the next job's start."""
    first = await h.service.submit(ADMIN, {"task": "work"})
    second = await h.service.submit(ADMIN, {"task": "work"})
    assert second["status"] == "pending"
    await h.started(first["job_id"])
    await asyncio.sleep(0.02)  # let submit commits settle
    commits = h.store.group_commit.commits
    h.executor.finish(first["job_id"], Outcome.success(42))
    done = await h.service.wait(ADMIN, first["job_id"], 5)
    assert (done["status"], done["result"]) == ("completed", 42)
    await h.started(second["job_id"])
    assert h.store.group_commit.commits == commits + 1
    assert (await h.stored(second["job_id"])).status == "running"


async def test_a_retryable_failure_backs_off_then_runs_again_when_its_time_comes(h: CoreHarness) -> None:
    """Given a job with one retry, when its attempt fails retryably, then it is retrying
    with a run_at in the future and does not start; when the clock passes run_at, it
    becomes pending and runs as attempt 2, and it ends completed."""
    job = await h.service.submit(ADMIN, {"task": "work", "max_retries": 1})
    await h.started(job["job_id"])
    h.executor.finish(job["job_id"], Outcome.failure("exception", "flaky"))
    await h.until(lambda: h.core.scheduler.is_waiting(1), what="the retry to wait")
    stored = await h.stored(job["job_id"])
    assert stored.status == "retrying" and stored.run_at > h.clock.now
    assert stored.error["message"] == "flaky"
    h.clock.advance(stored.run_at - h.clock.now + 0.001)
    h.core.waiting.release_due()
    await h.started(job["job_id"])
    assert (await h.stored(job["job_id"])).attempts == 2
    h.executor.finish(job["job_id"])
    assert (await h.service.wait(ADMIN, job["job_id"], 5))["status"] == "completed"


async def test_an_end_that_cannot_commit_is_retried_and_hidden_until_durable(h: CoreHarness) -> None:
    """Given a running job, when its end cannot be committed (the disk is locked), then
    the job stays running in the store and for waiters; once the lock goes, the end
    commits by itself and the waiter gets it."""
    job = await h.service.submit(ADMIN, {"task": "work"})
    await h.started(job["job_id"])
    await h.writer_busy_timeout(20)
    with writer_blocked(h.path) as release:
        h.executor.finish(job["job_id"], Outcome.success("late"))
        waiter = asyncio.ensure_future(h.service.wait(ADMIN, job["job_id"], None))
        await asyncio.sleep(0.3)  # several failed commits and retries
        assert not waiter.done()
        assert (await h.stored(job["job_id"])).status == "running"
        release()
        record = await asyncio.wait_for(waiter, 10)
    assert (record["status"], record["result"]) == ("completed", "late")


async def test_a_start_that_cannot_commit_goes_back_to_waiting_and_starts_later(h: CoreHarness) -> None:
    """Given a waiting job whose delay ends while the disk is locked, when its promotion
    fails, then it stays scheduled; when the lock goes and its timer comes again, it runs."""
    job = await h.service.submit(ADMIN, {"task": "work", "delay": 10})
    h.clock.advance(11)
    await h.writer_busy_timeout(20)
    with writer_blocked(h.path):
        h.core.waiting.release_due()
        await asyncio.sleep(0.2)
        assert (await h.stored(job["job_id"])).status == "scheduled"
    h.clock.advance(5)  # past the retry pause of the promotion
    h.core.waiting.release_due()
    await h.started(job["job_id"])


async def test_a_cancelled_running_job_ends_at_once_but_keeps_its_slot_until_its_work_stops(h: CoreHarness) -> None:
    """Given one slot, a running job and a waiting one, when the running job is cancelled,
    then it is cancelled at once and its work is told to stop, but the next job starts
    only when that work has really stopped."""
    first = await h.service.submit(ADMIN, {"task": "work"})
    second = await h.service.submit(ADMIN, {"task": "work"})
    await h.started(first["job_id"])
    record = await h.service.cancel(ADMIN, first["job_id"])
    assert record["status"] == "cancelled"
    assert h.executor.calls[first["job_id"]].cancelled
    await asyncio.sleep(0.05)
    assert second["job_id"] not in h.executor.running
    h.executor.stop_cancelled(first["job_id"])
    await h.started(second["job_id"])
    assert (await h.stored(first["job_id"])).status == "cancelled"


async def test_a_timeout_fails_the_attempt_and_the_late_result_is_discarded(h: CoreHarness) -> None:
    """Given a job with a 50 ms timeout, when its work does not return, then it fails with
    ``timeout``; when the work returns afterwards, its result is not recorded."""
    job = await h.service.submit(ADMIN, {"task": "work", "timeout": 0.05})
    await h.started(job["job_id"])
    record = await h.service.wait(ADMIN, job["job_id"], 5)
    assert (record["status"], record["error"]["type"]) == ("failed", "timeout")
    h.executor.finish(job["job_id"], Outcome.success("too late"))
    await h.until(lambda: not h.executor.running, what="the work to stop")
    stored = await h.stored(job["job_id"])
    assert stored.status == "failed" and stored.result is None


async def test_an_end_lingers_for_the_other_slots_end_so_both_ride_one_commit(h2: CoreHarness) -> None:
    """Given two slots busy with jobs that run briefly and two jobs waiting, when one job
    ends, its end and the next start wait for the other slot (the linger made long here,
    so the test does not race a timer); when the other ends, one commit carries both ends
    and both starts. An end with nothing else running does not linger."""
    h2.core.dispatch.linger.limit = 60.0
    a, b, c, d = [(await h2.service.submit(ADMIN, {"task": "work"}))["job_id"] for _ in range(4)]
    await h2.started(a)
    await h2.started(b)
    commits = h2.store.group_commit.commits

    h2.executor.finish(a)
    await asyncio.sleep(0.05)
    assert h2.store.group_commit.commits == commits, "a's end should wait for b's"
    assert (await h2.stored(a)).status == "running"
    assert c not in h2.executor.running

    h2.executor.finish(b)  # nothing else runs now: no linger, and a's writes ride along
    await h2.started(c)
    await h2.started(d)
    assert h2.store.group_commit.commits == commits + 1
    assert (await h2.stored(a)).status == "completed" and (await h2.stored(b)).status == "completed"

    # The last two: d's end lingers for c's; c's end then has nothing to wait for.
    h2.executor.finish(c)
    h2.executor.finish(d)
    await h2.until(lambda: not h2.executor.running, what="both ended")
    deadline = asyncio.get_running_loop().time() + 5
    while [(await h2.stored(j)).status for j in (c, d)] != ["completed", "completed"]:
        assert asyncio.get_running_loop().time() < deadline, "c's and d's ends never committed"
        await asyncio.sleep(0.01)


def test_the_linger_waits_only_for_brief_modes_with_company_on_the_way() -> None:
    """The decision alone: a mode with no figure yet, or whose jobs typically run a
    linger or longer, never waits; a brief mode waits while another of its attempts
    works, or while a start of it is on its way to the disk; the typical run is a moving
    average, so one slow attempt does not end the linger, a run of them does."""
    linger = Linger(limit=0.001)
    assert linger.delay("thread", committing=True) is None  # nothing known of the mode yet
    linger.began("thread")
    linger.returned("thread", 0.0002)
    assert linger.delay("thread", committing=True) is None  # brief, but no company
    linger.began("thread")
    assert linger.delay("thread", committing=False) == 0.001  # another attempt works
    assert linger.delay("process", committing=False) is None  # not of its mode
    linger.returned("thread", 0.0002)
    with linger.starting(["thread", "process"]):
        assert linger.delay("thread", committing=True) == 0.001  # a start on its way
        assert linger.delay("thread", committing=False) is None  # not on the disk yet
    assert linger.delay("thread", committing=True) is None  # that start went through
    linger.began("thread")
    linger.returned("thread", 0.003)  # one slow attempt: the average stays brief
    linger.began("thread")
    assert linger.delay("thread", committing=False) == 0.001
    for _ in range(3):
        linger.began("thread")
        linger.returned("thread", 0.003)
    assert linger.delay("thread", committing=False) is None  # slow now: ends commit at once


# ---------------------------------------------------------------- waiting and promotion


async def test_a_dependent_waits_blocked_and_runs_with_its_dependency_result(h: CoreHarness) -> None:
    """Given B depending on A, then B is blocked while A runs; when A completes, B runs
    and receives A's result as an input."""
    a = await h.service.submit(ADMIN, {"task": "work", "job_id": "A"})
    b = await h.service.submit(ADMIN, {"task": "work", "job_id": "B", "depends_on": ["A"]})
    assert b["status"] == "blocked"
    await h.started("A")
    h.executor.finish("A", Outcome.success({"rows": 3}))
    await h.started("B")
    assert h.executor.calls["B"].inputs == {"A": {"rows": 3}}
    assert a["job_id"] == "A"


async def test_a_dependent_of_a_failed_job_is_cancelled_naming_it(h: CoreHarness) -> None:
    await h.service.submit(ADMIN, {"task": "work", "job_id": "A"})
    await h.service.submit(ADMIN, {"task": "work", "job_id": "B", "depends_on": ["A"]})
    await h.started("A")
    h.executor.finish("A", Outcome.failure("exception", "no", retryable=False))
    record = await h.service.wait(ADMIN, "B", 5)
    assert record["status"] == "cancelled"
    assert record["error"]["type"] == "dependency_failed" and "A" in record["error"]["message"]


async def test_a_scheduled_job_becomes_pending_only_when_the_clock_passes_run_at(h: CoreHarness) -> None:
    job = await h.service.submit(ADMIN, {"task": "work", "delay": 30})
    assert job["status"] == "scheduled"
    h.clock.advance(29)
    h.core.waiting.release_due()
    await asyncio.sleep(0.05)
    assert (await h.stored(job["job_id"])).status == "scheduled"
    h.clock.advance(2)
    h.core.waiting.release_due()
    await h.started(job["job_id"])


async def test_held_jobs_wait_until_released_and_keep_their_queue_position_rules(h2: CoreHarness) -> None:
    """Given two free slots, a held job does not start; released, it starts."""
    job = await h2.service.submit(ADMIN, {"task": "work", "delay": 60})
    assert (await h2.service.hold(ADMIN, job["job_id"]))["status"] == "held"
    h2.clock.advance(120)
    h2.core.waiting.release_due()
    await asyncio.sleep(0.05)
    assert job["job_id"] not in h2.executor.running
    assert (await h2.service.release(ADMIN, job["job_id"]))["status"] == "pending"
    await h2.started(job["job_id"])


# -------------------------------------------------------------------- the service's commands


async def test_commands_refuse_states_they_do_not_apply_to(h: CoreHarness) -> None:
    running = await h.service.submit(ADMIN, {"task": "work"})
    await h.started(running["job_id"])
    with pytest.raises(InvalidState):
        await h.service.hold(ADMIN, running["job_id"])
    with pytest.raises(InvalidState):
        await h.service.retry(ADMIN, running["job_id"])
    with pytest.raises(InvalidState):
        await h.service.release(ADMIN, running["job_id"])
    with pytest.raises(InvalidState):
        await h.service.update(ADMIN, running["job_id"], 3, None)
    with pytest.raises(NotFound):
        await h.service.cancel(ADMIN, "no-such-job")
    h.executor.finish(running["job_id"])
    await h.service.wait(ADMIN, running["job_id"], 5)
    with pytest.raises(InvalidState):
        await h.service.cancel(ADMIN, running["job_id"])


async def test_retry_of_a_failed_job_runs_a_fresh_round(h: CoreHarness) -> None:
    job = await h.service.submit(ADMIN, {"task": "work"})
    await h.started(job["job_id"])
    h.executor.finish(job["job_id"], Outcome.failure("exception", "bad", retryable=False))
    assert (await h.service.wait(ADMIN, job["job_id"], 5))["status"] == "failed"
    again = await h.service.retry(ADMIN, job["job_id"])
    assert again["status"] == "pending" and again["error"] is None
    await h.started(job["job_id"])
    h.executor.finish(job["job_id"], Outcome.success(1))
    done = await h.service.wait(ADMIN, job["job_id"], 5)
    assert (done["status"], done["attempts"]) == ("completed", 2)


async def test_a_wait_times_out_with_the_status_it_saw(h: CoreHarness) -> None:
    job = await h.service.submit(ADMIN, {"task": "work", "delay": 60})
    with pytest.raises(Timeout) as info:
        await h.service.wait(ADMIN, job["job_id"], 0.02)
    assert info.value.details == {"status": "scheduled"}


async def test_an_idempotent_resubmit_returns_the_same_job_and_a_different_spec_conflicts(h: CoreHarness) -> None:
    first = await h.service.submit(ADMIN, {"task": "work", "job_id": "mine", "args": {"x": 1}})
    again = await h.service.submit(ADMIN, {"task": "work", "job_id": "mine", "args": {"x": 1}})
    assert again["job_id"] == "mine" and again["created_at"] == first["created_at"]
    from protocol.errors import Conflict

    with pytest.raises(Conflict):
        await h.service.submit(ADMIN, {"task": "work", "job_id": "mine", "args": {"x": 2}})


async def test_a_stopping_core_refuses_work_and_interrupts_what_runs(h: CoreHarness) -> None:
    """Given a running job (on_interrupt retry), when the core stops taking work, then a
    submit answers shutting_down, and interrupting puts the job back to pending with its
    attempt counted."""
    job = await h.service.submit(ADMIN, {"task": "work"})
    await h.started(job["job_id"])
    h.core.stop_taking_work()
    with pytest.raises(ShuttingDown):
        await h.service.submit(ADMIN, {"task": "work"})
    await h.core.dispatch.interrupt_rest()
    stored = await h.stored(job["job_id"])
    assert (stored.status, stored.attempts) == ("pending", 1)


async def test_a_restarted_core_recovers_what_was_running(tmp_path: Any) -> None:
    """Given a core that died with a job running (nothing shut down in order), when a new
    core loads the same file, then the job is pending again with a log line saying it was
    interrupted, and it runs as attempt 2."""
    path = os.path.join(tmp_path, "core.db")
    async with running_core(path) as first:
        job = await first.service.submit(ADMIN, {"task": "work"})
        await first.started(job["job_id"])
    async with running_core(path) as second:
        await second.started(job["job_id"])
        stored = await second.stored(job["job_id"])
        assert (stored.status, stored.attempts) == ("running", 2)
        lines = await second.service.read_logs(stored.seq, 1)
        assert [ln.line for ln in lines] == ["interrupted: back to pending"]


def test_the_rules_of_the_model_are_pure() -> None:
    """apply_outcome: a success beyond max_result fails the job, not retryable."""
    row = model.JobRow(seq=1, job_id="j", task="t", args={}, queue="default", priority=0, mode="thread",
                       status="running", created_at=0.0, max_retries=3, on_interrupt="retry", attempts=1)
    from pyrexisd.retry import Backoff

    model.apply_outcome(row, Outcome.success("x" * 100), 5.0, Backoff(), max_result=10)
    assert row.status == "failed" and row.error is not None and row.error["type"] == "result_too_large"


async def test_an_end_nobody_waits_for_rides_with_the_next_commit_and_a_waiter_hurries_it(tmp_path: Any) -> None:
    """Given a running job nobody waits on (and lazy writes allowed to wait a minute),
    when it ends, then its end is not committed on its own; a wait that comes then
    makes it commit at once, and the wait gets the end."""
    async with running_core(os.path.join(tmp_path, "core.db"), lazy_delay=60.0) as h:
        job = await h.service.submit(ADMIN, {"task": "work"})
        await h.started(job["job_id"])
        seq = (await h.stored(job["job_id"])).seq
        await asyncio.sleep(0.01)
        commits = h.store.group_commit.commits
        h.executor.finish(job["job_id"], Outcome.success(5))
        await h.until(lambda: h.core.ledger.is_locked(seq), what="the end to be queued")
        await asyncio.sleep(0.1)  # an urgent write would have committed long since
        assert h.store.group_commit.commits == commits
        assert (await h.stored(job["job_id"])).status == "running"
        record = await asyncio.wait_for(h.service.wait(ADMIN, job["job_id"], None), 5)
        assert (record["status"], record["result"]) == ("completed", 5)


async def test_an_end_rides_with_the_next_submit(tmp_path: Any) -> None:
    """Given a lazy end queued, when another job is submitted, then one commit carries both."""
    async with running_core(os.path.join(tmp_path, "core.db"), slots=2, lazy_delay=60.0) as h:
        job = await h.service.submit(ADMIN, {"task": "work"})
        await h.started(job["job_id"])
        seq = (await h.stored(job["job_id"])).seq
        h.executor.finish(job["job_id"])
        await h.until(lambda: h.core.ledger.is_locked(seq), what="the end to be queued")
        commits = h.store.group_commit.commits
        await h.service.submit(ADMIN, {"task": "work"})
        assert h.store.group_commit.commits == commits + 1
        assert (await h.stored(job["job_id"])).status == "completed"


async def test_an_end_someone_waits_for_is_committed_at_once(h: CoreHarness) -> None:
    """Given a client already waiting on a running job, its end does not wait to ride."""
    job = await h.service.submit(ADMIN, {"task": "work"})
    await h.started(job["job_id"])
    waiter = asyncio.ensure_future(h.service.wait(ADMIN, job["job_id"], None))
    await asyncio.sleep(0.01)
    h.executor.finish(job["job_id"], Outcome.success(6))
    record = await asyncio.wait_for(waiter, 0.5)
    assert record["result"] == 6


async def test_stats_split_a_commit_and_measure_the_loop_lag(h: CoreHarness) -> None:
    """stats tells where a commit's time goes (the parts add up to the whole, queueing
    aside) and how late the loop runs a timer."""
    h.core.metrics.loop_lag.start()
    try:
        for _ in range(3):
            await h.service.submit(ADMIN, {"task": "work", "delay": 60})
        await h.until(lambda: len(h.core.metrics.loop_lag) >= 2, what="two loop-lag probes")
        stats = h.service.stats(ADMIN)
    finally:
        h.core.metrics.loop_lag.stop()
    store = stats["store"]
    split = store["commit_split_ms"]
    assert set(split) == {"queued", "handover", "statements", "commit", "handback"}
    assert all(v >= 0 for v in split.values())
    parts = split["handover"] + split["statements"] + split["commit"] + split["handback"]
    assert abs(parts - store["commit_ms"]) < 0.01 + 0.01 * store["commit_ms"]
    assert set(stats["loop_lag_ms"]) == {"p50", "p99", "max"}


# ----------------------------------------------------------------- pending jobs paged in


async def _run_all(h: CoreHarness, count: int) -> list[str]:
    """Finish every job as it starts until ``count`` have run; the start order."""
    done: list[str] = []
    while len(done) < count:
        await h.until(lambda: h.executor.running - set(done), what=f"job {len(done) + 1} of {count} to start")
        for job_id in sorted(h.executor.running - set(done)):
            h.executor.finish(job_id)
            done.append(job_id)
    return h.executor.started[-count:]


async def test_pending_jobs_beyond_the_window_start_in_priority_order(tmp_path: Any) -> None:
    """Given 40 jobs of mixed priority in a paused queue and a window of 3, when the queue
    resumes, then all start, in the order of one big priority heap (aging off), and the
    scheduler never held more than twice its window of them."""
    async with running_core(os.path.join(tmp_path, "core.db"), window=3, aging=0.0) as h:
        await h.service.set_paused(ADMIN, "q", True)
        ids = []
        for i in range(40):
            job = await h.service.submit(ADMIN, {"task": "work", "queue": "q", "priority": (i * 7) % 5, "job_id": f"j{i:02d}"})
            ids.append((-((i * 7) % 5), i, job["job_id"]))
            held = sum(1 for seq in range(1, 200) if h.core.scheduler.is_waiting(seq))
            assert held <= 6
        await h.service.set_paused(ADMIN, "q", False)
        order = await _run_all(h, 40)
        assert order == [job_id for _p, _i, job_id in sorted(ids)]


async def test_a_restarted_core_pages_its_pending_jobs_in_and_runs_them_all(tmp_path: Any) -> None:
    """Given 30 pending jobs left in a paused queue, when a new core loads the file with a
    window of 2, then it holds none of them in memory until needed, and once resumed runs
    them all in submission order (equal priorities)."""
    path = os.path.join(tmp_path, "core.db")
    async with running_core(path, window=2) as first:
        await first.service.set_paused(ADMIN, "q", True)
        ids = [(await first.service.submit(ADMIN, {"task": "work", "queue": "q"}))["job_id"] for _ in range(30)]
    async with running_core(path, window=2) as second:
        assert second.core.scheduler.waiting_count() == 30
        await second.service.set_paused(ADMIN, "q", False)
        assert await _run_all(second, 30) == ids


async def test_a_job_beyond_the_window_can_be_cancelled_and_moved_to_the_front(tmp_path: Any) -> None:
    """Given jobs beyond the window, a cancel of one of them takes (it never starts), and a
    priority raise of another brings it to the front."""
    async with running_core(os.path.join(tmp_path, "core.db"), window=2, aging=0.0) as h:
        await h.service.set_paused(ADMIN, "q", True)
        ids = [(await h.service.submit(ADMIN, {"task": "work", "queue": "q"}))["job_id"] for _ in range(12)]
        assert (await h.service.cancel(ADMIN, ids[9]))["status"] == "cancelled"
        assert (await h.service.update(ADMIN, ids[10], priority=9, queue=None))["priority"] == 9
        await h.service.set_paused(ADMIN, "q", False)
        order = await _run_all(h, 11)
        assert order == [ids[10], *ids[:9], ids[11]]
        assert (await h.stored(ids[9])).status == "cancelled"


async def test_a_new_aging_rate_reorders_the_jobs_beyond_the_window(tmp_path: Any) -> None:
    """Given old low-priority jobs and newer high-priority ones beyond the window, the order
    follows the queue's aging rate: without aging the high priorities go first; with a
    strong aging the old jobs do."""
    async with running_core(os.path.join(tmp_path, "core.db"), window=2, aging=0.0) as h:
        await h.service.set_paused(ADMIN, "q", True)
        old = []
        for _ in range(5):
            old.append((await h.service.submit(ADMIN, {"task": "work", "queue": "q", "priority": 0}))["job_id"])
        h.clock.advance(100)
        new = []
        for _ in range(5):
            new.append((await h.service.submit(ADMIN, {"task": "work", "queue": "q", "priority": 10}))["job_id"])
        await h.service.configure_queue(ADMIN, "q", {"aging": 1.0})  # 100 s of waiting outweigh 10 points
        await h.service.set_paused(ADMIN, "q", False)
        assert await _run_all(h, 10) == old + new


async def test_a_batch_starts_what_free_slots_allow_in_any_of_its_queues(h2: CoreHarness) -> None:
    """Given a paused queue and an open one and two free slots, when one batch
    interleaves jobs of both, then the open queue's first two start at submit (a refusal
    in the paused queue does not stop the batch's other queue), the rest wait."""
    await h2.service.set_paused(ADMIN, "shut", True)
    specs = [{"task": "work", "queue": q} for q in ("shut", "open", "shut", "open", "open")]
    jobs = await h2.service.submit_many(ADMIN, specs)

    assert [j["status"] for j in jobs] == ["pending", "running", "pending", "running", "pending"]
    await h2.until(lambda: {jobs[1]["job_id"], jobs[3]["job_id"]} <= h2.executor.running, what="both started")
    assert [(await h2.stored(j["job_id"])).status for j in jobs] == [j["status"] for j in jobs]
