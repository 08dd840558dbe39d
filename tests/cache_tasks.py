"""Tasks of the result cache's tests (``--tasks cache_tasks``).

Each returns a token made when it runs, so a test tells a result the cache served (the
same token again) from a fresh run (a new one).
"""

from __future__ import annotations

import uuid
from typing import Any

from pyrexisd.tasks.registry import task


def _token() -> str:
    return uuid.uuid4().hex


@task(cache=True)
def square(n: int) -> dict[str, Any]:
    """n squared, and a token of this run."""
    return {"value": n * n, "token": _token()}


@task(cache=True)
def sometimes_fails(n: int, fail: bool) -> dict[str, Any]:
    """Fails when told to: a failed result must never be cached."""
    if fail:
        raise RuntimeError(f"asked to fail for {n}")
    return {"value": n, "token": _token()}


@task(cache_ttl=1.0)
def short_lived(n: int) -> dict[str, Any]:
    """Cached for one second."""
    return {"value": n, "token": _token()}


@task(cache=True)
def blob(n: int, size: int) -> str:
    """A result of about ``size`` bytes (a token, padded)."""
    token = _token()
    return token + "x" * max(0, size - len(token))


@task
def uncached(n: int) -> dict[str, Any]:
    """Not cached: runs every time."""
    return {"value": n, "token": _token()}
