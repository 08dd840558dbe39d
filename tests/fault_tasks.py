"""Task module for the fault-injection tests (test_faults.py, test_storage_faults.py).

Loaded with ``--tasks sample_tasks --tasks mode_tasks --tasks fault_tasks``.
"""

from __future__ import annotations

import os
import sys
import time

from pyrexisd import TaskContext, task


@task(name="fault.stubborn", modes=["thread", "process"], mode="thread")
def stubborn(seconds: float, marker: str = "") -> str:
    """Sleep ``seconds`` without ever looking at the cancel flag; write ``marker`` at the end."""
    time.sleep(seconds)
    if marker:
        with open(marker, "w") as fh:
            fh.write(str(time.time()))
    return "late"


@task(name="fault.sysexit", modes=["thread", "process"], mode="thread")
def sysexit(code: int = 3) -> None:
    """``sys.exit`` from inside a task: a BaseException, not an Exception."""
    sys.exit(code)


@task(name="fault.kbint", modes=["thread", "process"], mode="thread")
def kbint() -> None:
    raise KeyboardInterrupt("from a task")


@task(name="fault.async_sysexit")
async def async_sysexit(code: int = 3) -> None:
    sys.exit(code)


@task(name="fault.async_raise")
async def async_raise(message: str = "async boom") -> None:
    raise RuntimeError(message)


@task(name="fault.async_unencodable")
async def async_unencodable() -> object:
    return {"fine": 1, "bad": object()}


class _Unpicklable(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.hook = lambda: None  # a lambda cannot be pickled


@task(name="fault.unpicklable_exc", modes=["process", "thread"], mode="process")
def unpicklable_exc() -> None:
    raise _Unpicklable("cannot travel by pickle")


@task(name="fault.gen_unencodable", modes=["thread", "process"], mode="thread")
def gen_unencodable():  # type: ignore[no-untyped-def]
    """A generator task whose second item cannot be stored."""
    yield 1
    yield object()
    yield 3


@task(name="fault.chatty", modes=["thread", "process"], mode="thread")
def chatty(lines: int, width: int, ctx: TaskContext, marker: str = "") -> int:
    """Log ``lines`` lines of ``width`` characters through the task context (after writing
    the process id to ``marker``)."""
    if marker:
        with open(marker, "w") as fh:
            fh.write(str(os.getpid()))
    text = "z" * width
    for _ in range(lines):
        ctx.log(text)
    return lines


@task(name="fault.exit_worker", modes=["process"], mode="process")
def exit_worker(code: int = 7) -> None:
    """Leave the worker process at once, without cleanup (like a crash in C code)."""
    os._exit(code)
