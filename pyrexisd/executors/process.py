"""Process mode: functions in worker processes that can be killed one by one.

The standard ``ProcessPoolExecutor`` breaks every future in flight when one worker dies
and cannot stop a single job, so the pool is pebble's ``ProcessPool``: cancelling a
future terminates just the worker running it (SIGTERM, then SIGKILL after the kill grace
period), a worker that dies fails only its own job, and the pool replaces it. The start
method is ``forkserver``: forking a process that runs an event loop and threads is unsafe.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError as FutureCancelled
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pebble
from pebble.common import CONSTS  # type: ignore[attr-defined]  # pebble re-exports it implicitly

from pyrexisd.executors import worker
from pyrexisd.executors.base import CANCELLED, Executor, JobCall, Outcome

log = logging.getLogger(__name__)

START_METHOD = "forkserver"
CHANNEL_CATCH_UP = 5.0  # seconds to wait for a finished job's last events


class ProcessExecutor(Executor):
    mode = "process"

    def __init__(
        self,
        slots: int,
        task_modules: tuple[str, ...] = (),
        kill_grace: float = 5.0,
        on_worker: Callable[[int, int | None], None] | None = None,
    ) -> None:
        super().__init__(slots)
        self.on_worker = on_worker  # told of each new worker (pid, start time)
        self.task_modules = task_modules
        self.kill_grace = kill_grace
        self._context = multiprocessing.get_context(START_METHOD)
        self._pool: pebble.ProcessPool | None = None
        self._channel: Any = None
        self._reader: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._calls: dict[int, JobCall] = {}
        self._received: dict[int, int] = {}  # token -> channel messages delivered
        self._caught_up: dict[int, tuple[int, asyncio.Future[None]]] = {}
        self._tokens = itertools.count(1)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        CONSTS.term_timeout = self.kill_grace
        self._channel = self._context.Queue()
        self._reader = threading.Thread(target=self._read_channel, name="pyrexis-channel", daemon=True)
        self._reader.start()
        self._pool = self._new_pool()

    def _new_pool(self) -> pebble.ProcessPool:
        return pebble.ProcessPool(
            max_workers=self.slots,
            context=self._context,
            initializer=worker.init_worker,
            initargs=(self.task_modules, self._channel),
        )

    def _read_channel(self) -> None:
        # A thread, because a multiprocessing queue only offers blocking reads.
        assert self._loop is not None
        while True:
            try:
                item = self._channel.get()
            except (EOFError, OSError, ValueError):
                return
            if item is None:
                return
            try:
                self._loop.call_soon_threadsafe(self._deliver, item)
            except RuntimeError:  # the loop is closed
                return

    def _deliver(self, item: tuple[int, str, Any]) -> None:
        token, kind, payload = item
        if kind == "worker":
            if self.on_worker is not None:
                self.on_worker(*payload)
            return
        call = self._calls.get(token)
        if call is None:
            return
        count = self._received[token] = self._received.get(token, 0) + 1
        waiting = self._caught_up.get(token)
        if waiting is not None and count >= waiting[0] and not waiting[1].done():
            waiting[1].set_result(None)
        if call.cancelled:
            return
        if kind == "progress":
            call.events.progress(*payload)
        elif kind == "log":
            call.events.log("log", payload)
        elif kind == "output":
            call.events.output(payload)

    async def _catch_up(self, token: int, sent: int) -> None:
        """Wait until the channel has delivered the ``sent`` events of this attempt."""
        if self._received.get(token, 0) >= sent:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._caught_up[token] = (sent, fut)
        try:
            await asyncio.wait_for(fut, CHANNEL_CATCH_UP)
        except TimeoutError:
            log.warning("events of a process job were lost on the channel")
        finally:
            self._caught_up.pop(token, None)

    async def run(self, call: JobCall) -> Outcome:
        if self._pool is None:
            raise RuntimeError("process executor not started")
        token = next(self._tokens)
        self._calls[token] = call
        try:
            try:
                future = self._pool.schedule(
                    worker.run_task,
                    args=(call.task.name, call.args, call.job_id, call.attempt, token, call.inputs),
                )
            except (RuntimeError, BrokenProcessPool) as exc:
                self._rebuild(f"could not schedule: {exc}")
                return Outcome.failure("worker_died", f"process pool unavailable: {exc}")
            call.on_cancel(future.cancel)
            try:
                reply = await asyncio.wrap_future(future)
            except (asyncio.CancelledError, FutureCancelled):
                if call.cancelled:
                    return CANCELLED
                future.cancel()  # type: ignore[no-untyped-call]  # pebble: ProcessFuture.cancel is unannotated
                raise
            except pebble.ProcessExpired as exc:
                return Outcome.failure(
                    "worker_died", f"the worker process died (exit code {exc.exitcode})"
                )
            except BrokenProcessPool as exc:
                self._rebuild(str(exc))
                return Outcome.failure("worker_died", f"the process pool broke: {exc}")
            except Exception as exc:  # pebble's own errors, pickling failures
                return Outcome.failure("exception", f"{type(exc).__name__}: {exc}")
            await self._catch_up(token, reply[-1])
        finally:
            del self._calls[token]
            self._received.pop(token, None)
        if call.cancelled:
            return CANCELLED
        if reply[0] == "ok":
            return Outcome.success(reply[1])
        _, message, retryable, delay, tb, _sent = reply
        return Outcome(False, None, "exception", message, retryable, delay, tb)

    def _rebuild(self, why: str) -> None:
        log.warning("rebuilding the process pool: %s", why)
        old, self._pool = self._pool, self._new_pool()
        if old is not None:
            old.stop()  # type: ignore[no-untyped-call]  # pebble: ProcessPool.stop is unannotated

    async def shutdown(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()  # type: ignore[no-untyped-call]  # pebble: ProcessPool.stop is unannotated
            await asyncio.to_thread(pool.join, self.kill_grace + 5)
        if self._channel is not None:
            try:
                self._channel.put(None)
            except (OSError, ValueError):
                pass
            if self._reader is not None:
                await asyncio.to_thread(self._reader.join, 2)
            self._channel.close()
            self._channel = None
