"""The scheduler's paging: a scheduler that holds only a small window of each queue's
ready jobs in memory, and reads the rest from a store a page at a time, starts exactly
the jobs, in exactly the order, of one that holds them all.

The store here is a dict of pending jobs; a page is read either when it is asked for or
later, after other changes (as a real read on another thread may be), and delivered
later still.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import given, note, settings
from hypothesis import strategies as st

from pyrexisd.scheduler import PageRequest, Scheduler, Start

QUEUES = ("a", "b")
MODES = ("thread", "process")


@dataclass
class Pending:
    queue: str
    mode: str
    priority: int
    enqueued_at: float


class Store:
    """The committed pending jobs, and pages read from them in the scheduler's order."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.jobs: dict[int, Pending] = {}
        self.s = scheduler

    def page(self, req: PageRequest) -> tuple[list[tuple[int, int, float]], bool]:
        rows = sorted(
            (self.s.key_of(j.queue, j.priority, j.enqueued_at), seq, j.priority, j.enqueued_at)
            for seq, j in self.jobs.items()
            if j.queue == req.queue and j.mode == req.mode
            and (self.s.key_of(j.queue, j.priority, j.enqueued_at), seq) > req.after
        )[: req.limit]
        return [(seq, p, e) for _k, seq, p, e in rows], len(rows) < req.limit


