"""Property tests of the pure scheduler (``pyrexisd/scheduler.py``).

The scheduler takes an injected clock and does no I/O, so every test drives it with a
fake clock and checks its decisions against a small independent model. Times are whole
seconds and aging rates are dyadic fractions, so every key is computed exactly in floating
point and the expected order never depends on rounding.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
)

from pyrexisd.scheduler import DEFAULT_AGING, PRIORITY_SPAN, Scheduler, Start, aging_bound

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PRIORITIES = st.integers(min_value=-1000, max_value=1000)
# Exactly representable rates: aging * whole seconds is exact, so keys tie exactly.
AGING_RATES = st.sampled_from([0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 16.0])


class FakeClock:
    """A clock that moves only when the test says so."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


@dataclass
class Job:
    seq: int
    queue: str
    mode: str
    priority: int
    enqueued_at: float


def effective(job: Job, aging: float, now: float) -> float:
    """The contract's effective priority, computed directly (not as the static key)."""
    return job.priority + aging * (now - job.enqueued_at)


def best(jobs: list[Job], aging: float, now: float) -> Job:
    """The job that must start next: highest effective priority, ties by lowest seq."""
    return max(jobs, key=lambda j: (effective(j, aging, now), -j.seq))


def drain(s: Scheduler, mode: str = "thread") -> list[Start]:
    """Start everything one at a time (single slot), releasing each job at once."""
    order: list[Start] = []
    while True:
        starts = s.pick()
        if not starts:
            return order
        assert len(starts) <= s.slots[mode]
        for st_ in starts:
            order.append(st_)
            s.release(st_.queue, st_.mode)


# --- (a) priority with aging, one queue, one mode, one slot --------------------------

# An op is either ("add", priority, seconds to advance before, seconds already waited)
# or ("start",): take the single slot and free it again.
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), PRIORITIES, st.integers(0, 400), st.integers(0, 50)),
        st.tuples(st.just("start")),
    ),
    min_size=1,
    max_size=80,
)


@FAST
@given(aging=st.sampled_from([0.0, 0.125, 0.5, 1.0, 3.0, 16.0]), ops=OPS)
def test_single_slot_starts_the_highest_effective_priority_with_fifo_ties(
    aging: float, ops: list[tuple[Any, ...]]
) -> None:
    """Given one queue, one mode and one slot, jobs arriving while others start,
    when the slot frees up, then the job started is always the waiting one with the highest
    ``priority + aging * (now - enqueued_at)``, ties going to the lowest seq."""
    clock = FakeClock(1000.0)
    s = Scheduler({"thread": 1}, clock, default_aging=aging)
    waiting: dict[int, Job] = {}
    seq = 0
    for op in ops + [("start",)] * 80:
        if op[0] == "add":
            _, priority, dt, waited = op
            clock.advance(dt)
            job = Job(seq, "q", "thread", priority, clock.now - waited)
            s.add(job.seq, "q", "thread", priority, job.enqueued_at)
            waiting[seq] = job
            seq += 1
            continue
        starts = s.pick()
        if not waiting:
            assert starts == []
            continue
        expected = best(list(waiting.values()), aging, clock.now)
        assert starts == [Start(expected.seq, "q", "thread")]
        del waiting[expected.seq]
        s.release("q", "thread")
    assert not waiting


@FAST
@given(
    jobs=st.lists(
        st.tuples(PRIORITIES, st.floats(-1e9, 1e9, allow_nan=False, allow_infinity=False)),
        min_size=1,
        max_size=60,
    ),
    now=st.floats(0, 1e9),
)
def test_without_aging_order_is_pure_priority_then_fifo(
    jobs: list[tuple[int, float]], now: float
) -> None:
    """Given aging 0, when jobs with arbitrary enqueue times wait, then they start by
    priority (higher first) and, within a priority, by seq; enqueue times do not matter."""
    clock = FakeClock(now)
    s = Scheduler({"thread": 1}, clock, default_aging=0.0)
    for seq, (priority, t) in enumerate(jobs):
        s.add(seq, "q", "thread", priority, t)
    order = [x.seq for x in drain(s)]
    assert order == sorted(range(len(jobs)), key=lambda i: (-jobs[i][0], i))


# --- (b) FIFO -------------------------------------------------------------------------


@FAST
@given(
    seqs=st.lists(st.integers(0, 10_000), min_size=1, max_size=50, unique=True),
    priority=PRIORITIES,
    aging=st.sampled_from([0.0, 1.0, 7.5]),
    t=st.integers(0, 10**6),
)
def test_equal_priority_and_enqueue_time_start_in_seq_order(
    seqs: list[int], priority: int, aging: float, t: int
) -> None:
    """Given jobs of equal priority enqueued at the same instant but added in any order,
    when they are started one by one, then they start in ascending seq (submission) order."""
    s = Scheduler({"thread": 1}, FakeClock(float(t)), default_aging=aging)
    for seq in seqs:
        s.add(seq, "q", "thread", priority, float(t))
    assert [x.seq for x in drain(s)] == sorted(seqs)


