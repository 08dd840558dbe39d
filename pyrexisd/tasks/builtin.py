"""The built-in tasks of the contract: ``echo``, ``sleep`` and ``shell``; and ``pipeline``,
whose jobs stream items through stages (its args are a pipeline spec)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field

from protocol.pipeline import PIPELINE_MODE, PIPELINE_TASK, PipelineSpec
from pyrexisd.tasks.context import TaskContext
from pyrexisd.tasks.registry import Registry, TaskDef, make_task

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


def pipeline(**spec: Any) -> None:
    """Stream items through stages (args: a pipeline spec; see docs/pipelines.md)."""
    raise RuntimeError("a pipeline is run by the daemon's core, never called")


def pipeline_task() -> TaskDef:
    """The ``pipeline`` task: its args model is the pipeline spec, its mode ``pipeline``
    (a slot of its own: the stages' calls run on the executors of their modes). A
    pipeline interrupted by a stop or a crash resumes from its last checkpoint."""
    return TaskDef(
        name=PIPELINE_TASK,
        func=pipeline,
        modes=(PIPELINE_MODE,),
        default_mode=PIPELINE_MODE,
        max_retries=None,
        timeout=None,
        on_interrupt="retry",
        description="Stream items through stages (args: a pipeline spec; see docs/pipelines.md)",
        args_model=PipelineSpec,
        ctx_param=None,
        inputs_param=None,
        is_async=False,
        module=__name__,
        schema=PipelineSpec.model_json_schema(),
    )


def register_builtins(registry: Registry, enable_shell: bool = True, pipelines: bool = False) -> None:
    """Add the built-in tasks to ``registry`` (``shell`` only when enabled; ``pipeline``
    in the daemon, not in process workers)."""
    registry.add(make_task(echo, modes=("thread", "process", "async", "dask"), mode="thread"))
    registry.add(make_task(sleep, mode="async"))
    if enable_shell:
        registry.add(make_task(shell, mode="shell", on_interrupt="fail"))
    if pipelines:
        registry.add(pipeline_task())
