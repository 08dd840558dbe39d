"""Thread mode: a function on a ``ThreadPoolExecutor`` through ``run_in_executor``.

Threads cannot be killed: cancel and timeout set the context's ``cancelled`` flag and
the slot stays taken until the function returns. Hard timeouts need process mode.

The pool's threads are daemon threads: the standard ``ThreadPoolExecutor`` joins its
threads when the interpreter exits, so one task that never returns would keep a stopped
daemon from exiting at all.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import queue
import threading
from collections.abc import Callable
from typing import Any

from pyrexisd.executors.base import (
    CANCELLED,
    Executor,
    JobCall,
    Outcome,
    TaskExit,
    generator_result,
)
from pyrexisd.tasks.context import CallbackSink, TaskContext


def context_for(call: JobCall, loop: asyncio.AbstractEventLoop | None) -> TaskContext:
    """A task context whose events reach the core on its loop (thread-safe if ``loop``)."""
    events = call.events
    if loop is None:
        sink = CallbackSink(events.progress, lambda line: events.log("log", line))
    else:
        sink = CallbackSink(
            lambda f, m: loop.call_soon_threadsafe(events.progress, f, m),
            lambda line: loop.call_soon_threadsafe(events.log, "log", line),
        )
    return TaskContext(call.job_id, call.attempt, sink, call.cancel_event, call.inputs)


def _invoke(
    func: Callable[..., Any], kwargs: dict[str, Any], call: JobCall, loop: asyncio.AbstractEventLoop
) -> Any:
    result = func(**kwargs)
    if not inspect.isgenerator(result):
        return result
    # A generator task: each item is an output event, sent to the loop as it comes.
    items: list[Any] = []
    while not call.cancelled:
        try:
            item = next(result)
        except StopIteration as stop:
            return generator_result(items, stop.value)
        items.append(item)
        loop.call_soon_threadsafe(call.events.output, item)
    result.close()
    return items


class DaemonThreadPool(concurrent.futures.Executor):
    """A fixed pool of daemon threads; ``run_in_executor`` accepts any Executor."""

    def __init__(self, max_workers: int, name: str) -> None:
        self._work: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}-{i}", daemon=True) for i in range(max_workers)
        ]
        for t in self._threads:
            t.start()
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        if self._shutdown:
            raise RuntimeError("the thread pool is shut down")
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._work.put((fut, functools.partial(fn, **kwargs) if kwargs else fn, args))
        return fut

    def _serve(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            fut, fn, args = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except (SystemExit, KeyboardInterrupt) as exc:
                fut.set_exception(TaskExit(exc))  # must not be raised in the event loop
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                fut.set_exception(exc)
            else:
                fut.set_result(result)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._shutdown = True
        for _ in self._threads:
            self._work.put(None)
        if wait:
            for t in self._threads:
                t.join()


class ThreadExecutor(Executor):
    mode = "thread"

    def __init__(self, slots: int) -> None:
        super().__init__(slots)
        self._pool = DaemonThreadPool(slots, "pyrexis-job")

    async def run(self, call: JobCall) -> Outcome:
        loop = asyncio.get_running_loop()
        try:
            kwargs = call.task.kwargs(call.args, call.inputs)
            if call.task.ctx_param:
                # run_in_executor does not carry context variables: pass the context.
                kwargs[call.task.ctx_param] = context_for(call, loop)
            result = await loop.run_in_executor(self._pool, _invoke, call.task.func, kwargs, call, loop)
        except Exception as exc:
            return CANCELLED if call.cancelled else Outcome.from_exception(exc)
        return CANCELLED if call.cancelled else Outcome.success(result)

    async def shutdown(self) -> None:
        # Threads still running cannot be stopped; do not wait for them.
        self._pool.shutdown(wait=False)