@FAST
@given(
    times=st.lists(st.integers(0, 10**6), min_size=2, max_size=50),
    priority=PRIORITIES,
    aging=AGING_RATES,
)
def test_equal_priority_with_aging_starts_the_longest_waiting_first(
    times: list[int], priority: int, aging: float
) -> None:
    """Given aging > 0 and jobs of one priority enqueued at different times, when they
    start, then the earliest enqueued starts first (ties by seq)."""
    s = Scheduler({"thread": 1}, FakeClock(2e6), default_aging=aging)
    for seq, t in enumerate(times):
        s.add(seq, "q", "thread", priority, float(t))
    assert [x.seq for x in drain(s)] == sorted(range(len(times)), key=lambda i: (times[i], i))


# --- (c) the aging bound --------------------------------------------------------------


def test_aging_bound_is_the_priority_span_over_the_rate() -> None:
    """Given a rate r, then the bound is 2000 / r seconds, and infinite without aging."""
    assert PRIORITY_SPAN == 2000
    assert aging_bound(1.0) == 2000.0
    assert aging_bound(DEFAULT_AGING) == 2000.0 / DEFAULT_AGING
    assert aging_bound(0.5) == 4000.0
    assert aging_bound(0.0) == float("inf")


@FAST
@given(
    aging=AGING_RATES,
    arrivals=st.lists(
        st.tuples(PRIORITIES, st.integers(0, 9000), st.booleans()), min_size=2, max_size=70
    ),
)
def test_no_job_is_passed_by_one_enqueued_more_than_the_aging_bound_later(
    aging: float, arrivals: list[tuple[int, int, bool]]
) -> None:
    """Given aging rate r > 0, jobs arriving over time and a single slot that starts a job
    now and then, then no job ever starts after a job enqueued more than 2000 / r seconds
    after it."""
    bound = aging_bound(aging)
    clock = FakeClock()
    s = Scheduler({"thread": 1}, clock, default_aging=aging)
    enq: dict[int, float] = {}
    started: list[int] = []
    for seq, (priority, dt, start_one) in enumerate(sorted(arrivals, key=lambda a: a[1])):
        clock.now = float(dt)
        s.add(seq, "q", "thread", priority, clock.now)
        enq[seq] = clock.now
        if start_one:
            for x in s.pick():
                started.append(x.seq)
                s.release(x.queue, x.mode)
    started += [x.seq for x in drain(s)]
    assert sorted(started) == sorted(enq)
    for i, early_start in enumerate(started):
        for late_start in started[i + 1 :]:
            # early_start ran first; it must not have been enqueued > bound after late_start
            assert enq[early_start] - enq[late_start] <= bound, (
                f"job {early_start} (enqueued {enq[early_start]}) passed job {late_start} "
                f"(enqueued {enq[late_start]}), bound {bound}"
            )


@pytest.mark.parametrize("aging", [0.25, 1.0, 4.0])
def test_aging_bound_is_tight(aging: float) -> None:
    """Given a -1000 job and a +1000 job, when the second arrives just inside the bound it
    passes the first, and just outside it does not."""
    bound = aging_bound(aging)
    for gap, passes in ((bound - 1.0, True), (bound + 1.0, False)):
        s = Scheduler({"thread": 1}, FakeClock(10 * bound), default_aging=aging)
        s.add(1, "q", "thread", -1000, 0.0)
        s.add(2, "q", "thread", 1000, gap)
        assert [x.seq for x in drain(s)] == ([2, 1] if passes else [1, 2])


# --- (d) pause --------------------------------------------------------------------------


@FAST
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.sampled_from("abc"), PRIORITIES),
            st.tuples(st.just("pause"), st.sampled_from("abc"), st.booleans()),
            st.tuples(st.just("pause_all"), st.booleans()),
            st.tuples(st.just("tick")),
        ),
        max_size=80,
    ),
    slots=st.integers(1, 3),
)
def test_a_paused_queue_never_starts_and_never_blocks_the_others(
    ops: list[tuple[Any, ...]], slots: int
) -> None:
    """Given queues a, b, c paused and resumed at random, when the scheduler picks, then it
    never starts a job of a paused queue, and it fills every free slot that some unpaused
    queue has a job for."""
    clock = FakeClock()
    s = Scheduler({"thread": slots}, clock)
    waiting: dict[str, int] = {"a": 0, "b": 0, "c": 0}
    running: list[str] = []
    paused: dict[str, bool] = {"a": False, "b": False, "c": False}
    rng = random.Random(0)
    seq = 0
    for op in ops:
        if op[0] == "add":
            s.add(seq, op[1], "thread", op[2], clock.now)
            waiting[op[1]] += 1
            seq += 1
        elif op[0] == "pause":
            s.configure(op[1], paused=op[2])
            paused[op[1]] = op[2]
        elif op[0] == "pause_all":
            s.pause_all(op[1])
            paused = {q: op[1] for q in paused}
        else:
            clock.advance(1)
            if running:
                s.release(running.pop(rng.randrange(len(running))), "thread")
        for x in s.pick():
            assert not paused[x.queue], f"started job {x.seq} of paused queue {x.queue}"
            waiting[x.queue] -= 1
            running.append(x.queue)
        runnable = sum(n for q, n in waiting.items() if not paused[q])
        assert runnable == 0 or len(running) == slots, "a runnable job waits beside a free slot"
        assert s.busy["thread"] == len(running) <= slots


