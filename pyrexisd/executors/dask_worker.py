"""Code that runs on the Dask workers of the dask mode.

A worker runs a registered task *by name*: the daemon sends :func:`run_task` (pickled by
reference, so ``pyrexis`` must be installed on the workers) with the task's name and
args, and the worker looks the name up in its own registry. The registry is filled by
:class:`PyrexisTasks`, a worker plugin the daemon registers when it connects: on every
worker, present and future, it imports the built-ins and the daemon's task modules, so
a module missing on a worker is reported when the daemon connects, not job by job.

Progress, log lines and outputs go back as Dask events on the daemon's own topic
(``Worker.log_event``): the worker sends them on its one ordered stream to the
scheduler, which forwards them to the daemon's client. Each event is
``[token, kind, payload]``; the result says how many were sent, so the daemon can wait
for the last of them before it settles the job. Results and errors come back as plain
tuples (an exception that cannot be pickled still reaches the daemon as text).
"""

from __future__ import annotations

import importlib
import inspect
import threading
import traceback
from collections.abc import Generator
from typing import Any

import msgpack
from distributed import get_worker
from distributed.diagnostics.plugin import WorkerPlugin

from pyrexisd import __version__
from pyrexisd.executors.base import generator_result
from pyrexisd.tasks.builtin import register_builtins
from pyrexisd.tasks.context import Fatal, Retry, TaskContext
from pyrexisd.tasks.registry import REGISTRY

EVENT_PIECE = 64 * 1024  # log text is sent in pieces of at most this many characters
MAX_OUTPUT = 4 * 1024 * 1024  # one output item; the daemon applies its own limits after


class PyrexisTasks(WorkerPlugin):
    """Loads PYREXIS's tasks on a worker: the built-ins, then the daemon's task modules.

    Registered by the daemon on connecting; Dask runs it on every worker that joins
    later too. A worker whose PYREXIS version differs from the daemon's, or that cannot
    import a task module, fails the registration with that reason.
    """

    def __init__(self, modules: tuple[str, ...], version: str) -> None:
        self.modules = modules
        self.version = version

    def setup(self, worker: Any) -> None:
        if self.version != __version__:
            raise RuntimeError(
                f"the worker has pyrexis {__version__}, the daemon {self.version}: install the same version"
            )
        register_builtins(REGISTRY, enable_shell=False)
        for module in self.modules:
            importlib.import_module(module)


class _EventSink:
    """Sends one attempt's events to the daemon, counting them."""

    __slots__ = ("worker", "topic", "token", "sent")

    def __init__(self, worker: Any, topic: str, token: int) -> None:
        self.worker = worker
        self.topic = topic
        self.token = token
        self.sent = 0

    def put(self, kind: str, payload: Any) -> None:
        # Thread-safe: from a task's thread the worker hands it to its event loop, in order.
        self.worker.log_event(self.topic, [self.token, kind, payload])
        self.sent += 1

    def progress(self, fraction: float | None, message: str | None) -> None:
        self.put("progress", [fraction, message])

    def log(self, line: str) -> None:
        # The daemon splits and cuts lines; here only keep each event small.
        for i in range(0, max(len(line), 1), EVENT_PIECE):
            self.put("log", line[i : i + EVENT_PIECE])

    def output(self, value: Any) -> None:
        size = len(msgpack.packb(value, use_bin_type=True))  # an item the store cannot keep fails here
        if size > MAX_OUTPUT:
            raise ValueError(f"an output of {size} bytes is too large to send")
        self.put("output", value)


class _Cancelled(threading.Event):
    """``ctx.cancelled`` on a Dask worker: true once the scheduler has let go of this
    attempt's key (the daemon cancelled the future, on cancel or timeout)."""

    def __init__(self, worker: Any, key: str) -> None:
        super().__init__()
        self._worker = worker
        self._key = key

    def is_set(self) -> bool:
        ts = self._worker.state.tasks.get(self._key)
        return ts is None or ts.state in ("cancelled", "released", "forgotten")


def _outputs(gen: Generator[Any, Any, Any], sink: _EventSink) -> Any:
    """A generator task's items sent as outputs as they come; its result."""
    items: list[Any] = []
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return generator_result(items, stop.value)
        sink.output(item)
        items.append(item)


def run_task(
    name: str,
    args: dict[str, Any],
    inputs: dict[str, Any],
    job_id: str,
    attempt: int,
    token: int,
    topic: str,
    key: str,
    max_result: int,
) -> tuple[Any, ...]:
    """Run one attempt on this worker.

    ``("ok", result, sent)`` or ``("err", error_type, message, retryable, delay, tb, sent)``,
    where ``sent`` counts the events this attempt sent.
    """
    worker = get_worker()
    sink = _EventSink(worker, topic, token)
    worker.log_event(topic, [token, "start", worker.address])  # not counted: for the daemon's link only
    definition = REGISTRY.get(name)
    if definition is None:
        message = f"task {name!r} is not loaded on the Dask worker {worker.address}: is its module installed there?"
        return ("err", "exception", message, False, None, None, 0)
    try:
        kwargs = definition.kwargs(args, inputs)
        if definition.ctx_param:
            kwargs[definition.ctx_param] = TaskContext(job_id, attempt, sink, _Cancelled(worker, key), inputs)
        result = definition.func(**kwargs)
        if inspect.isgenerator(result):
            result = _outputs(result, sink)
        try:
            size = len(msgpack.packb(result, use_bin_type=True))
        except (TypeError, ValueError, OverflowError) as exc:
            return ("err", "exception", f"the result cannot be stored: {exc}", False, None, None, sink.sent)
        if size > max_result:
            # Refused here, so that a result too large to keep never crosses the cluster.
            message = f"the result is {size} bytes, above max_result ({max_result})"
            return ("err", "result_too_large", message, False, None, None, sink.sent)
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the daemon as text
        tb = "".join(traceback.format_exception(exc))
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        retryable = not isinstance(exc, Fatal)
        delay = exc.delay if isinstance(exc, Retry) else None
        return ("err", "exception", message, retryable, delay, tb, sink.sent)
    return ("ok", result, sink.sent)
