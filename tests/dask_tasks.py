"""Tasks for test_dask.py: they run on the Dask workers of a LocalCluster (and some in
process mode too, for dependencies across modes)."""

from __future__ import annotations

import os
import time
from typing import Any

from pyrexisd import task
from pyrexisd.tasks.context import TaskContext


def _count(path: str) -> int:
    """Append one line to ``path``; how many it holds now (attempts seen by the task)."""
    with open(path, "a") as fh:
        fh.write("x\n")
    with open(path) as fh:
        return len(fh.read().splitlines())


@task(name="dk.chatty", mode="dask")
def chatty(lines: int, ctx: TaskContext) -> int:
    """Report progress and log ``lines`` numbered lines, in order."""
    for i in range(lines):
        ctx.progress(fraction=(i + 1) / lines, message=f"step {i + 1}")
        ctx.log(f"line {i + 1}")
    return lines


@task(name="dk.flaky", mode="dask")
def flaky(marker: str, fails: int) -> str:
    """Fail the first ``fails`` attempts, then succeed saying how many it saw."""
    seen = _count(marker)
    if seen <= fails:
        raise RuntimeError(f"failing attempt {seen} on purpose")
    return f"ok after {seen}"


@task(name="dk.until_cancelled", mode="dask")
def until_cancelled(marker: str, ctx: TaskContext) -> str:
    """Write ``marker``.began, run until the context says cancelled (at most 60 s), then
    write ``marker``."""
    with open(marker + ".began", "w") as fh:
        fh.write("began")
    deadline = time.monotonic() + 60
    while not ctx.cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    with open(marker, "w") as fh:
        fh.write("stopped" if ctx.cancelled else "expired")
    return "finished"


@task(name="dk.die_first", mode="dask")
def die_first(marker: str) -> str:
    """Attempt 1 writes its worker's pid to ``marker`` and sleeps (to be killed); later
    attempts return at once."""
    if os.path.exists(marker):
        return "survived"
    with open(marker, "w") as fh:
        fh.write(str(os.getpid()))
    time.sleep(120)
    return "slept"


@task(name="dk.sum_inputs", modes=["dask", "process", "thread"], mode="dask")
def sum_inputs(base: int, inputs: dict[str, Any]) -> int:
    """``base`` plus the results of the job's dependencies."""
    return base + sum(v for v in inputs.values() if isinstance(v, int))


@task(name="dk.big", mode="dask")
def big(size: int) -> str:
    """A result of ``size`` bytes."""
    return "z" * size


@task(name="dk.pid", mode="dask")
def pid() -> int:
    """The worker process's pid."""
    return os.getpid()


@task(name="dk.sleep", mode="dask")
def sleep(seconds: float, marker: str) -> float:
    """Write ``marker``, then sleep, ignoring cancel."""
    with open(marker, "w") as fh:
        fh.write("began")
    time.sleep(seconds)
    return seconds