def test_pause_all_applies_to_queues_created_later() -> None:
    """Given pause_all(True), when a job arrives in a queue never seen before, then nothing
    starts (neither by pick nor by try_start_now) until pause_all(False)."""
    s = Scheduler({"thread": 2}, FakeClock())
    s.pause_all(True)
    s.add(1, "brand-new", "thread", 0, 0.0)
    assert s.queue("brand-new").paused
    assert s.pick() == []
    assert s.try_start_now("another-new", "thread") is False
    assert s.busy["thread"] == 0
    s.pause_all(False)
    assert s.pick() == [Start(1, "brand-new", "thread")]
    assert s.try_start_now("yet-another", "thread") is True


def test_a_queue_paused_before_its_first_job_keeps_it_pending() -> None:
    """Given a queue paused before it had any job, when a job arrives there, then it
    waits; when resumed, then it starts."""
    s = Scheduler({"thread": 1}, FakeClock())
    s.configure("later", paused=True)
    s.add(1, "later", "thread", 0, 0.0)
    s.add(2, "other", "thread", -5, 0.0)
    assert s.pick() == [Start(2, "other", "thread")]
    s.release("other", "thread")
    assert s.pick() == []
    s.configure("later", paused=False)
    assert s.pick() == [Start(1, "later", "thread")]


# --- (e) slots per mode -------------------------------------------------------------------


@FAST
@given(
    jobs=st.lists(st.sampled_from(["thread", "process", "async"]), max_size=60),
    slots=st.fixed_dictionaries(
        {"thread": st.integers(1, 4), "process": st.integers(1, 4), "async": st.integers(1, 4)}
    ),
    seed=st.integers(0, 2**32),
)
def test_slots_are_per_mode_and_release_frees_one(
    jobs: list[str], slots: dict[str, int], seed: int
) -> None:
    """Given jobs of several modes in one queue, when picks and releases happen in a random
    order, then no mode ever has more running jobs than its slots, a free slot of a mode
    is always filled while a job of that mode waits (whatever the other modes do), and a
    release frees exactly one slot."""
    rng = random.Random(seed)
    s = Scheduler(slots, FakeClock())
    waiting = {m: 0 for m in slots}
    for seq, mode in enumerate(jobs):
        s.add(seq, "q", mode, rng.randint(-1000, 1000), 0.0)
        waiting[mode] += 1
    running: list[str] = []
    while True:
        for x in s.pick():
            waiting[x.mode] -= 1
            running.append(x.mode)
        for mode, n_slots in slots.items():
            assert s.busy[mode] == running.count(mode) <= n_slots
            assert s.free_slots(mode) == n_slots - running.count(mode)
            if waiting[mode]:
                assert s.free_slots(mode) == 0, f"a {mode} job waits beside a free {mode} slot"
        if not running:
            break
        mode = running.pop(rng.randrange(len(running)))
        before = s.free_slots(mode)
        s.release("q", mode)
        assert s.free_slots(mode) == before + 1
    assert waiting == {m: 0 for m in slots}


def test_a_mode_with_full_slots_does_not_hold_up_another_mode() -> None:
    """Given the only process slot busy and process jobs waiting ahead (higher priority),
    when a thread job waits too, then it starts."""
    s = Scheduler({"thread": 1, "process": 1}, FakeClock())
    for seq in range(3):
        s.add(seq, "q", "process", 1000, 0.0)
    s.add(10, "q", "thread", -1000, 5.0)
    starts = s.pick()
    assert sorted((x.mode, x.seq) for x in starts) == [("process", 0), ("thread", 10)]
    assert s.pick() == []
    s.release("q", "process")
    assert s.pick() == [Start(1, "q", "process")]


def test_releasing_a_slot_twice_is_refused() -> None:
    """Given one running job, when its slot is released twice, then the second is an error."""
    s = Scheduler({"thread": 1}, FakeClock())
    s.add(1, "q", "thread", 0, 0.0)
    s.pick()
    s.release("q", "thread")
    with pytest.raises(AssertionError):
        s.release("q", "thread")


# --- (f) fair share ---------------------------------------------------------------------


