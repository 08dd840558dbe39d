"""Counters the ``stats`` op reports, kept in memory and updated as changes commit."""

from __future__ import annotations

import asyncio
import math
from collections import Counter, deque
from typing import Any

from protocol.status import WAITING

LAG_EVERY = 0.1  # seconds between loop-lag probes
LAG_SAMPLES = 600  # the last minute of probes


class LoopLag:
    """How late the event loop runs a timer: the time every callback waits behind the
    work in front of it (a long stretch of loop work shows here before anywhere else)."""

    def __init__(self) -> None:
        self._samples: deque[float] = deque(maxlen=LAG_SAMPLES)
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
        self._samples.append(max(0.0, now - self._due))
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

    def moved(
        self, queue: str, mode: str, old: str | None, new: str, old_queue: str | None = None, owner: int = 0
    ) -> None:
        """A job's status change (and maybe queue change) has committed; ``owner`` is the
        uid the job counts for."""
        mine = self.by_owner.get(owner)
        if mine is None:
            mine = self.by_owner[owner] = Counter()
            self.running_by_owner_mode[owner] = Counter()
        if old is not None:
            self.by_queue_status[(old_queue or queue, old)] -= 1
            mine[(old_queue or queue, old)] -= 1
            if old == "running":
                self.running_by_mode[mode] -= 1
                self.running_by_owner_mode[owner][mode] -= 1
            elif old in WAITING:
                self.waiting -= 1
                self.waiting_by_owner[owner] -= 1
        self.by_queue_status[(queue, new)] += 1
        mine[(queue, new)] += 1
        if new == "running":
            self.running_by_mode[mode] += 1
            self.running_by_owner_mode[owner][mode] += 1
        elif new in WAITING:
            self.waiting += 1
            self.waiting_by_owner[owner] += 1

    def loaded(self, queue: str, status: str, owner: int, n: int) -> None:
        """At start-up: ``n`` stored jobs of ``owner`` are in ``queue`` with ``status``."""
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