_add = st.tuples(st.just("add"), st.sampled_from(QUEUES), st.sampled_from(MODES), st.integers(-5, 5), st.integers(0, 3))
ops = st.lists(
    st.one_of(
        _add, _add, _add, _add,  # adds outnumber the rest, so windows overflow and page
        st.tuples(st.just("discard"), st.integers(0, 10_000)),
        st.tuples(st.just("pick")),
        st.tuples(st.just("release"), st.integers(0, 10_000)),
        st.tuples(st.just("aging"), st.sampled_from(QUEUES), st.sampled_from([0.0, 0.5, 1.0, 3.0])),
        st.tuples(st.just("read"), st.integers(0, 10)),  # read an asked-for page now
        st.tuples(st.just("read"), st.integers(0, 10)),
        st.tuples(st.just("deliver"), st.integers(0, 10)),  # give a read page to the scheduler
        st.tuples(st.just("discard"), st.integers(0, 10_000)),
    ),
    min_size=30,
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(ops=ops, window=st.integers(1, 3))
def test_a_paged_scheduler_starts_what_an_all_in_memory_one_starts(ops: list[Any], window: int) -> None:
    now = [100.0]
    clock = lambda: now[0]  # noqa: E731
    whole = Scheduler({"thread": 2, "process": 1}, clock, window=1_000_000)
    paged = Scheduler({"thread": 2, "process": 1}, clock, window=window)
    store = Store(paged)
    asked: list[PageRequest] = []
    read: list[tuple[PageRequest, list[tuple[int, int, float]], bool]] = []
    running: list[Start] = []
    next_seq = 0

    def serve_all() -> None:
        # Before comparing picks, every page is read and given: a window never starves
        # while jobs wait beyond it.
        while True:
            asked.extend(paged.pages_needed())
            if not asked and not read:
                return
            for req in asked:
                read.append((req, *store.page(req)))
            asked.clear()
            for req, items, complete in read:
                paged.page_in(req, items, complete)
            read.clear()

    def pick_all() -> list[Start]:
        # A paged pick may stop where a window ran dry: page in, pick on.
        starts: list[Start] = []
        while True:
            serve_all()
            more = paged.pick()
            if not more:
                return starts
            starts.extend(more)

    for op in ops:
        note(repr(op))
        kind = op[0]
        if kind == "add":
            _, queue, mode, priority, dt = op
            now[0] += dt
            next_seq += 1
            store.jobs[next_seq] = Pending(queue, mode, priority, now[0])
            whole.add(next_seq, queue, mode, priority, now[0])
            paged.add(next_seq, queue, mode, priority, now[0])
        elif kind == "discard" and store.jobs:
            seq = sorted(store.jobs)[op[1] % len(store.jobs)]
            j = store.jobs.pop(seq)
            assert whole.discard(seq, j.queue)
            assert paged.discard(seq, j.queue, j.mode, j.priority, j.enqueued_at)
        elif kind == "pick":
            got, want = pick_all(), whole.pick()
            assert got == want
            for start in got:
                del store.jobs[start.seq]
            running.extend(got)
        elif kind == "release" and running:
            start = running.pop(op[1] % len(running))
            whole.release(start.queue, start.mode)
            paged.release(start.queue, start.mode)
        elif kind == "aging":
            whole.configure(op[1], aging=op[2])
            paged.configure(op[1], aging=op[2])
        elif kind == "read":
            asked.extend(paged.pages_needed())
            if asked:
                req = asked.pop(op[1] % len(asked))
                read.append((req, *store.page(req)))
        elif kind == "deliver" and read:
            req, items, complete = read.pop(op[1] % len(read))
            paged.page_in(req, items, complete)
        # Every committed pending job is held: in a window, or beyond one.
        for seq, j in store.jobs.items():
            assert paged.holds(seq, j.queue, j.mode, j.priority, j.enqueued_at, "pending"), seq
        assert paged.waiting_count() == whole.waiting_count() == len(store.jobs)
    for start in running:
        whole.release(start.queue, start.mode)
        paged.release(start.queue, start.mode)
    while True:
        got, want = pick_all(), whole.pick()
        assert got == want
        if not got:
            break
        for start in got:
            del store.jobs[start.seq]
            whole.release(start.queue, start.mode)
            paged.release(start.queue, start.mode)
        serve_all()
    assert not store.jobs


def test_many_waiting_jobs_keep_only_a_window_in_memory() -> None:
    """Given 100,000 jobs added to one queue, the scheduler holds at most twice its window
    of them in memory; the rest are counted and paged in as the window drains."""
    s = Scheduler({"thread": 1}, lambda: 0.0, window=100)
    let_go: list[int] = []
    for seq in range(1, 100_001):
        let_go.extend(s.add(seq, "q", "thread", 0, float(seq)))
    held = sum(1 for seq in range(1, 100_001) if s.is_waiting(seq))
    assert 100 <= held <= 200
    assert let_go and not any(s.is_waiting(seq) for seq in let_go)
    assert s.waiting_count() == 100_000
    assert s.pages_needed() == []  # the window is full enough


def _paged(window: int = 1) -> tuple[Scheduler, Store]:
    s = Scheduler({"thread": 1}, lambda: 0.0, window=window)
    return s, Store(s)


def _add(s: Scheduler, store: Store, seq: int, priority: int, at: float) -> None:
    store.jobs[seq] = Pending("a", "thread", priority, at)
    s.add(seq, "a", "thread", priority, at)


def _drain(s: Scheduler, store: Store) -> list[int]:
    order: list[int] = []
    while True:
        for req in s.pages_needed():
            s.page_in(req, *store.page(req))
        starts = s.pick()
        if not starts and not s.pages_needed():
            return order
        for start in starts:
            order.append(start.seq)
            del store.jobs[start.seq]
            s.release(start.queue, start.mode)


def test_a_job_discarded_while_its_page_is_read_never_starts() -> None:
    """Given jobs beyond a window and a page of them being read, when one in that page is
    discarded before the page arrives, then it is never started; the others all are."""
    s, store = _paged()
    for seq in (1, 2, 3, 4, 5):
        _add(s, store, seq, 0, float(seq))
    assert [x.seq for x in s.pick()] == [1]
    del store.jobs[1]
    s.release("a", "thread")
    (req,) = s.pages_needed()
    page = store.page(req)  # read now: it holds job 2
    j = store.jobs.pop(2)
    assert s.discard(2, "a", j.mode, j.priority, j.enqueued_at)
    s.page_in(req, *page)
    assert _drain(s, store) == [3, 4, 5]


def test_a_job_that_arrives_while_a_page_is_read_is_not_lost() -> None:
    """Given a page read before a job arrives whose key falls inside that page's range,
    when the page arrives, then the new job is held in memory and starts in its turn."""
    s, store = _paged()
    for seq, at in ((1, 1.0), (2, 10.0), (3, 11.0)):
        _add(s, store, seq, 0, at)
    assert [x.seq for x in s.pick()] == [1]
    del store.jobs[1]
    s.release("a", "thread")
    (req,) = s.pages_needed()
    page = store.page(req)  # read before job 4 came: it holds job 2 only
    _add(s, store, 4, 0, 5.0)  # between jobs 1 and 2 in the order
    s.page_in(req, *page)
    assert _drain(s, store) == [4, 2, 3]