@settings(max_examples=8, deadline=None)
@given(slots=st.integers(1, 6), seed=st.integers(0, 2**32), weights_first=st.booleans())
def test_two_always_busy_queues_share_starts_by_weight(
    slots: int, seed: int, weights_first: bool
) -> None:
    """Given queues light (weight 1) and heavy (weight 3) that always have jobs waiting, when
    4,000 jobs start (slots freed in a random order), then light gets 1/4 and heavy 3/4 of
    the starts, each within 5 %."""
    rng = random.Random(seed)
    s = Scheduler({"thread": slots}, FakeClock())
    if weights_first:
        s.configure("light", weight=1)
        s.configure("heavy", weight=3)
    seq = 0
    for q in ("light", "heavy"):
        for _ in range(slots + 2):
            s.add(seq, q, "thread", 0, 0.0)
            seq += 1
    if not weights_first:
        s.configure("light", weight=1)
        s.configure("heavy", weight=3)
    counts = {"light": 0, "heavy": 0}
    running: list[str] = []
    total = 0
    while total < 4000:
        for x in s.pick():
            counts[x.queue] += 1
            running.append(x.queue)
            total += 1
            s.add(seq, x.queue, "thread", 0, 0.0)  # always busy: top up what started
            seq += 1
        s.release(running.pop(rng.randrange(len(running))), "thread")
    note(f"counts={counts}")
    assert abs(counts["light"] / total - 0.25) <= 0.05 * 0.25
    assert abs(counts["heavy"] / total - 0.75) <= 0.05 * 0.75


def _run_alone(s: Scheduler, queue: str, n: int, first_seq: int) -> int:
    """``queue`` runs ``n`` jobs one after another on a single slot; the next free seq."""
    seq = first_seq
    for _ in range(n):
        s.add(seq, queue, "thread", 0, 0.0)
        seq += 1
        (x,) = s.pick()
        assert x.queue == queue
        s.release(queue, "thread")
    return seq


@pytest.mark.parametrize("how", ["add", "try_start_now", "still_running"])
def test_a_queue_waking_from_idle_cannot_bank_credit(how: str) -> None:
    """Given queue idle that ran one job early on and then had nothing waiting while queue
    busy ran 100 jobs alone, when idle wakes up (its first job added as pending, or started
    at once by try_start_now, or it had kept one long job running all along) and both
    queues then have 50 jobs waiting, then the next 20 starts are shared about equally
    (equal weights) -- idle does not get a burst for the time it had nothing to run.

    The module docstring: "a queue waking up from idle joins at the current virtual time,
    so it cannot bank credit while it had nothing to run"."""
    s = Scheduler({"thread": 2 if how == "still_running" else 1}, FakeClock())
    s.add(0, "idle", "thread", 0, 0.0)
    (first,) = s.pick()
    assert first.queue == "idle"
    if how != "still_running":
        s.release("idle", "thread")
    seq = _run_alone(s, "busy", 100, 1)
    if how == "try_start_now":
        assert s.try_start_now("idle", "thread") is True  # a submit that starts at once
    elif how == "add":
        s.add(seq, "idle", "thread", 0, 0.0)
        seq += 1
        (x,) = s.pick()
        assert x.queue == "idle"
    for _ in range(50):
        s.add(seq, "busy", "thread", 0, 0.0)
        s.add(seq + 1, "idle", "thread", 0, 0.0)
        seq += 2
    if how != "still_running":
        s.release("idle", "thread")  # the job that woke it finishes
    order: list[str] = []
    while len(order) < 20:
        (x,) = s.pick()
        order.append(x.queue)
        s.release(x.queue, "thread")
    assert 8 <= order.count("busy") <= 12, f"starts after waking: {order}"


# --- (g) max_concurrency ----------------------------------------------------------------


@FAST
@given(
    cap=st.integers(1, 4),
    slots=st.integers(1, 8),
    n_capped=st.integers(0, 20),
    n_free=st.integers(0, 20),
    seed=st.integers(0, 2**32),
)
def test_max_concurrency_caps_a_queue_without_blocking_others(
    cap: int, slots: int, n_capped: int, n_free: int, seed: int
) -> None:
    """Given a queue capped at ``cap`` and an uncapped queue, when slots are filled and
    freed in a random order, then the capped queue never runs more than ``cap`` jobs and
    every slot it cannot use goes to the other queue while that one has jobs."""
    rng = random.Random(seed)
    s = Scheduler({"thread": slots}, FakeClock())
    s.configure("capped", max_concurrency=cap)
    waiting = {"capped": n_capped, "free": n_free}
    seq = 0
    for q in ("capped", "free"):
        for _ in range(waiting[q]):
            s.add(seq, q, "thread", 1000 if q == "capped" else -1000, 0.0)
            seq += 1
    running: list[str] = []
    while True:
        for x in s.pick():
            waiting[x.queue] -= 1
            running.append(x.queue)
        n_capped_running = running.count("capped")
        assert n_capped_running <= cap
        assert s.queue("capped").running == n_capped_running
        if len(running) < slots:  # a free slot: nobody runnable may be waiting
            assert waiting["free"] == 0
            assert waiting["capped"] == 0 or n_capped_running == cap
        if not running:
            break
        s.release(running.pop(rng.randrange(len(running))), "thread")
    assert waiting == {"capped": 0, "free": 0}


