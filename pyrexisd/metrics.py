"""Counters the ``stats`` op reports, kept in memory and updated as changes commit.

Everything here is plain counting on the hot path (a dict update, a bisect): turning the
figures into Prometheus metric families happens only when someone scrapes
(:mod:`pyrexisd.prometheus`). Label values that people choose (queue and task names) are
capped (:class:`LabelCap`), so a client inventing queue names cannot grow the metrics
without bound.
"""

from __future__ import annotations

import asyncio
import math
from bisect import bisect_left
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from protocol.status import TERMINAL, WAITING

LAG_EVERY = 0.1  # seconds between loop-lag probes
LAG_SAMPLES = 600  # the last minute of probes


MAX_LABEL_VALUES = 100  # distinct queue (or task) names that get a label value of their own
OTHER = "_other"  # the label value of every name past the cap

# Histogram bounds, in seconds (or writes, for the commit batch size).
WAIT_BOUNDS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 3600.0)
RUN_BOUNDS = (0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0)
COMMIT_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
BATCH_BOUNDS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0)
LAG_BOUNDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


@dataclass(slots=True)
class Buckets:
    """A histogram's state: counts per upper bound (the last one is +Inf) and the sum."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs as Prometheus wants them (counts are cumulative)."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == math.inf else repr(float(bound)), running))
        return out


class LabelCap:
    """Label values for names people choose: the first ``limit`` names seen keep their
    own value for the daemon's lifetime, every later one is :data:`OTHER`. First come
    keeps its place, so a counter's series never moves between values (it stays
    monotonic)."""

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self.limit = limit
        self._kept: set[str] = set()

    def __call__(self, name: str) -> str:
        kept = self._kept
        if name in kept:
            return name
        if len(kept) < self.limit:
            kept.add(name)
            return name
        return OTHER


class LoopLag:
    """How late the event loop runs a timer: the time every callback waits behind the
    work in front of it (a long stretch of loop work shows here before anywhere else)."""

    def __init__(self) -> None:
        self._samples: deque[float] = deque(maxlen=LAG_SAMPLES)
        self.buckets = Buckets(LAG_BOUNDS)  # every probe since the start
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._due = loop.time() + LAG_EVERY
        self._handle = loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        late = max(0.0, now - self._due)
        self._samples.append(late)
        self.buckets.observe(late)
        self._due = now + LAG_EVERY
        self._handle = loop.call_at(self._due, self._tick)

    def __len__(self) -> int:
        """Probes taken (at most the last minute's)."""
        return len(self._samples)

    def snapshot(self) -> dict[str, float]:
        """Milliseconds: median, 99th percentile and worst lateness over the last minute."""
        samples = self._samples
        return {
            "p50": _percentile(samples, 0.50) * 1000.0,
            "p99": _percentile(samples, 0.99) * 1000.0,
            "max": max(samples, default=0.0) * 1000.0,
        }


class Metrics:
    """Jobs per (queue, status) and per running mode, completions, submit→start latency;
    the same job counts per owner (what a user who is not an admin is shown, and what
    the waiting quotas count)."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.by_queue_status: Counter[tuple[str, str]] = Counter()
        self.running_by_mode: Counter[str] = Counter()
        self.by_owner: dict[int, Counter[tuple[str, str]]] = {}
        self.running_by_owner_mode: dict[int, Counter[str]] = {}
        self.waiting_by_owner: Counter[int] = Counter()
        self.waiting = 0  # jobs in a waiting status, all owners together
        self._completions: deque[tuple[float, str]] = deque()  # (time, queue), the last minute
        self._latencies: deque[float] = deque(maxlen=1000)
        self.loop_lag = LoopLag()
        # -- what only the Prometheus export reads (see pyrexisd.prometheus) --
        self.queue_label = LabelCap()
        self.task_label = LabelCap()
        self.by_queue_task_status: Counter[tuple[str, str, str]] = Counter()  # raw names
        self.submitted: Counter[tuple[str, str]] = Counter()  # (queue, task) label values
        self.attempts_started: Counter[tuple[str, str, str]] = Counter()  # (queue, task, mode)
        self.ended: Counter[tuple[str, str, str]] = Counter()  # (queue, task, outcome)
        self.retried: Counter[tuple[str, str]] = Counter()  # attempts that failed and retry
        self.queue_wait = Buckets(WAIT_BOUNDS)
        self.run_time: dict[str, Buckets] = {}  # per mode
        self.commit_time = Buckets(COMMIT_BOUNDS)
        self.commit_batch = Buckets(BATCH_BOUNDS)
        self.http_requests: Counter[tuple[str, str, int]] = Counter()  # (method, route, status)
        self.http_streams = 0  # Server-Sent Events streams open

    def moved(
        self, queue: str, mode: str, old: str | None, new: str, old_queue: str | None = None, owner: int = 0,
        task: str = "",
        n: int = 1,
    ) -> None:
        """A job's status change (and maybe queue change) has committed; ``owner`` is the
        uid the job counts for. ``n``: as many jobs of that kind, all at once."""
        by_qts = self.by_queue_task_status
        if old is not None:
            by_qts[(old_queue or queue, task, old)] -= n
        by_qts[(queue, task, new)] += n
        if old is None:
            self.submitted[(self.queue_label(queue), self.task_label(task))] += n
        if new == "running":
            self.attempts_started[(self.queue_label(queue), self.task_label(task), mode)] += n
        elif new in TERMINAL:
            self.ended[(self.queue_label(queue), self.task_label(task), new)] += n
        elif new == "retrying" and old == "running":
            self.retried[(self.queue_label(queue), self.task_label(task))] += n
        mine = self.by_owner.get(owner)
        if mine is None:
            mine = self.by_owner[owner] = Counter()
            self.running_by_owner_mode[owner] = Counter()
        if old is not None:
            self.by_queue_status[(old_queue or queue, old)] -= n
            mine[(old_queue or queue, old)] -= n
            if old == "running":
                self.running_by_mode[mode] -= n
                self.running_by_owner_mode[owner][mode] -= n
            elif old in WAITING:
                self.waiting -= n
                self.waiting_by_owner[owner] -= n
        self.by_queue_status[(queue, new)] += n
        mine[(queue, new)] += n
        if new == "running":
            self.running_by_mode[mode] += n
            self.running_by_owner_mode[owner][mode] += n
        elif new in WAITING:
            self.waiting += n
            self.waiting_by_owner[owner] += n

    def loaded(self, queue: str, status: str, owner: int, n: int, task: str = "") -> None:
        """At start-up: ``n`` stored jobs of ``owner`` and ``task`` are in ``queue`` with ``status``."""
        self.by_queue_task_status[(queue, task, status)] += n
        self.by_queue_status[(queue, status)] += n
        self.by_owner.setdefault(owner, Counter())[(queue, status)] += n
        self.running_by_owner_mode.setdefault(owner, Counter())
        if status in WAITING:
            self.waiting += n
            self.waiting_by_owner[owner] += n

    def pruned(self, queue: str, status: str, owner: int) -> None:
        """A finished job of ``owner`` was pruned (retention, ``clean``)."""
        self.by_queue_status[(queue, status)] -= 1
        mine = self.by_owner.get(owner)
        if mine is not None:
            mine[(queue, status)] -= 1

    def completed_per_s(self, now: float) -> float:
        """Completions per second over the last minute (or since the start, if shorter)."""
        self._trim(now)
        return len(self._completions) / min(60.0, max(1e-9, now - self.started))

    def completed_per_s_by_queue(self, now: float) -> dict[str, float]:
        """The same, per queue (queues without completions left out)."""
        self._trim(now)
        span = min(60.0, max(1e-9, now - self.started))
        counts: Counter[str] = Counter(queue for _, queue in self._completions)
        return {queue: n / span for queue, n in counts.items()}

    def completed(self, now: float, queue: str = "default") -> None:
        self._completions.append((now, queue))
        self._trim(now)

    def started_after(self, seconds: float) -> None:
        self._latencies.append(seconds)
        self.queue_wait.observe(seconds)

    def ran(self, mode: str, seconds: float) -> None:
        """An attempt in ``mode`` ended after ``seconds``."""
        buckets = self.run_time.get(mode)
        if buckets is None:
            buckets = self.run_time[mode] = Buckets(RUN_BOUNDS)
        buckets.observe(seconds)

    def committed(self, seconds: float, writes: int) -> None:
        """The store committed a batch of ``writes`` in ``seconds``."""
        self.commit_time.observe(seconds)
        self.commit_batch.observe(float(writes))

    def _trim(self, now: float) -> None:
        c = self._completions
        while c and c[0][0] < now - 60.0:
            c.popleft()

    def count(self, queue: str, statuses: frozenset[str], owner: int | None = None) -> int:
        """Jobs of ``queue`` in one of ``statuses`` (only ``owner``'s, when given)."""
        counts = self.by_queue_status if owner is None else self.by_owner.get(owner, Counter())
        return sum(counts.get((queue, s), 0) for s in statuses)

    def queues(self, owner: int | None = None) -> set[str]:
        counts = self.by_queue_status if owner is None else self.by_owner.get(owner, Counter())
        return {q for (q, _), n in counts.items() if n}

    def snapshot(self, now: float, slots: dict[str, int], owner: int | None = None) -> dict[str, Any]:
        """The ``stats`` figures; the job counts only ``owner``'s when given."""
        self._trim(now)
        by_status: Counter[str] = Counter()
        by_queue: dict[str, dict[str, int]] = {}
        counts = self.by_queue_status if owner is None else self.by_owner.get(owner, Counter())
        running = self.running_by_mode if owner is None else self.running_by_owner_mode.get(owner, Counter())
        for (queue, status), n in counts.items():
            if n:
                by_status[status] += n
                by_queue.setdefault(queue, {})[status] = n
        return {
            "uptime": now - self.started,
            "by_status": dict(by_status),
            "by_queue": by_queue,
            "running_by_mode": {m: n for m, n in running.items() if n},
            "slots": dict(slots),
            "completed_per_s": self.completed_per_s(now),
            "submit_to_start_ms": {
                "p50": _percentile(self._latencies, 0.50) * 1000.0,
                "p99": _percentile(self._latencies, 0.99) * 1000.0,
            },
            "loop_lag_ms": self.loop_lag.snapshot(),
        }


def _percentile(samples: deque[float] | list[float], q: float) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]

