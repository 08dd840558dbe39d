"""Tasks for the HTTP and dashboard tests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from pyrexisd import TaskContext, task


@task(name="t.steps", mode="async")
async def steps(ctx: TaskContext, steps: int = 10, delay: float = 0.2) -> str:
    """Report progress and log a line at each of ``steps`` steps, ``delay`` seconds apart."""
    for i in range(steps):
        await asyncio.sleep(delay)
        ctx.progress((i + 1) / steps, f"step {i + 1} of {steps}")
        ctx.log(f"step {i + 1}")
    return f"finished {steps} steps"


@task(name="t.parts", mode="thread")
def parts(n: int) -> Iterator[int]:
    """Yield ``n`` partial results."""
    yield from range(n)