def test_removing_the_cap_lets_the_queue_fill_the_slots() -> None:
    """Given a queue capped at 1 with 3 jobs, when the cap is removed, then 2 more start."""
    s = Scheduler({"thread": 3}, FakeClock())
    s.configure("q", max_concurrency=1)
    for seq in range(3):
        s.add(seq, "q", "thread", 0, 0.0)
    assert len(s.pick()) == 1
    s.configure("q", max_concurrency=None)
    assert [x.seq for x in s.pick()] == [1, 2]


# --- (h) timers, discard, re-add, re-key, try_start_now -------------------------------


@FAST
@given(
    timers=st.dictionaries(st.integers(0, 500), st.integers(0, 1000), max_size=40),
    discarded=st.sets(st.integers(0, 500), max_size=20),
    redeferred=st.dictionaries(st.integers(0, 500), st.integers(0, 1000), max_size=10),
    checkpoints=st.lists(st.integers(0, 1100), max_size=12),
)
def test_deferred_jobs_come_due_once_in_time_order(
    timers: dict[int, int],
    discarded: set[int],
    redeferred: dict[int, int],
    checkpoints: list[int],
) -> None:
    """Given jobs deferred to various times, some discarded and some deferred again to a new
    time, when time passes, then ``due`` returns each live job exactly once, at or after its
    latest time, in time order; ``next_timer`` is the earliest live time; discarded ones
    never come due."""
    clock = FakeClock()
    s = Scheduler({"thread": 1}, clock)
    live: dict[int, float] = {}
    for seq, at in timers.items():
        s.defer(seq, float(at))
        live[seq] = float(at)
    for seq in discarded:
        assert s.discard(seq) is (seq in live)
        live.pop(seq, None)
    for seq, at in redeferred.items():
        s.defer(seq, float(at))
        live[seq] = float(at)
    assert s.waiting_count() == len(live)
    for seq in range(501):
        assert s.is_waiting(seq) is (seq in live)
    for now in sorted(checkpoints) + [1100]:
        clock.now = float(now)
        expected_next = min(live.values()) if live else None
        assert s.next_timer() == expected_next
        use_clock = now % 2 == 0
        got = s.due() if use_clock else s.due(float(now))
        want = sorted((at, seq) for seq, at in live.items() if at <= now)
        assert [live[seq] for seq in got] == [at for at, _ in want], "not in time order"
        assert sorted(got) == sorted(seq for _, seq in want)
        for seq in got:
            del live[seq]
    assert live == {}
    assert s.next_timer() is None
    assert s.waiting_count() == 0


def test_a_job_discarded_and_deferred_again_to_the_same_time_comes_due_once() -> None:
    """Given a deferred job discarded and deferred again to the same instant, when due, then
    it is returned once."""
    s = Scheduler({"thread": 1}, FakeClock())
    s.defer(7, 10.0)
    assert s.discard(7) is True
    s.defer(7, 10.0)
    assert s.due(10.0) == [7]
    assert s.due(20.0) == []
    assert s.next_timer() is None


def test_discard_removes_ready_and_deferred_jobs() -> None:
    """Given a ready job and a deferred job, when both are discarded, then neither is
    waiting, neither starts nor comes due, counts drop to 0, and a second discard says
    False."""
    s = Scheduler({"thread": 1}, FakeClock())
    s.add(1, "q", "thread", 0, 0.0)
    s.defer(2, 5.0)
    assert s.waiting_count() == 2
    assert s.discard(1) is True
    assert s.discard(2) is True
    assert not s.is_waiting(1) and not s.is_waiting(2)
    assert s.queue("q").waiting == 0
    assert s.waiting_count() == 0
    assert s.pick() == []
    assert s.due(100.0) == []
    assert s.next_timer() is None
    assert s.discard(1) is False
    assert s.discard(2) is False
    assert s.discard(999) is False


@FAST
@given(
    first=st.lists(PRIORITIES, min_size=1, max_size=30),
    readd=st.data(),
    aging=st.sampled_from([0.0, 1.0]),
)
def test_a_re_added_job_uses_its_new_priority_and_starts_once(
    first: list[int], readd: st.DataObject, aging: float
) -> None:
    """Given waiting jobs, when some are discarded and added again with a new priority (as
    ``update`` does), then the start order follows the new priorities, and every job
    starts exactly once: no stale heap entry starts a job early or twice."""
    s = Scheduler({"thread": 1}, FakeClock(100.0), default_aging=aging)
    current = dict(enumerate(first))
    for seq, p in current.items():
        s.add(seq, "q", "thread", p, 0.0)
    changed = readd.draw(st.lists(st.sampled_from(sorted(current)), unique=True))
    for seq in changed:
        new_p = readd.draw(PRIORITIES)
        name_queue = readd.draw(st.booleans())
        assert (s.discard(seq, "q") if name_queue else s.discard(seq)) is True
        s.add(seq, "q", "thread", new_p, 0.0)
        current[seq] = new_p
    order = [x.seq for x in drain(s)]
    assert order == sorted(current, key=lambda q: (-current[q], q))


