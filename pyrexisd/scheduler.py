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

Memory per waiting job is one 4-tuple, two floats and one dict entry (about 190 bytes: a
million waiting jobs take about 190 MB); the job's record lives in the store.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

DEFAULT_AGING = 1.0
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
    heaps: dict[str, list[HeapItem]] = field(default_factory=dict)

    def key(self, priority: int, enqueued_at: float) -> float:
        # Min-heap: the smallest key is the highest effective priority. Always a new float
        # object: stale heap entries are told apart by the identity of their key.
        return float(self.aging * enqueued_at - priority)

    def has_room(self) -> bool:
        return self.max_concurrency is None or self.running < self.max_concurrency


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
    ) -> None:
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
            for mode, heap in q.heaps.items():
                fresh: list[HeapItem] = []
                for key, seq, p, enqueued in heap:
                    if self._ready.get(seq) is not key:
                        continue  # stale
                    new_key = q.key(p, enqueued)
                    self._ready[seq] = new_key
                    fresh.append((new_key, seq, p, enqueued))
                heapq.heapify(fresh)
                q.heaps[mode] = fresh
        return q

    def pause_all(self, paused: bool) -> None:
        """Pause or resume every queue, including the ones created later."""
        self.paused_by_default = paused
        for q in self.queues.values():
            if q.paused and not paused:
                self._rejoin(q)
            q.paused = paused

    # -- waiting jobs -----------------------------------------------------------------
    def add(self, seq: int, queue: str, mode: str, priority: int, enqueued_at: float) -> None:
        """A job became ``pending``: it may start when a slot allows."""
        if mode not in self.slots:
            raise ValueError(f"no slots for mode {mode!r}")
        q = self.queue(queue)
        self._wake(q)
        if seq in self._ready or seq in self._timer_at:
            raise ValueError(f"job {seq} is already waiting")
        key = q.key(priority, enqueued_at)
        heapq.heappush(q.heaps.setdefault(mode, []), (key, seq, priority, enqueued_at))
        self._ready[seq] = key
        q.waiting += 1

    def defer(self, seq: int, at: float) -> None:
        """A job waits until ``at`` (``scheduled`` or ``retrying``); :meth:`due` returns it."""
        if seq in self._ready:
            raise ValueError(f"job {seq} is already ready")
        self._timer_at[seq] = at
        heapq.heappush(self._timers, (at, seq))

    def discard(self, seq: int, queue: str | None = None) -> bool:
        """Forget a waiting or deferred job (cancelled, held, moved). False if not here.

        Pass the job's ``queue`` when known: the scheduler keeps no seq → queue map (that
        would cost memory per job), so without it the queues are searched.
        """
        key = self._ready.pop(seq, None)
        if key is not None:
            q = self.queues[queue] if queue is not None else self._queue_holding(seq, key)
            q.waiting -= 1  # its heap item is dropped when it reaches the top
            return True
        return self._timer_at.pop(seq, None) is not None

    def is_waiting(self, seq: int) -> bool:
        """Whether ``seq`` is ready or deferred here (not yet picked)."""
        return seq in self._ready or seq in self._timer_at

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
            if other.waiting and not other.paused and other.has_room() and self._head(other, mode):
                return False
        self._wake(q)
        self._take(q, mode)
        return True

    def pick(self) -> list[Start]:
        """Every start the free slots allow right now, slots taken, in start order."""
        starts: list[Start] = []
        if not self._ready:
            return starts
        busy = self.busy
        for mode, slots in self.slots.items():
            while busy.get(mode, 0) < slots:
                best: QueueState | None = None
                best_item: HeapItem | None = None
                for q in self.queues.values():
                    if not q.waiting or q.paused or not q.has_room():
                        continue
                    item = self._head(q, mode)
                    if item is None:
                        continue
                    if best is None or best_item is None or (q.vpass, item[0], item[1]) < (
                        best.vpass,
                        best_item[0],
                        best_item[1],
                    ):
                        best, best_item = q, item
                if best is None or best_item is None:
                    break
                heapq.heappop(best.heaps[mode])
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
    def _queue_holding(self, seq: int, key: float) -> QueueState:
        for q in self.queues.values():
            for heap in q.heaps.values():
                if any(item[1] == seq and item[0] is key for item in heap):
                    return q
        raise AssertionError(f"ready job {seq} is in no heap")

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
        heap = q.heaps.get(mode)
        if not heap:
            return None
        ready = self._ready
        while heap:
            item = heap[0]
            if ready.get(item[1]) is item[0]:
                return item
            heapq.heappop(heap)  # discarded or re-added earlier
        return None

    def waiting_count(self) -> int:
        return len(self._ready) + len(self._timer_at)
