"""Retry policy: ``pyrexisd/retry.py`` (Backoff.delay and retries_left).

Contract: "a job that always fails makes max_retries + 1 attempts; retry n waits
min(300, 2^(n-1)) s with ±20 % jitter"; the ``retry`` op starts a new round with its
``max_retries`` renewed while ``attempts`` keeps counting.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyrexisd.retry import DEFAULT_BASE, DEFAULT_CAP, DEFAULT_JITTER, Backoff, retries_left

FAST = settings(max_examples=200, deadline=None)
HUGE_N = st.one_of(st.integers(1, 80), st.integers(1, 10**30))
BASES = st.floats(1e-6, 1e4)
CAPS = st.floats(1e-3, 1e7)


def nominal(base: float, cap: float, n: int) -> float:
    """min(cap, base * 2^(n-1)) computed exactly, with no overflow for any n."""
    # 2^(n-1) >= 2^2000 already dwarfs every float: compare exactly below that
    power = Fraction(2) ** min(n - 1, 2000)
    return float(min(Fraction(cap), Fraction(base) * power))


def test_defaults_are_the_contracts() -> None:
    """Given no settings, then retry n waits min(300, 2^(n-1)) s ± 20 %."""
    assert (DEFAULT_BASE, DEFAULT_CAP, DEFAULT_JITTER) == (1.0, 300.0, 0.2)
    b = Backoff(jitter=0)
    assert [b.delay(n) for n in range(1, 12)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]


@FAST
@given(n=HUGE_N, base=BASES, cap=CAPS)
def test_without_jitter_the_delay_is_exactly_min_cap_base_times_two_to_n_minus_1(
    n: int, base: float, cap: float
) -> None:
    """Given no jitter, when retry n (up to 10^30) is delayed, then the delay is exactly
    min(cap, base * 2^(n-1)): no overflow, no rounding."""
    got = Backoff(base=base, cap=cap, jitter=0).delay(n)
    assert got == nominal(base, cap, n)
    assert math.isfinite(got) and got >= 0


@FAST
@given(
    n=HUGE_N,
    base=BASES,
    cap=CAPS,
    jitter=st.floats(0.001, 0.99),
    seed=st.integers(0, 2**64),
)
def test_with_jitter_the_delay_stays_within_plus_minus_jitter(
    n: int, base: float, cap: float, jitter: float, seed: int
) -> None:
    """Given jitter j, when retry n is delayed, then the delay lies within nominal * (1 ± j),
    is finite and non-negative, and the same random source gives the same delay."""
    b = Backoff(base=base, cap=cap, jitter=jitter)
    want = nominal(base, cap, n)
    got = b.delay(n, random.Random(seed))
    assert math.isfinite(got) and got >= 0
    tol = 1e-9 * want
    assert want * (1 - jitter) - tol <= got <= want * (1 + jitter) + tol
    assert b.delay(n, random.Random(seed)) == got


@FAST
@given(n=HUGE_N, jitter=st.floats(1.0, 5.0), seed=st.integers(0, 2**32))
def test_a_jitter_of_100_percent_or_more_never_gives_a_negative_delay(
    n: int, jitter: float, seed: int
) -> None:
    """Given jitter >= 1 (so nominal * (1 - j) <= 0), then the delay is still >= 0."""
    got = Backoff(jitter=jitter).delay(n, random.Random(seed))
    assert 0 <= got <= nominal(1.0, 300.0, n) * (1 + jitter)


def test_jitter_spreads_both_ways() -> None:
    """Given the default ±20 %, when the first retry is delayed with 2,000 random draws,
    then delays fall both below and above 1 s, spread over most of [0.8, 1.2]."""
    rng = random.Random(1234)
    delays = [Backoff().delay(1, rng) for _ in range(2000)]
    assert min(delays) >= 0.8 and max(delays) <= 1.2
    assert min(delays) < 0.82 and max(delays) > 1.18
    assert sum(d < 1 for d in delays) > 800 and sum(d > 1 for d in delays) > 800


def test_the_module_random_source_is_used_when_none_is_given() -> None:
    """Given no random source, then the delay is still within ±jitter."""
    for n in (1, 5, 100, 10**12):
        d = Backoff().delay(n)
        want = nominal(1.0, 300.0, n)
        assert want * 0.8 <= d <= want * 1.2


@pytest.mark.parametrize("n", [0, -1, -(10**20)])
def test_retries_are_numbered_from_one(n: int) -> None:
    """Given a retry number below 1, then delay refuses it."""
    with pytest.raises(ValueError):
        Backoff().delay(n)


def test_the_cap_is_reached_even_with_a_tiny_base() -> None:
    """Given base 1e-30 s and cap 1 s (a daemon-configured backoff), when retry 200 is
    delayed, then it waits the cap: 1e-30 * 2^199 is far above 1 s.

    The exponent is clamped at 64 before the power, which is only right while
    base * 2^64 >= cap."""
    assert Backoff(base=1e-30, cap=1.0, jitter=0).delay(200) == 1.0


# --- retries_left --------------------------------------------------------------------


def run_round(attempts: int, round_base: int, max_retries: int, backoff: Backoff) -> tuple[int, list[float]]:
    """Drive a job that always fails the way the engine does: start, fail, then retry
    while ``retries_left`` > 0, with retry number ``attempts - round_base``.
    Returns the attempts counter at the end and the delays asked for."""
    delays: list[float] = []
    while True:
        attempts += 1  # a start
        if retries_left(attempts, round_base, max_retries) > 0:
            delays.append(backoff.delay(attempts - round_base))
        else:
            return attempts, delays


@settings(max_examples=200, deadline=None)
@given(max_retries=st.integers(0, 200), rounds=st.integers(1, 5))
def test_an_always_failing_job_makes_max_retries_plus_one_attempts_per_round(
    max_retries: int, rounds: int
) -> None:
    """Given a job that always fails, when it runs until it fails for good, and the retry op
    starts new rounds at round_base = attempts, then every round makes exactly
    max_retries + 1 attempts, asks for retries numbered 1..max_retries, and attempts keep
    counting across rounds."""
    b = Backoff(jitter=0)
    attempts = 0
    for _round in range(rounds):
        round_base = attempts  # the retry op: a new round
        attempts, delays = run_round(attempts, round_base, max_retries, b)
        assert attempts - round_base == max_retries + 1
        assert delays == [b.delay(n) for n in range(1, max_retries + 1)]
    assert attempts == rounds * (max_retries + 1)


@settings(max_examples=300, deadline=None)
@given(
    max_retries=st.integers(0, 10**6),
    round_base=st.integers(0, 10**6),
    used=st.integers(0, 2 * 10**6),
)
def test_retries_left_counts_down_within_a_round(max_retries: int, round_base: int, used: int) -> None:
    """Given a round that began at ``round_base`` and ``used`` starts in it, then after the
    k-th start (k >= 1) there are max_retries + 1 - k retries left, never below 0; a new
    round at the current attempts renews them."""
    attempts = round_base + used
    left = retries_left(attempts, round_base, max_retries)
    assert left == max(0, max_retries + 1 - used)
    assert left >= 0
    if used >= 1:
        assert (left > 0) is (used <= max_retries)  # the failed start may be retried
    # a retry op renews the round: one start later, all max_retries are left
    assert retries_left(attempts + 1, attempts, max_retries) == max_retries


def test_zero_retries_means_one_attempt() -> None:
    """Given max_retries 0, when the first attempt fails, then no retry is left."""
    assert retries_left(1, 0, 0) == 0
    assert retries_left(8, 7, 0) == 0


def test_a_lost_attempt_still_counts() -> None:
    """Given max_retries 2 and an attempt lost to a daemon death (counted, back to
    pending), when the next two attempts fail, then after the third start none are left."""
    assert retries_left(1, 0, 2) == 2  # attempt 1 lost: counted
    assert retries_left(2, 0, 2) == 1
    assert retries_left(3, 0, 2) == 0