def test_a_job_moved_down_does_not_start_under_its_old_priority() -> None:
    """Given job 1 at +1000 and job 2 at 0, when job 1 is re-added at -1000, then job 2
    starts first and job 1 starts once, after it."""
    s = Scheduler({"thread": 1}, FakeClock())
    s.add(1, "q", "thread", 1000, 0.0)
    s.add(2, "q", "thread", 0, 0.0)
    s.discard(1)
    s.add(1, "q", "thread", -1000, 0.0)
    assert [x.seq for x in drain(s)] == [2, 1]


def test_a_job_moved_to_another_queue_starts_there_once() -> None:
    """Given job 1 in queue a, when it is discarded and added to queue b, then it starts
    once, as a job of b."""
    s = Scheduler({"thread": 1}, FakeClock())
    s.add(1, "a", "thread", 0, 0.0)
    s.discard(1)
    s.add(1, "b", "thread", 0, 0.0)
    assert s.queue("a").waiting == 0
    assert drain(s) == [Start(1, "b", "thread")]


def test_a_re_added_job_keeps_its_new_priority_through_an_aging_change_with_an_int_clock() -> None:
    """Given a scheduler fed whole numbers (an int clock and aging 1: ``float`` parameters
    accept ints), job 1 added at (p 0, t 10), discarded and added again at (p 5, t 15) --
    the same static key, 10 -- and job 2 at (p 0, t 11), when the queue's aging becomes 2,
    then job 1 is keyed by its new values (2*15-5 = 25) and starts after job 2 (22).

    Staleness is judged by the identity of the key object, and small ints are shared
    objects, so the stale (p 0, t 10) entry passes for live and is re-keyed instead (20)."""
    s = Scheduler({"thread": 1}, lambda: 100, default_aging=1)
    s.add(1, "q", "thread", 0, 10)
    s.discard(1, "q")
    s.add(1, "q", "thread", 5, 15)
    s.add(2, "q", "thread", 0, 11)
    s.configure("q", aging=2)
    assert [x.seq for x in drain(s)] == [2, 1]


def test_discarding_a_moved_job_without_its_queue_counts_the_right_queue_with_an_int_clock() -> None:
    """Given whole-number inputs, job 1 moved from queue a to queue b with the same key,
    when it is discarded without naming its queue, then b has nothing waiting and a's
    count does not go below 0."""
    s = Scheduler({"thread": 1}, lambda: 100, default_aging=1)
    s.add(1, "a", "thread", 0, 10)
    s.discard(1, "a")
    s.add(1, "b", "thread", 0, 10)
    assert s.discard(1) is True
    assert (s.queue("a").waiting, s.queue("b").waiting) == (0, 0)


@FAST
@given(
    jobs=st.lists(st.tuples(PRIORITIES, st.integers(0, 5000)), min_size=1, max_size=40),
    old=st.sampled_from([0.0, 0.5, 1.0, 8.0]),
    new=st.sampled_from([0.0, 0.25, 1.0, 2.0, 64.0]),
    discard_some=st.sets(st.integers(0, 39), max_size=10),
)
def test_configuring_aging_re_keys_the_waiting_jobs(
    jobs: list[tuple[int, int]], old: float, new: float, discard_some: set[int]
) -> None:
    """Given jobs waiting under aging rate ``old`` (some discarded), when the queue's aging
    becomes ``new``, then the remaining jobs start in the order of the new rate."""
    s = Scheduler({"thread": 1}, FakeClock(10_000.0), default_aging=old)
    for seq, (p, t) in enumerate(jobs):
        s.add(seq, "q", "thread", p, float(t))
    for seq in discard_some:
        if seq < len(jobs):
            s.discard(seq)
    s.configure("q", aging=new)
    left = [Job(i, "q", "thread", p, float(t)) for i, (p, t) in enumerate(jobs) if i not in discard_some]
    expected = sorted(left, key=lambda j: (-effective(j, new, 10_000.0), j.seq))
    assert [x.seq for x in drain(s)] == [j.seq for j in expected]


def test_configure_aging_turns_a_priority_order_into_an_age_order() -> None:
    """Given an old low-priority job and a new higher one under aging 0, when aging becomes
    1 point/s, then the old one (aged 100 s) starts first."""
    s = Scheduler({"thread": 1}, FakeClock(100.0), default_aging=0.0)
    s.add(1, "q", "thread", 5, 100.0)
    s.add(2, "q", "thread", 0, 0.0)
    s.configure("q", aging=1.0)
    assert [x.seq for x in drain(s)] == [2, 1]


def test_configure_refuses_bad_weight_and_aging() -> None:
    """Given a queue, when weight <= 0 or aging < 0 is configured, then ValueError."""
    s = Scheduler({"thread": 1}, FakeClock())
    with pytest.raises(ValueError):
        s.configure("q", weight=0)
    with pytest.raises(ValueError):
        s.configure("q", aging=-1.0)


