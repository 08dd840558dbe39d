"""Counters the ``stats`` op reports, kept in memory and updated as changes commit."""

from __future__ import annotations

import asyncio
import math
from collections import Counter, deque
from typing import Any

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
    """Jobs per (queue, status) and per running mode, completions, submit→start latency."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.by_queue_status: Counter[tuple[str, str]] = Counter()
        self.running_by_mode: Counter[str] = Counter()
        self._completions: deque[float] = deque()
        self._latencies: deque[float] = deque(maxlen=1000)
        self.loop_lag = LoopLag()

    def moved(self, queue: str, mode: str, old: str | None, new: str, old_queue: str | None = None) -> None:
        """A job's status change (and maybe queue change) has committed."""
        if old is not None:
            self.by_queue_status[(old_queue or queue, old)] -= 1
            if old == "running":
                self.running_by_mode[mode] -= 1
        self.by_queue_status[(queue, new)] += 1
        if new == "running":
            self.running_by_mode[mode] += 1

    def completed(self, now: float) -> None:
        self._completions.append(now)
        self._trim(now)

    def started_after(self, seconds: float) -> None:
        self._latencies.append(seconds)

    def _trim(self, now: float) -> None:
        c = self._completions
        while c and c[0] < now - 60.0:
            c.popleft()

    def count(self, queue: str, statuses: frozenset[str]) -> int:
        return sum(self.by_queue_status.get((queue, s), 0) for s in statuses)

    def queues(self) -> set[str]:
        return {q for (q, _), n in self.by_queue_status.items() if n}

    def snapshot(self, now: float, slots: dict[str, int]) -> dict[str, Any]:
        self._trim(now)
        by_status: Counter[str] = Counter()
        by_queue: dict[str, dict[str, int]] = {}
        for (queue, status), n in self.by_queue_status.items():
            if n:
                by_status[status] += n
                by_queue.setdefault(queue, {})[status] = n
        window = min(60.0, max(1e-9, now - self.started))
        return {
            "uptime": now - self.started,
            "by_status": dict(by_status),
            "by_queue": by_queue,
            "running_by_mode": {m: n for m, n in self.running_by_mode.items() if n},
            "slots": dict(slots),
            "completed_per_s": len(self._completions) / window,
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

