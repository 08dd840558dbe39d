"""Code that runs inside a process-mode worker.

Each worker imports the same task modules as the daemon when it starts and opens one
channel (its own connection to the executor's Unix socket) for progress, log lines and
outputs, set up once per worker rather than passed with every call. Results and errors come back as plain tuples so an
exception that cannot be pickled still reaches the daemon as text.
"""

from __future__ import annotations

import importlib
import inspect
import os
import socket
import traceback
from typing import Any

import msgpack

from protocol.framing import encode_frame
from pyrexisd import procs
from pyrexisd.tasks.builtin import register_builtins
from pyrexisd.tasks.context import Fatal, Retry, TaskContext
from pyrexisd.tasks.registry import REGISTRY

_channel: Any = None
CHANNEL_PIECE = 64 * 1024  # log text is sent in pieces of at most this many characters


class _ChannelSink:
    """Sends a job's events to the daemon, counting them so it can wait for the last one."""

    __slots__ = ("token", "sent")

    def __init__(self, token: int) -> None:
        self.token = token
        self.sent = 0

    def _put(self, kind: str, payload: Any) -> None:
        _send(self.token, kind, payload)
        self.sent += 1

    def progress(self, fraction: float | None, message: str | None) -> None:
        self._put("progress", (fraction, message))

    def log(self, line: str) -> None:
        # The daemon splits and cuts lines; here only keep each frame small.
        for i in range(0, max(len(line), 1), CHANNEL_PIECE):
            self._put("log", line[i : i + CHANNEL_PIECE])

    def output(self, value: Any) -> None:
        size = len(msgpack.packb(value, use_bin_type=True))  # an item the store cannot keep fails here
        if size > CHANNEL_PIECE * 64:
            raise ValueError(f"an output of {size} bytes is too large to send")
        self._put("output", value)


def _send(token: int, kind: str, payload: Any) -> None:
    # Blocking: when the daemon reads slowly, the task waits (backpressure).
    _channel.sendall(encode_frame({"t": token, "k": kind, "p": payload}))


def init_worker(task_modules: tuple[str, ...], channel_path: str) -> None:
    """Pool initializer: die with the pool's parent, connect the channel, announce
    itself, load the tasks."""
    global _channel
    # Lead a process group: whatever a task spawns can be killed with its worker.
    os.setpgrp()
    procs.die_with_parent()
    _channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    _channel.connect(channel_path)
    pid = os.getpid()
    # Token 0: not a job's event. The daemon records live workers so that one that
    # outlives a crashed daemon is killed when it restarts.
    _send(0, "worker", (pid, procs.start_time(pid)))
    register_builtins(REGISTRY, enable_shell=False)
    for module in task_modules:
        importlib.import_module(module)


def run_task(
    name: str, args: dict[str, Any], job_id: str, attempt: int, token: int, inputs: dict[str, Any]
) -> tuple[Any, ...]:
    """Run one attempt.

    ``("ok", result, sent)`` or ``("err", message, retryable, delay, tb, sent)``, where
    ``sent`` counts the events sent over the channel, which the daemon waits for before
    it settles the job (the channel and the result travel separately).
    """
    sink = _ChannelSink(token)
    definition = REGISTRY.get(name)
    if definition is None:
        return ("err", f"task {name!r} is not loaded in the process worker", False, None, None, 0)
    try:
        kwargs = definition.kwargs(args, inputs)
        if definition.ctx_param:
            kwargs[definition.ctx_param] = TaskContext(job_id, attempt, sink, inputs=inputs)
        result = definition.func(**kwargs)
        if inspect.isgenerator(result):
            items = []
            try:
                while True:
                    item = next(result)
                    sink.output(item)
                    items.append(item)
            except StopIteration as stop:
                result = items if stop.value is None else stop.value
        try:
            msgpack.packb(result, use_bin_type=True)  # refuse here what the store could not keep
        except (TypeError, ValueError, OverflowError) as exc:
            return ("err", f"the result cannot be stored: {exc}", False, None, None, sink.sent)
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the daemon as text
        tb = "".join(traceback.format_exception(exc))
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if isinstance(exc, Fatal):
            return ("err", message, False, None, tb, sink.sent)
        return ("err", message, True, exc.delay if isinstance(exc, Retry) else None, tb, sink.sent)
    return ("ok", result, sink.sent)
