"""Per-stage figures: where a pipeline's time goes, without a profiler.

Counts (items in and out, errors, retries, busy time) add up across the attempts of a
pipeline (a resume starts from the last checkpoint's); the percentiles are over the last
:data:`SAMPLES` calls of the current attempt, per item (a batch's time is shared by its
items).
"""

from __future__ import annotations

from collections import deque
from typing import Any

SAMPLES = 1024


class StageFigures:
    __slots__ = ("items_in", "items_out", "errors", "retries", "busy", "calls", "cached", "_per_item")

    def __init__(self, previous: dict[str, Any] | None = None) -> None:
        prev = previous or {}
        self.items_in = int(prev.get("items_in", 0))
        self.items_out = int(prev.get("items_out", 0))
        self.errors = int(prev.get("errors", 0))
        self.retries = int(prev.get("retries", 0))
        self.busy = float(prev.get("busy", 0.0))
        self.calls = int(prev.get("calls", 0))
        self.cached = int(prev.get("cached", 0))  # items answered by the result cache
        self._per_item: deque[float] = deque(maxlen=SAMPLES)

    def timed(self, seconds: float, items: int) -> None:
        """One call of ``items`` items took ``seconds``."""
        self.busy += seconds
        self.calls += 1
        self._per_item.append(seconds / max(1, items))

    def percentiles(self) -> tuple[float | None, float | None]:
        if not self._per_item:
            return None, None
        ordered = sorted(self._per_item)
        last = len(ordered) - 1
        return ordered[round(last * 0.5)], ordered[round(last * 0.99)]

    def record(self, queue: int, in_flight: int) -> dict[str, Any]:
        p50, p99 = self.percentiles()
        return {
            "items_in": self.items_in,
            "items_out": self.items_out,
            "errors": self.errors,
            "retries": self.retries,
            "busy": round(self.busy, 6),
            "calls": self.calls,
            "cached": self.cached,
            "p50": None if p50 is None else round(p50, 6),
            "p99": None if p99 is None else round(p99, 6),
            "queue": queue,
            "in_flight": in_flight,
        }
