"""pyrexisd: the PYREXIS job daemon, and the API for writing its tasks.

A task module needs only this::

    from pyrexisd import task, TaskContext, Retry, Fatal

    @task(name="resize", mode="process", max_retries=3)
    def resize(path: str, width: int, ctx: TaskContext) -> str:
        ctx.progress(0.5, "resizing")
        ...
"""

from pyrexisd.tasks.context import Fatal, Retry, TaskContext
from pyrexisd.tasks.registry import task

__version__ = "0.1.0"

__all__ = ["Fatal", "Retry", "TaskContext", "__version__", "task"]
