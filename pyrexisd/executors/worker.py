"""Code that runs inside a process-mode worker.

Each worker imports the same task modules as the daemon when it starts and gets one
channel (a multiprocessing queue) for progress and log lines, set up once per worker
rather than passed with every call. Results and errors come back as plain tuples so an
exception that cannot be pickled still reaches the daemon as text.
"""

from __future__ import annotations

import importlib
import traceback
from typing import Any

import msgpack

from pyrexisd.tasks.builtin import register_builtins
from pyrexisd.tasks.context import Fatal, Retry, TaskContext
from pyrexisd.tasks.registry import REGISTRY

_channel: Any = None


class _ChannelSink:
    __slots__ = ("token",)

    def __init__(self, token: int) -> None:
        self.token = token

    def progress(self, fraction: float | None, message: str | None) -> None:
        _channel.put((self.token, "progress", (fraction, message)))

    def log(self, line: str) -> None:
        _channel.put((self.token, "log", line))


def init_worker(task_modules: tuple[str, ...], channel: Any) -> None:
    """Pool initializer: load the tasks, keep the channel."""
    global _channel
    _channel = channel
    register_builtins(REGISTRY, enable_shell=False)
    for module in task_modules:
        importlib.import_module(module)


def run_task(name: str, args: dict[str, Any], job_id: str, attempt: int, token: int) -> tuple[Any, ...]:
    """Run one attempt; ``("ok", result)`` or ``("err", message, retryable, delay, tb)``."""
    definition = REGISTRY.get(name)
    if definition is None:
        return ("err", f"task {name!r} is not loaded in the process worker", False, None, None)
    try:
        kwargs = definition.kwargs(args)
        if definition.ctx_param:
            kwargs[definition.ctx_param] = TaskContext(job_id, attempt, _ChannelSink(token))
        result = definition.func(**kwargs)
        msgpack.packb(result, use_bin_type=True)  # refuse here what the store could not keep
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the daemon as text
        tb = "".join(traceback.format_exception(exc))
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if isinstance(exc, Fatal):
            return ("err", message, False, None, tb)
        return ("err", message, True, exc.delay if isinstance(exc, Retry) else None, tb)
    return ("ok", result)
