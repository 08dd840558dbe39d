"""Task module the tests load with ``--tasks sample_tasks``."""

from __future__ import annotations

import asyncio
import os
import time

from pyrexisd import Fatal, Retry, TaskContext, task


@task(name="t.pid", modes=["process", "thread"], mode="process")
def pid(hold: float = 0.0, marker: str = "") -> int:
    """Return the worker's pid; write it to ``marker`` first, then hold for a while."""
    if marker:
        with open(marker, "w") as fh:
            fh.write(str(os.getpid()))
    time.sleep(hold)
    return os.getpid()


@task(name="t.spin", mode="thread", modes=["thread", "process"])
def spin(seconds: float, ctx: TaskContext) -> str:
    """Busy-wait until cancelled or ``seconds`` pass; checks the cancel flag."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if ctx.cancelled:
            return "stopped"
        time.sleep(0.01)
    return "done"


@task(name="t.fail", modes=["thread", "process"])
def fail(message: str = "boom") -> None:
    raise ValueError(message)


@task(name="t.fatal")
def fatal() -> None:
    raise Fatal("do not retry me")


@task(name="t.retry_after")
def retry_after(delay: float = 0.1) -> None:
    raise Retry("try later", delay=delay)


@task(name="t.flaky")
def flaky(path: str, failures: int) -> int:
    """Fail ``failures`` times (counted in a file), then succeed."""
    try:
        with open(path) as fh:
            n = int(fh.read() or 0)
    except FileNotFoundError:
        n = 0
    with open(path, "w") as fh:
        fh.write(str(n + 1))
    if n < failures:
        raise RuntimeError(f"failure {n + 1}")
    return n + 1


@task(name="t.nap")
async def nap(seconds: float, ctx: TaskContext) -> str:
    ctx.log(f"napping {seconds}")
    await asyncio.sleep(seconds)
    return "rested"


@task(name="t.big", modes=["thread", "process"])
def big(size: int) -> str:
    return "x" * size


@task(name="t.unencodable")
def unencodable() -> object:
    return object()


@task(name="t.progress")
def progress(steps: int, ctx: TaskContext) -> int:
    for i in range(steps):
        ctx.progress((i + 1) / steps, f"step {i + 1}")
        ctx.log(f"line {i + 1}")
    return steps
