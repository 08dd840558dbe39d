"""Retry policy: exponential backoff with jitter and a cap, as pure functions."""

from __future__ import annotations

import random
from dataclasses import dataclass

DEFAULT_BASE = 1.0
DEFAULT_CAP = 300.0
DEFAULT_JITTER = 0.2


@dataclass(frozen=True, slots=True)
class Backoff:
    """Retry ``n`` (1 for the first retry) waits ``min(cap, base * 2**(n-1))`` ± jitter."""

    base: float = DEFAULT_BASE
    cap: float = DEFAULT_CAP
    jitter: float = DEFAULT_JITTER

    def delay(self, retry: int, rand: random.Random | None = None) -> float:
        if retry < 1:
            raise ValueError("retries are numbered from 1")
        # Beyond 2**1023 a float overflows; any base times that is past any sane cap.
        exponent = retry - 1
        nominal = self.cap if exponent > 1023 else min(self.cap, self.base * 2.0**exponent)
        if not self.jitter:
            return nominal
        r = (rand or random).uniform(-self.jitter, self.jitter)
        return max(0.0, nominal * (1.0 + r))


def retries_left(attempts: int, round_base: int, max_retries: int) -> int:
    """Retries still allowed after ``attempts`` starts; a round began at ``round_base``.

    A round (the first submit, or each ``retry`` op) allows ``max_retries + 1`` starts.
    """
    used = attempts - round_base
    return max(0, max_retries + 1 - used)