class TestTryStartNow:
    """``try_start_now``: a submitted job may skip the queue only when nobody is waiting."""

    def test_takes_a_free_slot_when_nothing_waits(self) -> None:
        s = Scheduler({"thread": 1}, FakeClock())
        assert s.try_start_now("q", "thread") is True
        assert s.busy["thread"] == 1 and s.queue("q").running == 1
        assert s.try_start_now("q", "thread") is False  # no slot left
        assert s.busy["thread"] == 1

    def test_refuses_when_a_job_of_that_mode_waits_in_a_runnable_queue(self) -> None:
        """Given a pending thread job (in the same queue or another, even at the lowest
        priority and with a free slot not yet picked), then a new thread job of queue q
        may not jump ahead of it; the waiting job gets the slot on the next pick."""
        for waiting_queue in ("q", "other"):
            s = Scheduler({"thread": 2}, FakeClock())
            s.configure(waiting_queue, max_concurrency=5)
            s.add(1, waiting_queue, "thread", -1000, 0.0)
            assert s.try_start_now("q", "thread") is False, waiting_queue
            assert s.busy["thread"] == 0
            assert s.pick() == [Start(1, waiting_queue, "thread")]

    def test_ignores_jobs_of_another_mode_or_in_unrunnable_queues(self) -> None:
        """Given waiting jobs only of another mode, in a paused queue, or in a queue at its
        cap, then a new thread job of queue q may start at once: none of them could."""
        s = Scheduler({"thread": 2, "process": 1}, FakeClock())
        s.add(1, "other", "process", 1000, 0.0)  # another mode
        s.configure("paused", paused=True)
        s.add(2, "paused", "thread", 1000, 0.0)  # paused queue
        s.configure("full", max_concurrency=1)
        assert s.try_start_now("full", "thread") is True  # fills full's one place
        s.add(3, "full", "thread", 1000, 0.0)  # queue at its cap
        assert s.try_start_now("q", "thread") is True
        assert s.busy["thread"] == 2

    def test_ignores_discarded_jobs(self) -> None:
        s = Scheduler({"thread": 1}, FakeClock())
        s.add(1, "q", "thread", 0, 0.0)
        s.discard(1)
        assert s.try_start_now("q", "thread") is True

    def test_refuses_for_a_paused_or_capped_queue_or_unknown_mode(self) -> None:
        s = Scheduler({"thread": 4}, FakeClock())
        s.configure("p", paused=True)
        assert s.try_start_now("p", "thread") is False
        s.configure("c", max_concurrency=1)
        assert s.try_start_now("c", "thread") is True
        assert s.try_start_now("c", "thread") is False
        assert s.try_start_now("c", "dask") is False
        assert s.busy["thread"] == 1


def test_adding_a_job_twice_or_for_an_unknown_mode_is_refused() -> None:
    """Given a waiting job, when the same seq is added or deferred again while ready, or a
    job names a mode without slots, then ValueError and nothing changes."""
    s = Scheduler({"thread": 1}, FakeClock())
    s.add(1, "q", "thread", 0, 0.0)
    with pytest.raises(ValueError):
        s.add(1, "q", "thread", 5, 0.0)
    with pytest.raises(ValueError):
        s.defer(1, 3.0)
    with pytest.raises(ValueError):
        s.add(2, "q", "gpu", 0, 0.0)
    s.defer(3, 1.0)
    with pytest.raises(ValueError):
        s.add(3, "q", "thread", 0, 0.0)
    assert s.waiting_count() == 2
    assert drain(s) == [Start(1, "q", "thread")]


# --- a model-based run of everything together ----------------------------------------

QUEUES = ("a", "b", "c")
MODES = ("thread", "process")


