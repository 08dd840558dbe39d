"""The built-in tasks of the contract: ``echo``, ``sleep`` and ``shell``."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field

from pyrexisd.tasks.context import TaskContext
from pyrexisd.tasks.registry import Registry, make_task

PROGRESS_EVERY = 0.25  # the contract asks for at least one progress report every 0.5 s


def echo(value: Any) -> Any:
    """Return ``value`` unchanged: the no-op of benchmarks."""
    return value


async def sleep(seconds: Annotated[float, Field(ge=0)], ctx: TaskContext) -> None:
    """Sleep for ``seconds``, reporting the fraction of the time elapsed."""
    start = time.monotonic()
    end = start + seconds
    while True:
        now = time.monotonic()
        if now >= end:
            break
        ctx.progress(fraction=(now - start) / seconds if seconds else 1.0)
        await asyncio.sleep(min(PROGRESS_EVERY, end - now))
    ctx.progress(fraction=1.0)


@dataclass(frozen=True, slots=True)
class ShellCommand:
    """What a task in ``shell`` mode returns: the command the shell executor runs."""

    argv: list[str]
    cwd: str | None = None
    env: dict[str, str] | None = None


def shell(
    cmd: Annotated[str, Field(min_length=1)] | Annotated[list[str], Field(min_length=1)],
    cwd: str | None = None,
    env: dict[str, str] | None = None,
) -> ShellCommand:
    """Run a command: a string through ``/bin/sh -c``, a list executed directly."""
    argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
    return ShellCommand(argv, cwd, env)


def register_builtins(registry: Registry, enable_shell: bool = True) -> None:
    """Add the built-in tasks to ``registry`` (``shell`` only when enabled)."""
    registry.add(make_task(echo, modes=("thread", "process", "async", "dask"), mode="thread"))
    registry.add(make_task(sleep, mode="async"))
    if enable_shell:
        registry.add(make_task(shell, mode="shell", on_interrupt="fail"))
