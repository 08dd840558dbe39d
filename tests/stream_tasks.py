"""Task module for the streaming and scheduling end-to-end tests.

Load it next to the other one: ``--tasks sample_tasks --tasks stream_tasks``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pyrexisd import TaskContext, task


@task(name="st.gen", modes=["thread", "process"])
def gen(n: int = 5, pause: float = 0.02):  # type: ignore[no-untyped-def]
    """Yield 0..n-1 with a short pause before each item."""
    for i in range(n):
        time.sleep(pause)
        yield i


@task(name="st.agen")
async def agen(n: int = 5, pause: float = 0.02):  # type: ignore[no-untyped-def]
    """The async twin of ``st.gen``."""
    for i in range(n):
        await asyncio.sleep(pause)
        yield i


@task(name="st.gen_return", modes=["thread", "process"])
def gen_return(n: int = 3):  # type: ignore[no-untyped-def]
    """Yield 0..n-1, then return a value: the value is the job's result."""
    yield from range(n)
    return {"total": n}


@task(name="st.chatter", modes=["thread", "process"])
def chatter(lines: int, ctx: TaskContext) -> int:
    """Log ``lines`` numbered lines through ``ctx.log``, as fast as possible."""
    for i in range(lines):
        ctx.log(f"line {i + 1}")
    return lines


@task(name="st.double", modes=["process", "thread"], mode="process")
def double(source: str, inputs: dict[str, Any]) -> int:
    """Twice the ``n`` that shell job ``source`` wrote to its ``$PYREXIS_OUTPUT``."""
    return int(inputs[source]["output"]["n"]) * 2


@task(name="st.plus_one")
async def plus_one(source: str, ctx: TaskContext) -> dict[str, Any]:
    """Read a dependency's result through ``ctx.inputs`` (async mode)."""
    await asyncio.sleep(0)
    return {"from": source, "value": ctx.inputs[source] + 1, "inputs": sorted(ctx.inputs)}