class SchedulerMachine(RuleBasedStateMachine):
    """Random interleavings of every call, checked against a plain model after each step."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.slots = {"thread": 2, "process": 1}
        self.s = Scheduler(self.slots, self.clock)
        self.waiting: dict[int, Job] = {}
        self.deferred: dict[int, float] = {}
        self.running: list[Job] = []
        self.paused = {q: False for q in QUEUES}
        self.caps: dict[str, int | None] = {q: None for q in QUEUES}
        self.aging = {q: DEFAULT_AGING for q in QUEUES}
        self.next_seq = 0

    def _eligible(self, q: str) -> bool:
        cap = self.caps[q]
        running = sum(1 for j in self.running if j.queue == q)
        return not self.paused[q] and (cap is None or running < cap)

    @rule(queue=st.sampled_from(QUEUES), mode=st.sampled_from(MODES), priority=PRIORITIES)
    def add(self, queue: str, mode: str, priority: int) -> None:
        job = Job(self.next_seq, queue, mode, priority, self.clock.now)
        self.next_seq += 1
        self.s.add(job.seq, queue, mode, priority, job.enqueued_at)
        self.waiting[job.seq] = job

    @rule(queue=st.sampled_from(QUEUES), mode=st.sampled_from(MODES))
    def submit_at_once(self, queue: str, mode: str) -> None:
        free = self.slots[mode] - sum(1 for j in self.running if j.mode == mode)
        anyone_waiting = any(
            j.mode == mode and self._eligible(j.queue) for j in self.waiting.values()
        )
        expected = free > 0 and self._eligible(queue) and not anyone_waiting
        got = self.s.try_start_now(queue, mode)
        assert got is expected
        if got:
            self.running.append(Job(self.next_seq, queue, mode, 0, self.clock.now))
            self.next_seq += 1

    @rule(dt=st.integers(0, 600))
    def tick(self, dt: int) -> None:
        self.clock.advance(dt)
        for seq in self.s.due():
            at = self.deferred.pop(seq)
            assert at <= self.clock.now

    @rule(dt=st.integers(0, 300))
    def defer(self, dt: int) -> None:
        seq = self.next_seq
        self.next_seq += 1
        self.s.defer(seq, self.clock.now + dt)
        self.deferred[seq] = self.clock.now + dt

    @rule(data=st.data())
    def discard(self, data: st.DataObject) -> None:
        pool = sorted(self.waiting) + sorted(self.deferred)
        if not pool:
            return
        seq = data.draw(st.sampled_from(pool))
        assert self.s.discard(seq) is True
        self.waiting.pop(seq, None)
        self.deferred.pop(seq, None)

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        if not self.running:
            return
        job = self.running.pop(data.draw(st.integers(0, len(self.running) - 1)))
        self.s.release(job.queue, job.mode)

    @rule(queue=st.sampled_from(QUEUES), paused=st.booleans())
    def pause(self, queue: str, paused: bool) -> None:
        self.s.configure(queue, paused=paused)
        self.paused[queue] = paused

    @rule(paused=st.booleans())
    def pause_all(self, paused: bool) -> None:
        self.s.pause_all(paused)
        self.paused = {q: paused for q in QUEUES}

    @rule(queue=st.sampled_from(QUEUES), cap=st.one_of(st.none(), st.integers(1, 3)))
    def cap(self, queue: str, cap: int | None) -> None:
        self.s.configure(queue, max_concurrency=cap)
        self.caps[queue] = cap

    @rule(queue=st.sampled_from(QUEUES), aging=st.sampled_from([0.0, 0.5, 1.0, 4.0]))
    def set_aging(self, queue: str, aging: float) -> None:
        self.s.configure(queue, aging=aging)
        self.aging[queue] = aging

    @rule()
    def pick(self) -> None:
        for x in self.s.pick():
            job = self.waiting.get(x.seq)
            assert job is not None, f"started {x.seq}, which is not waiting"
            assert (job.queue, job.mode) == (x.queue, x.mode)
            assert not self.paused[x.queue], "started a job of a paused queue"
            assert self._eligible(x.queue), "started a job of a queue at its cap"
            rivals = [
                j for j in self.waiting.values() if j.queue == job.queue and j.mode == job.mode
            ]
            top = best(rivals, self.aging[job.queue], self.clock.now)
            assert top.seq == job.seq, f"started {job.seq} before {top.seq} of the same queue"
            del self.waiting[x.seq]
            self.running.append(job)
        for mode in MODES:
            free = self.slots[mode] - sum(1 for j in self.running if j.mode == mode)
            if free > 0:
                stuck = [j.seq for j in self.waiting.values() if j.mode == mode and self._eligible(j.queue)]
                assert not stuck, f"{mode} jobs {stuck} wait beside {free} free slot(s)"

    @invariant()
    def counts_agree(self) -> None:
        for mode in MODES:
            n = sum(1 for j in self.running if j.mode == mode)
            assert self.s.busy[mode] == n <= self.slots[mode]
        for q in QUEUES:
            if q in self.s.queues:
                assert self.s.queues[q].running == sum(1 for j in self.running if j.queue == q)
                assert self.s.queues[q].waiting == sum(1 for j in self.waiting.values() if j.queue == q)
        assert self.s.waiting_count() == len(self.waiting) + len(self.deferred)


TestSchedulerMachine = SchedulerMachine.TestCase
TestSchedulerMachine.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_resize_follows_a_mode_whose_capacity_changes() -> None:
    """A mode's slots may change while jobs run (the dask mode follows its cluster)."""
    s = Scheduler({"dask": 0, "thread": 1}, FakeClock())
    for seq in range(1, 7):
        s.add(seq, "default", "dask", 0, 0.0)
    assert s.pick() == []  # no slots yet: the jobs wait
    s.resize("dask", 3)
    assert [start.seq for start in s.pick()] == [1, 2, 3]
    s.resize("dask", 1)  # fewer than are busy: the running go on, none starts
    s.release("default", "dask")
    assert s.pick() == []
    s.release("default", "dask")
    assert s.pick() == []  # one busy, one slot
    s.release("default", "dask")
    assert [start.seq for start in s.pick()] == [4]
    with pytest.raises(ValueError):
        s.resize("dask", -1)
