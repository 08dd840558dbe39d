"""Stage tasks for the pipeline tests (loaded with ``--tasks pipeline_tasks``)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from pyrexisd.tasks import task
from pyrexisd.tasks.context import Fatal


@task(modes=("thread", "process", "async"))
def double(x: int) -> int:
    """2 × x, in any mode."""
    return 2 * x


@task
async def add_async(x: int, n: int = 1) -> int:
    """x + n on the loop."""
    await asyncio.sleep(0)
    return x + n


@task(modes=("thread", "process"))
def fan_out(x: int) -> Iterator[int]:
    """x copies of x (none for 0): fan-out, and dropping."""
    for _ in range(x):
        yield x


@task
async def fan_out_async(x: int) -> AsyncIterator[str]:
    yield f"{x}a"
    yield f"{x}b"


@task(modes=("thread", "process", "async"))
def keep_even(x: int) -> int | None:
    return x if x % 2 == 0 else None


@task(modes=("thread", "async"))
def batch_sum(items: list[int]) -> list[int]:
    """Each item plus the size of its batch (shows how items were batched)."""
    return [i * 1000 + len(items) for i in items]


@task
async def pass_batch(items: list[Any]) -> list[Any]:
    """The batch unchanged: the cheapest batched stage."""
    return items


@task(modes=("thread", "process", "async"))
def fail_on(x: int, bad: list[int]) -> int:
    if x in bad:
        raise ValueError(f"bad item {x}")
    return x


@task
def fatal_on(x: int, bad: int) -> int:
    if x == bad:
        raise Fatal(f"fatal item {x}")
    return x


@task
def flaky(x: int, marks: str) -> int:
    """Fails on the first try of each item (a mark file remembers), succeeds after."""
    mark = os.path.join(marks, str(x))
    if not os.path.exists(mark):
        with open(mark, "w"):
            pass
        raise RuntimeError(f"first try of {x}")
    return x


@task(modes=("thread", "async"))
def slow(x: Any, seconds: float) -> Any:
    time.sleep(seconds)
    return x


@task
async def slow_async(x: Any, seconds: float) -> Any:
    await asyncio.sleep(seconds)
    return x


@task
def record(x: int, path: str, seconds: float = 0.0) -> int:
    """Append x to ``path`` (the side effect a resume must not repeat), then return it."""
    if seconds:
        time.sleep(seconds)
    with open(path, "a") as fh:
        fh.write(f"{x}\n")
    return x


@task
async def padded(x: int, size: int) -> dict[str, Any]:
    """x with ``size`` bytes of padding: outputs that fill a disk."""
    await asyncio.sleep(0.002)
    return {"x": x, "pad": "x" * size}


@task(cache=True, modes=("thread", "async"))
def square_noted(x: int, path: str) -> int:
    """x squared, noting each real call in ``path``: a call the result cache answers
    leaves no line."""
    with open(path, "a") as fh:
        fh.write(f"{x}\n")
    return x * x
