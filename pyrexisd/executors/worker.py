"""Code that runs inside a process-mode worker.

A worker is a child of the forkserver holding one end of a Unix socketpair whose other
end the daemon reads in its event loop (:mod:`pyrexisd.executors.workerproc`). Everything
between the two travels on that one socket, in both directions, as frames: a 4-byte
big-endian length, then one msgpack array. Both sides are this code base, started
together, so the format needs no versioning.

- daemon → worker: ``[token, task, args, job_id, attempt, inputs]``: run one attempt.
  The daemon closing its end means "exit".
- worker → daemon: ``[kind, token, payload]``:
  ``"ready"`` (token 0) once the task modules are loaded, or ``"broken"`` (token 0, the
  error as text) when they cannot be, after which the worker exits;
  ``"progress"`` ``[fraction, message]``, ``"log"`` text, ``"output"`` an item: events of
  the running attempt; ``"ok"`` the result, or ``"err"`` ``[error_type, message,
  retryable, delay, traceback]``: its end. The end comes after the attempt's events on the
  same stream, so when the daemon reads it, it has read them all.

Every frame a worker sends is at most :func:`channel_max_frame` bytes (text is cut,
results and outputs are refused above their limits), and results and errors are plain
data: an exception that cannot be pickled or a result msgpack cannot encode reaches the
daemon as text, never as a broken frame.
"""

from __future__ import annotations

import importlib
import inspect
import os
import signal
import socket
import struct
import threading
import traceback
from typing import Any

import msgpack

from pyrexisd import procs
from pyrexisd.executors.base import too_large
from pyrexisd.tasks.builtin import register_builtins
from pyrexisd.tasks.context import Fatal, Retry, TaskContext
from pyrexisd.tasks.registry import REGISTRY

# Marks a PYTHONSAFEPATH that only the forkserver was meant to have (see workerproc): its
# workers drop both.
SAFE_PATH_MARK = "_PYREXIS_FORKSERVER_SAFEPATH"

HEADER = struct.Struct(">I")
CHANNEL_PIECE = 64 * 1024  # log text is sent in pieces of at most this many characters
MAX_OUTPUT = 64 * CHANNEL_PIECE  # bytes of one output item (a generator's yield)
MAX_TEXT = 64 * 1024  # characters of a progress or error message sent to the daemon
MAX_TRACEBACK = 256 * 1024  # characters of a traceback (its end is kept: the raise)
# Room around a payload in any frame: kind, token, the error's other fields. A log
# piece is at most 4 bytes a character once encoded.
_ENVELOPE = 4 * MAX_TEXT + 4 * MAX_TRACEBACK + 1024

_channel: socket.socket | None = None
_send_lock = threading.Lock()  # a task's own threads may log while it runs
_max_result = 0


def channel_max_frame(max_result: int) -> int:
    """The largest frame a worker sends when results may be ``max_result`` bytes."""
    return max(max_result, MAX_OUTPUT, 4 * CHANNEL_PIECE) + _ENVELOPE


def frame(message: list[Any]) -> bytes:
    """One frame holding ``message`` (an array)."""
    body: bytes = msgpack.packb(message, use_bin_type=True)
    return HEADER.pack(len(body)) + body


def _send(data: bytes) -> None:
    assert _channel is not None
    # Blocking: when the daemon reads slowly, the task waits (backpressure).
    with _send_lock:
        _channel.sendall(data)


class _ChannelSink:
    """Sends one attempt's events to the daemon, marked with the attempt's token."""

    __slots__ = ("token",)

    def __init__(self, token: int) -> None:
        self.token = token

    def progress(self, fraction: float | None, message: str | None) -> None:
        if message is not None:
            message = message[:MAX_TEXT]
        _send(frame(["progress", self.token, [fraction, message]]))

    def log(self, line: str) -> None:
        # The daemon splits and cuts lines; here only keep each frame small.
        for i in range(0, max(len(line), 1), CHANNEL_PIECE):
            _send(frame(["log", self.token, line[i : i + CHANNEL_PIECE]]))

    def output(self, value: Any) -> None:
        packed = msgpack.packb(value, use_bin_type=True)  # an item the store cannot keep fails here
        if len(packed) > MAX_OUTPUT:
            raise ValueError(f"an output of {len(packed)} bytes is too large to send")
        _send(_frame_with("output", self.token, packed))


