"""Which waiting job runs next: pure logic, no I/O, no asyncio, time passed in.

Order
-----
* Inside a queue, the job with the highest *effective priority* starts first, where
  effective priority is ``priority + aging * (now - enqueued_at)``. With one linear rate
  per queue that orders jobs exactly like the static key ``priority - aging * enqueued_at``,
  so each heap is keyed once at insertion and never re-sorted. Equal keys start in
  submission order (the job's ``seq``).
* Aging bound: priorities span 2,000 points (-1000..1000), so a job can only be passed by
  jobs enqueued less than ``2000 / aging`` seconds after it (33 min 20 s at the default
  rate of 1 point/s). Jobs that arrive later than that always queue behind it.
* Across queues, slots are shared by stride scheduling: every queue holds a virtual
  ``pass``; the eligible queue with the smallest pass starts its best job, and its pass
  advances by ``1 / weight``. Over time the starts of always-busy queues are proportional
  to their weights, and a queue waking up from idle joins at the current virtual time, so
  it cannot bank credit while it had nothing to run. Stride scheduling rather than
  weighted fair queuing because jobs have no known size: each start counts as one unit.
* A slot is per execution mode: jobs of one mode never wait for slots of another.
  A paused queue, or one at its ``max_concurrency``, is skipped and never blocks the rest.

Paging
------
Per queue and mode, only a *window* of the ready jobs is held in memory: every one whose
``(key, seq)`` is at most the window's ``bound``. The others are counted (``beyond``) and
live in the store only, where an index orders pending jobs by the same static key. When
a window runs low while jobs wait beyond it, :meth:`Scheduler.pages_needed` asks the
caller to read the next page (the jobs just past the bound, in key order) and
:meth:`Scheduler.page_in` takes it. A window that grows past twice its size is trimmed
back, its largest keys going beyond. So memory does not grow with the number of waiting
jobs (a million of them cost the counts), and the order is exactly that of one heap
holding them all: jobs beyond a window are never better than any job inside it.
While a page is being read, jobs that become ready beyond the bound and jobs discarded
beyond it are noted, so the page and those changes are merged without loss or repeat.

Memory per job in a window is one 4-tuple, two floats and one dict entry (about 190
bytes); the job's record lives in the store.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

DEFAULT_AGING = 1.0
DEFAULT_WINDOW = 2048
PRIORITY_SPAN = 2000  # max priority - min priority

# (static key, seq, priority, enqueued_at): ordered by the first two, which are unique
# together; the last two re-key the heap when the queue's aging rate changes.
HeapItem = tuple[float, int, int, float]


def aging_bound(aging: float) -> float:
    """Seconds after which no later job can pass a waiting one (``inf`` without aging)."""
    return float("inf") if aging <= 0 else PRIORITY_SPAN / aging


@dataclass(slots=True)
class QueueState:
    """A queue as the scheduler sees it; settings are mirrored from the store."""

    name: str
    weight: float = 1.0
    max_concurrency: int | None = None
    aging: float = DEFAULT_AGING
    paused: bool = False
    running: int = 0
    waiting: int = 0
    vpass: float = 0.0
    windows: dict[str, Window] = field(default_factory=dict)

    def key(self, priority: int, enqueued_at: float) -> float:
        # Min-heap: the smallest key is the highest effective priority. Always a new float
        # object: stale heap entries are told apart by the identity of their key.
        return float(self.aging * enqueued_at - priority)

    def has_room(self) -> bool:
        return self.max_concurrency is None or self.running < self.max_concurrency


_INF: tuple[float, int] = (math.inf, 0)
_NONE: tuple[int, ...] = ()


@dataclass(slots=True)
class Window:
    """The ready jobs of one (queue, mode) held in memory: all those with ``(key, seq)``
    up to ``bound``; ``beyond`` more wait in the store only."""

    heap: list[HeapItem] = field(default_factory=list)
    live: int = 0  # valid items in ``heap`` (stale ones are dropped when they surface)
    beyond: int = 0
    bound: tuple[float, int] = _INF
    generation: int = 0  # bumped when keys change (aging): a page read before is stale
    # While a page is read: jobs that became ready beyond the bound meanwhile, and jobs
    # beyond it that were discarded meanwhile (the page may still hold them).
    paging: bool = False
    arrivals: list[HeapItem] = field(default_factory=list)
    dropped: set[int] = field(default_factory=set)

    def push(self, item: HeapItem, ready: dict[int, float]) -> None:
        """Hold ``item`` in memory (``ready`` maps a held seq to its key object)."""
        heapq.heappush(self.heap, item)
        ready[item[1]] = item[0]
        self.live += 1

    def arrive(self, item: HeapItem, ready: dict[int, float]) -> bool:
        """A job became ready: held if its place is inside the bound (True), else counted
        beyond it (noted as an arrival while a page is read)."""
        if (item[0], item[1]) <= self.bound:
            self.push(item, ready)
            return True
        if self.paging:
            self.arrivals.append(item)
        else:
            self.beyond += 1
        return False

    def forget_beyond(self, seq: int, key: float) -> bool:
        """A job beyond the bound leaves (discarded): False if it is not one of them."""
        if (key, seq) <= self.bound:
            return False
        for i, item in enumerate(self.arrivals):
            if item[1] == seq:
                del self.arrivals[i]
                return True
        if self.beyond <= 0:
            return False
        self.beyond -= 1
        if self.paging:
            self.dropped.add(seq)  # the page being read may hold it: skip it there
        return True

    def take_page(
        self, items: Iterable[HeapItem], complete: bool, ready: dict[int, float], held: Callable[[int], bool]
    ) -> list[int]:
        """Merge a page read past the bound (items in key order) with what arrived and left
        meanwhile; the seqs now held from it."""
        self.paging = False
        arrivals = {item[1]: item for item in self.arrivals}
        dropped = self.dropped
        self.arrivals, self.dropped = [], set()
        taken: list[int] = []
        last: tuple[float, int] | None = None
        for item in items:
            seq = item[1]
            last = (item[0], seq)
            if seq in dropped or held(seq):
                continue
            if arrivals.pop(seq, None) is None:
                self.beyond -= 1
            self.push(item, ready)
            taken.append(seq)
        if complete or last is None:
            self.bound = _INF
            self.beyond = 0  # everything past the old bound was in the page
        else:
            self.bound = max(self.bound, last)
        for item in arrivals.values():
            if (item[0], item[1]) <= self.bound:
                self.push(item, ready)
                taken.append(item[1])
            else:
                self.beyond += 1
        return taken

    def abandon_page(self) -> None:
        """The page being read will not come: what arrived meanwhile is beyond the bound."""
        self.paging = False
        self.beyond += len(self.arrivals)
        self.arrivals, self.dropped = [], set()

    def trim(self, size: int, ready: dict[int, float]) -> tuple[int, ...]:
        """Keep the best ``size`` jobs in memory; the rest go beyond the bound."""
        valid = sorted(item for item in self.heap if ready.get(item[1]) is item[0])
        keep, gone = valid[:size], valid[size:]
        for item in gone:
            del ready[item[1]]
        self.heap = keep  # a sorted list is a heap
        self.live = len(keep)
        self.beyond += len(gone)
        self.bound = (keep[-1][0], keep[-1][1]) if keep else (-math.inf, 0)
        return tuple(item[1] for item in gone)

    def empty(self, ready: dict[int, float]) -> None:
        """Every job goes beyond the bound (their keys changed): paged in anew."""
        for key, seq, _p, _enqueued in self.heap:
            if ready.get(seq) is key:
                del ready[seq]
        self.beyond += self.live + len(self.arrivals)
        self.heap, self.live, self.arrivals, self.dropped = [], 0, [], set()
        self.bound = (-math.inf, 0)
        self.paging = False


@dataclass(frozen=True, slots=True)
class PageRequest:
    """Read, from the store, up to ``limit`` pending jobs of ``queue`` in ``mode`` whose
    ``(sched_key, seq)`` is greater than ``after``, in that order; give them to
    :meth:`Scheduler.page_in` with this request."""

    queue: str
    mode: str
    after: tuple[float, int]
    limit: int
    generation: int


@dataclass(frozen=True, slots=True)
class Start:
    """A decision: job ``seq`` takes a slot of ``mode`` for ``queue``."""

    seq: int
    queue: str
    mode: str


class Scheduler:
    """Priority queues with aging, fair share across queues, slots per mode, timers.

    The caller tells it what happened (``add``, ``defer``, ``discard``, ``release``) and
    asks what to do (``pick``, ``due``). It never calls out and never reads a clock except
    the one it is given.
    """

    def __init__(
        self,
        slots: Mapping[str, int],
        clock: Callable[[], float],
        default_aging: float = DEFAULT_AGING,
        paused_by_default: bool = False,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.window = window  # ready jobs kept in memory per queue and mode, after a trim
        self.slots: dict[str, int] = dict(slots)
        self.busy: dict[str, int] = {mode: 0 for mode in slots}
        self.clock = clock
        self.default_aging = default_aging
        self.paused_by_default = paused_by_default
        self.queues: dict[str, QueueState] = {}
        # seq -> the key object of a ready (pending) job. A heap item whose key is not the
        # very object recorded here is stale (discarded, or re-added with a new key) and
        # is dropped when it reaches its heap's top.
        self._ready: dict[int, float] = {}
        self._timers: list[tuple[float, int]] = []
        self._timer_at: dict[int, float] = {}  # seq -> when, for deferred jobs
        self._vtime = 0.0

    # -- queues -----------------------------------------------------------------------
    def queue(self, name: str) -> QueueState:
        """The queue called ``name``, created with the defaults on first use."""
        q = self.queues.get(name)
        if q is None:
            q = QueueState(
                name, aging=self.default_aging, paused=self.paused_by_default, vpass=self._vtime
            )
            self.queues[name] = q
        return q

    def configure(
        self,
        name: str,
        *,
        weight: float | None = None,
        max_concurrency: int | None | bool = False,
        aging: float | None = None,
        paused: bool | None = None,
    ) -> QueueState:
        """Change a queue's settings; ``max_concurrency=None`` removes the cap."""
        q = self.queue(name)
        if weight is not None:
            if weight <= 0:
                raise ValueError("weight must be > 0")
            q.weight = weight
        if max_concurrency is not False:
            q.max_concurrency = max_concurrency
        if paused is not None:
            if q.paused and not paused:
                self._rejoin(q)
            q.paused = paused
        if aging is not None and aging != q.aging:
            if aging < 0:
                raise ValueError("aging must be >= 0")
            q.aging = aging
            for w in q.windows.values():
                w.generation += 1  # a page read with the old keys is stale
                if w.beyond == 0 and not w.paging:
                    self._rekey(q, w)  # all of them are here: re-keyed in place
                    continue
                # Jobs wait beyond the window, ordered by the old keys in the store (which
                # re-keys its rows in the same commit): empty the window, page in anew.
                w.empty(self._ready)
        return q

    def _rekey(self, q: QueueState, w: Window) -> None:
        fresh: list[HeapItem] = []
        for key, seq, p, enqueued in w.heap:
            if self._ready.get(seq) is not key:
                continue  # stale
            new_key = q.key(p, enqueued)
            self._ready[seq] = new_key
            fresh.append((new_key, seq, p, enqueued))
        heapq.heapify(fresh)
        w.heap = fresh

    def pause_all(self, paused: bool) -> None:
        """Pause or resume every queue, including the ones created later."""
        self.paused_by_default = paused
        for q in self.queues.values():
            if q.paused and not paused:
                self._rejoin(q)
            q.paused = paused

    # -- waiting jobs -----------------------------------------------------------------
    def key_of(self, queue: str, priority: int, enqueued_at: float) -> float:
        """The static key a pending job of ``queue`` is ordered by (the store keeps it)."""
        return self.queue(queue).key(priority, enqueued_at)

    def add(self, seq: int, queue: str, mode: str, priority: int, enqueued_at: float) -> tuple[int, ...]:
        """A job became ``pending``: it may start when a slot allows.

        Returns the jobs that the window let go to the store to make room (usually none):
        their rows need not be kept in memory any more.
        """
        if mode not in self.slots:
            raise ValueError(f"no slots for mode {mode!r}")
        q = self.queue(queue)
        self._wake(q)
        if seq in self._ready or seq in self._timer_at:
            raise ValueError(f"job {seq} is already waiting")
        q.waiting += 1
        w = q.windows.get(mode)
        if w is None:
            w = q.windows[mode] = Window()
        if w.arrive((q.key(priority, enqueued_at), seq, priority, enqueued_at), self._ready):
            if w.live > 2 * self.window and not w.paging:
                return w.trim(self.window, self._ready)
        return _NONE

    def defer(self, seq: int, at: float) -> None:
        """A job waits until ``at`` (``scheduled`` or ``retrying``); :meth:`due` returns it."""
        if seq in self._ready:
            raise ValueError(f"job {seq} is already ready")
        self._timer_at[seq] = at
        heapq.heappush(self._timers, (at, seq))

    def discard(
        self,
        seq: int,
        queue: str | None = None,
        mode: str | None = None,
        priority: int | None = None,
        enqueued_at: float | None = None,
    ) -> bool:
        """Forget a waiting or deferred job (cancelled, held, moved). False if not here.

        Pass the job's ``queue`` when known: the scheduler keeps no seq → queue map (that
        would cost memory per job), so without it the queues are searched. A pending job
        beyond its window is known only by its place in the order: pass ``mode``,
        ``priority`` and ``enqueued_at`` too, or it is not found.
        """
        key = self._ready.pop(seq, None)
        if key is not None:
            q, w = self._window_holding(seq, key, queue, mode)
            q.waiting -= 1
            w.live -= 1  # its heap item is dropped when it reaches the top
            return True
        if self._timer_at.pop(seq, None) is not None:
            return True
        if queue is None or mode is None or priority is None or enqueued_at is None:
            return False
        found = self._window_of(queue, mode)
        if found is None:
            return False
        q, w = found
        if not w.forget_beyond(seq, q.key(priority, enqueued_at)):
            return False
        q.waiting -= 1
        return True

    def is_waiting(self, seq: int) -> bool:
        """Whether ``seq`` is ready or deferred here, in memory (not yet picked)."""
        return seq in self._ready or seq in self._timer_at

    def holds(self, seq: int, queue: str, mode: str, priority: int, enqueued_at: float, status: str) -> bool:
        """Whether a job in ``status`` waits here: in memory, or (pending) beyond its window."""
        if seq in self._ready or seq in self._timer_at:
            return True
        if status != "pending":
            return False
        found = self._window_of(queue, mode)
        if found is None:
            return False
        q, w = found
        if w.beyond <= 0 and not w.arrivals:
            return False
        return (q.key(priority, enqueued_at), seq) > w.bound

    def _window_of(self, queue: str, mode: str) -> tuple[QueueState, Window] | None:
        q = self.queues.get(queue)
        if q is None:
            return None
        w = q.windows.get(mode)
        return None if w is None else (q, w)

    # -- paging -----------------------------------------------------------------------
    def pages_needed(self) -> list[PageRequest]:
        """Windows that run low while jobs wait beyond them: read these pages now."""
        low = max(1, self.window // 2)
        out: list[PageRequest] = []
        for q in self.queues.values():
            for mode, w in q.windows.items():
                if w.beyond > 0 and not w.paging and w.live < low:
                    w.paging = True
                    out.append(PageRequest(q.name, mode, w.bound, self.window, w.generation))
        return out

    def page_in(self, request: PageRequest, items: Iterable[tuple[int, int, float]], complete: bool) -> list[int]:
        """Take a page read for ``request``: ``(seq, priority, enqueued_at)`` in key order,
        ``complete`` when it held every job past the bound (fewer than asked). Returns the
        seqs now held in memory from the page."""
        q = self.queues[request.queue]
        w = q.windows[request.mode]
        if request.generation != w.generation or not w.paging:
            return []  # the keys changed since the read: a fresh page will be asked for
        page = ((q.key(priority, enqueued_at), seq, priority, enqueued_at) for seq, priority, enqueued_at in items)
        return w.take_page(page, complete, self._ready, self.is_waiting)

    def beyond(self, queue: str, mode: str, count: int) -> None:
        """``count`` pending jobs of ``queue`` in ``mode`` wait in the store (start-up):
        nothing of theirs is in memory until a page is read."""
        if count <= 0:
            return
        if mode not in self.slots:
            raise ValueError(f"no slots for mode {mode!r}")
        q = self.queue(queue)
        self._wake(q)
        w = q.windows.get(mode)
        if w is None:
            w = q.windows[mode] = Window(bound=(-math.inf, 0))
        elif w.live == 0 and w.beyond == 0:
            w.bound = (-math.inf, 0)
        if w.bound == _INF:
            raise ValueError("jobs beyond a window that holds every job")
        w.beyond += count
        q.waiting += count

    def page_failed(self, request: PageRequest) -> None:
        """The page of ``request`` could not be read: it may be asked for again."""
        w = self.queues[request.queue].windows[request.mode]
        if request.generation == w.generation and w.paging:
            w.abandon_page()

    def due(self, now: float | None = None) -> list[int]:
        """Deferred jobs whose time has come, in time order; they are forgotten here."""
        now = self.clock() if now is None else now
        out: list[int] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            at, seq = heapq.heappop(timers)
            if self._timer_at.get(seq) == at:
                del self._timer_at[seq]
                out.append(seq)
        return out

    def next_timer(self) -> float | None:
        """When the earliest deferred job is due, or None."""
        timers = self._timers
        while timers and self._timer_at.get(timers[0][1]) != timers[0][0]:
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    # -- slots ------------------------------------------------------------------------
    def free_slots(self, mode: str) -> int:
        return self.slots.get(mode, 0) - self.busy.get(mode, 0)

    def resize(self, mode: str, slots: int) -> None:
        """``mode`` now has ``slots`` slots. Fewer than are busy: running jobs go on, and
        none of that mode starts until they are below the new count."""
        if slots < 0:
            raise ValueError("slots must be >= 0")
        self.slots[mode] = slots
        self.busy.setdefault(mode, 0)

    def try_start_now(self, queue: str, mode: str) -> bool:
        """Take a slot for a job that was just submitted, if it may start at once.

        It may when its mode has a free slot, its queue is runnable, and no job of that
        mode is waiting in any runnable queue (they were there first).
        """
        if self.free_slots(mode) <= 0:
            return False
        q = self.queue(queue)
        if q.paused or not q.has_room():
            return False
        for other in self.queues.values():
            if other.waiting and not other.paused and other.has_room() and self._has_ready(other, mode):
                return False
        self._wake(q)
        self._take(q, mode)
        return True

    def pick(self) -> list[Start]:
        """Every start the free slots allow right now, slots taken, in start order.

        It stops early where the next start may be a job beyond a window that ran dry:
        after that page is in (:meth:`pages_needed`, :meth:`page_in`), pick again.
        """
        starts: list[Start] = []
        if not self._ready:
            return starts
        busy = self.busy
        for mode, slots in self.slots.items():
            while busy.get(mode, 0) < slots:
                best: QueueState | None = None
                best_item: HeapItem | None = None
                unknown = math.inf  # the lowest pass of a queue whose next job is not paged in
                for q in self.queues.values():
                    if not q.waiting or q.paused or not q.has_room():
                        continue
                    item = self._head(q, mode)
                    if item is None:
                        w = q.windows.get(mode)
                        if w is not None and (w.beyond > 0 or w.arrivals):
                            unknown = min(unknown, q.vpass)
                        continue
                    if best is None or best_item is None or (q.vpass, item[0], item[1]) < (
                        best.vpass,
                        best_item[0],
                        best_item[1],
                    ):
                        best, best_item = q, item
                if unknown < math.inf and (best is None or unknown <= best.vpass):
                    # The best may wait beyond a window: page it in first, then pick on
                    # (other modes too, so the order of starts is that of one big heap).
                    return starts
                if best is None or best_item is None:
                    break
                window = best.windows[mode]
                heapq.heappop(window.heap)
                window.live -= 1
                del self._ready[best_item[1]]
                best.waiting -= 1
                self._take(best, mode)
                starts.append(Start(best_item[1], best.name, mode))
        return starts

    def release(self, queue: str, mode: str) -> None:
        """A job of ``queue`` left its ``mode`` slot (finished, failed, cancelled)."""
        self.busy[mode] -= 1
        self.queue(queue).running -= 1
        if self.busy[mode] < 0 or self.queues[queue].running < 0:
            raise AssertionError(f"slot released twice: {queue}/{mode}")

    # -- internals --------------------------------------------------------------------
    def _window_holding(
        self, seq: int, key: float, queue: str | None, mode: str | None
    ) -> tuple[QueueState, Window]:
        if queue is not None and mode is not None:
            q = self.queues[queue]
            return q, q.windows[mode]
        for q in self.queues.values() if queue is None else (self.queues[queue],):
            for w in q.windows.values():
                if any(item[1] == seq and item[0] is key for item in w.heap):
                    return q, w
        raise AssertionError(f"ready job {seq} is in no window")

    def _rejoin(self, q: QueueState) -> None:
        # A resumed queue joins at the current virtual time: no burst for its pause.
        q.vpass = max(q.vpass, self._vtime)

    def _wake(self, q: QueueState) -> None:
        # A queue with nothing waiting joins at the current virtual time: it cannot bank
        # credit for the time it had nothing to run (even with a long job still running).
        if q.waiting == 0:
            q.vpass = max(q.vpass, self._vtime)

    def _take(self, q: QueueState, mode: str) -> None:
        self.busy[mode] = self.busy.get(mode, 0) + 1
        q.running += 1
        self._vtime = q.vpass
        q.vpass += 1.0 / q.weight

    def _head(self, q: QueueState, mode: str) -> HeapItem | None:
        w = q.windows.get(mode)
        if w is None or not w.heap:
            return None
        heap = w.heap
        ready = self._ready
        while heap:
            item = heap[0]
            if ready.get(item[1]) is item[0]:
                return item
            heapq.heappop(heap)  # discarded or re-added earlier
        return None

    def _has_ready(self, q: QueueState, mode: str) -> bool:
        """Whether a job of ``mode`` waits ready in ``q``, in memory or beyond its window."""
        w = q.windows.get(mode)
        return w is not None and (w.beyond > 0 or bool(w.arrivals) or self._head(q, mode) is not None)

    def waiting_count(self) -> int:
        """Jobs waiting here: ready (in memory or beyond their window) and deferred."""
        beyond = sum(w.beyond + len(w.arrivals) for q in self.queues.values() for w in q.windows.values())
        return len(self._ready) + len(self._timer_at) + beyond
