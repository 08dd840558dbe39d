"""Thread mode: a function on a pool of daemon threads.

Threads cannot be killed: cancel and timeout set the context's ``cancelled`` flag and
the slot stays taken until the function returns. Hard timeouts need process mode.

The pool's threads are daemon threads: the standard ``ThreadPoolExecutor`` joins its
threads when the interpreter exits, so one task that never returns would keep a stopped
daemon from exiting at all. Work is handed over on a queue and answered with one
``call_soon_threadsafe`` rather than through ``run_in_executor``, whose chained
``concurrent.futures.Future`` costs a condition variable and two extra hops per job.

The job threads share the GIL with the event loop and the store's writer. A thread that
computes in Python holds it until another has waited the interpreter's switch interval
(5 ms by default), and a submit needs the GIL several times on the loop and the writer:
with one CPU-bound thread job running, submits took ~50 ms. So while a thread job has
run longer than :data:`LONG_JOB` the interval is :data:`BUSY_SWITCH_INTERVAL` (submits
~10 ms then); jobs that end sooner (most) leave it alone, since shorter turns cost them
and the loop CPU in switches.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import sys
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


_Work = tuple[
    "asyncio.Future[Any]", Callable[..., Any], dict[str, Any], JobCall, asyncio.AbstractEventLoop
]


class DaemonThreadPool:
    """A fixed pool of daemon threads fed by one queue.

    A job is handed over as (future, function, kwargs, call, loop) and its thread answers
    with one ``call_soon_threadsafe``: no ``concurrent.futures.Future`` to chain, no
    condition variable per job. The threads are daemon threads, so a function that never
    returns cannot keep a stopped daemon from exiting.
    """

    def __init__(self, max_workers: int, name: str) -> None:
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}-{i}", daemon=True) for i in range(max_workers)
        ]
        for t in self._threads:
            t.start()
        self._shutdown = False

    def submit(self, work: _Work) -> None:
        if self._shutdown:
            raise RuntimeError("the thread pool is shut down")
        self._work.put(work)

    def _serve(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            fut, func, kwargs, call, loop = item
            try:
                result = _invoke(func, kwargs, call, loop)
            except (SystemExit, KeyboardInterrupt) as exc:
                # Must not be raised in the event loop, where it would stop the daemon.
                loop.call_soon_threadsafe(_deliver, fut, None, TaskExit(exc))
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                loop.call_soon_threadsafe(_deliver, fut, None, exc)
            else:
                loop.call_soon_threadsafe(_deliver, fut, result, None)
            del item, fut, func, kwargs, call  # do not hold the last job's objects while idle

    def shutdown(self) -> None:
        self._shutdown = True
        for _ in self._threads:
            self._work.put(None)


def _deliver(fut: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if fut.done():  # the coroutine awaiting it was cancelled (daemon stopping)
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


LONG_JOB = 0.005  # a thread job running longer than this may hold the GIL in long stretches
BUSY_SWITCH_INTERVAL = 0.001  # the GIL's switch interval meanwhile


class ThreadExecutor(Executor):
    mode = "thread"

    def __init__(self, slots: int) -> None:
        super().__init__(slots)
        self._pool = DaemonThreadPool(slots, "pyrexis-job")
        self._long_jobs = 0  # running longer than LONG_JOB now
        self._usual_switch = sys.getswitchinterval()

    def _went_long(self, marked: list[bool]) -> None:
        marked[0] = True
        self._long_jobs += 1
        if self._long_jobs == 1:
            sys.setswitchinterval(BUSY_SWITCH_INTERVAL)

    def _ended_long(self) -> None:
        self._long_jobs -= 1
        if self._long_jobs == 0:
            sys.setswitchinterval(self._usual_switch)

    async def run(self, call: JobCall) -> Outcome:
        loop = asyncio.get_running_loop()
        try:
            kwargs = call.function_kwargs()
            if call.task.ctx_param:
                # The thread has no context variables of ours: pass the context.
                kwargs[call.task.ctx_param] = context_for(call, loop)
            fut: asyncio.Future[Any] = loop.create_future()
            self._pool.submit((fut, call.task.func, kwargs, call, loop))
            long = [False]
            timer = loop.call_later(LONG_JOB, self._went_long, long)
            try:
                result = await fut
            finally:
                timer.cancel()
                if long[0]:
                    self._ended_long()
        except Exception as exc:
            return CANCELLED if call.cancelled else Outcome.from_exception(exc)
        return CANCELLED if call.cancelled else Outcome.success(result)

    async def shutdown(self) -> None:
        # Threads still running cannot be stopped; do not wait for them.
        self._pool.shutdown()