def _frame_with(kind: str, token: int, packed: bytes) -> bytes:
    """``[kind, token, value]`` around a value packed already (not packed twice)."""
    body: bytes = b"\x93" + msgpack.packb(kind) + msgpack.packb(token) + packed
    return HEADER.pack(len(body)) + body


def _error(
    token: int, error_type: str, message: str, retryable: bool, delay: float | None = None, tb: str | None = None
) -> bytes:
    if tb is not None and len(tb) > MAX_TRACEBACK:
        tb = "[…]\n" + tb[-MAX_TRACEBACK:]
    data: bytes = frame(["err", token, [error_type, message[:MAX_TEXT], retryable, delay, tb]])
    return data


def serve(channel: socket.socket, task_modules: tuple[str, ...], max_result: int) -> None:
    """A worker's life: load the tasks, then run the calls that come until the daemon
    closes its end of ``channel``."""
    global _channel, _max_result
    if os.environ.pop(SAFE_PATH_MARK, None) is not None:
        # Set for the forkserver's own start only: what a task runs sees the daemon's environment.
        os.environ.pop("PYTHONSAFEPATH", None)
    # Lead a process group: whatever a task spawns can be killed with its worker.
    os.setpgrp()
    procs.die_with_parent()
    # A Ctrl-C meant for the daemon's terminal is the daemon's to handle; SIGTERM (cancel,
    # timeout) kills at once, even a task stuck in C code, unless the task handles it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    channel.setblocking(True)
    _channel = channel
    _max_result = max_result
    try:
        register_builtins(REGISTRY, enable_shell=False)
        for module in task_modules:
            importlib.import_module(module)
    except BaseException as exc:  # noqa: BLE001 - told to the daemon, then this worker ends
        _send(frame(["broken", 0, f"{type(exc).__name__}: {exc}"[:MAX_TEXT]]))
        raise SystemExit(1) from None
    _send(frame(["ready", 0, None]))
    reader = channel.makefile("rb")
    while True:
        header = reader.read(HEADER.size)
        if len(header) < HEADER.size:
            return  # the daemon closed its end: stop
        (length,) = HEADER.unpack(header)
        body = reader.read(length)
        if len(body) < length:
            return
        token, name, args, job_id, attempt, inputs = msgpack.unpackb(body, raw=False, strict_map_key=False)
        _send(run_task(name, args, job_id, attempt, token, inputs))


def run_task(name: str, args: dict[str, Any], job_id: str, attempt: int, token: int, inputs: dict[str, Any]) -> bytes:
    """Run one attempt; its end as a frame (``ok`` or ``err``)."""
    sink = _ChannelSink(token)
    definition = REGISTRY.get(name)
    if definition is None:
        return _error(token, "exception", f"task {name!r} is not loaded in the process worker", False)
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
            packed = msgpack.packb(result, use_bin_type=True)  # refuse here what the store could not keep
        except (TypeError, ValueError, OverflowError) as exc:
            return _error(token, "exception", f"the result cannot be stored: {exc}", False)
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the daemon as text
        tb = "".join(traceback.format_exception(exc))
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if isinstance(exc, Fatal):
            return _error(token, "exception", message, False, None, tb)
        return _error(token, "exception", message, True, exc.delay if isinstance(exc, Retry) else None, tb)
    if len(packed) > _max_result:
        problem = too_large("the result", len(packed), _max_result)
        return _error(token, problem.error_type, problem.message, problem.retryable)
    return _frame_with("ok", token, packed)
