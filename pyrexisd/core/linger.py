"""When a slot's end may wait a moment for another slot's end, so that both commit together.

The end of a job and the next start in its slot commit in one batch. When a mode's jobs
run in less than a commit's time, two slots whose ends fall into different batches stay
out of step for good: every commit carries one end and one start, one commit per job
instead of one per round of slots. Letting an end wait (at most :data:`LINGER`) while
another job of its mode is running, or about to run (its start on its way to the disk),
brings the slots back into one batch. Jobs that run longer never wait: their ends are
rarely close together, and the wait would only add latency.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

LINGER = 0.001  # at most this long, and only for modes whose jobs typically run shorter


class Linger:
    """The figures the decision needs, per mode: attempts in their executor now, starts
    being committed, and a moving average of how long an attempt's work takes."""

    def __init__(self, limit: float = LINGER) -> None:
        self.limit = limit
        self._working: Counter[str] = Counter()
        self._starting: Counter[str] = Counter()
        self._typical: dict[str, float] = {}

    def began(self, mode: str) -> None:
        """An attempt of ``mode`` is handed to its executor."""
        self._working[mode] += 1

    def returned(self, mode: str, seconds: float) -> None:
        """An attempt of ``mode`` came back from its executor after ``seconds``."""
        self._working[mode] -= 1
        typical = self._typical.get(mode)
        self._typical[mode] = seconds if typical is None else typical + 0.2 * (seconds - typical)

    @contextmanager
    def starting(self, modes: Sequence[str]) -> Iterator[None]:
        """Starts of these modes (one entry per start) are being committed for the time
        of the block."""
        for mode in modes:
            self._starting[mode] += 1
        try:
            yield
        finally:
            for mode in modes:
                self._starting[mode] -= 1

    def delay(self, mode: str, committing: bool) -> float | None:
        """How long an end of ``mode`` that starts another job may wait for company
        (``committing``: a batch is on its way to the disk now); None: commit at once."""
        typical = self._typical.get(mode)
        if typical is None or typical >= self.limit:
            return None
        if self._working[mode] > 0 or (self._starting[mode] > 0 and committing):
            return self.limit
        return None
