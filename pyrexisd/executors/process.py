"""Process mode: functions in worker processes that can be killed one by one.

The standard ``ProcessPoolExecutor`` breaks every future in flight when one worker dies
and cannot stop a single job, so the pool is pebble's ``ProcessPool``: cancelling a
future terminates just the worker running it (SIGTERM, then SIGKILL after the kill grace
period), a worker that dies fails only its own job, and the pool replaces it. The start
method is ``forkserver``: forking a process that runs an event loop and threads is unsafe.
The forkserver preloads the worker module, so a replacement worker starts in
milliseconds instead of importing everything again.

Progress, log lines and outputs come back over a *channel*: each worker connects once,
when it starts, to a Unix socket of the executor and writes msgpack frames on its own
connection. Nothing is shared between workers, so a worker killed in the middle of a
write breaks only its own connection (a shared multiprocessing queue would stay locked
by it for good).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import CancelledError as FutureCancelled
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pebble
from pebble.common import CONSTS  # type: ignore[attr-defined]  # pebble re-exports it implicitly

from protocol.errors import BadFrame, FrameTooLarge
from protocol.framing import FrameDecoder, decode_body
from pyrexisd import procs
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
        self._workers: dict[int, int | None] = {}  # live workers: pid -> start time
        self.task_modules = task_modules
        self.kill_grace = kill_grace
        self._context = multiprocessing.get_context(START_METHOD)
        self._pool: pebble.ProcessPool | None = None
        self._channel_dir: str | None = None
        self._channel_path = ""
        self._channel_server: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._calls: dict[int, JobCall] = {}
        self._received: dict[int, int] = {}  # token -> channel messages delivered
        self._caught_up: dict[int, tuple[int, asyncio.Future[None]]] = {}
        self._tokens = itertools.count(1)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        CONSTS.term_timeout = self.kill_grace
        self._channel_dir = tempfile.mkdtemp(prefix="pyrexis-ch-")
        self._channel_path = os.path.join(self._channel_dir, "c.sock")
        self._channel_server = await self._loop.create_unix_server(
            lambda: _ChannelConnection(self), self._channel_path
        )
        self._context.set_forkserver_preload(["pyrexisd.executors.worker", *self.task_modules])
        self._pool = self._new_pool()

    def _new_pool(self) -> pebble.ProcessPool:
        return pebble.ProcessPool(
            max_workers=self.slots,
            context=self._context,
            initializer=worker.init_worker,
            initargs=(self.task_modules, self._channel_path),
        )

    def _deliver(self, token: int, kind: str, payload: Any) -> None:
        if kind == "worker":
            pid, started = payload
            self._workers[pid] = started
            if self.on_worker is not None:
                self.on_worker(pid, started)
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
            args = (call.task.name, call.args, call.job_id, call.attempt, token, call.inputs)
            try:
                future = self._pool.schedule(worker.run_task, args=args)
            except (RuntimeError, BrokenProcessPool) as exc:
                # Pebble gives up on the whole pool when a worker dies while none is
                # busy; this job never ran, so a fresh pool runs it.
                self._rebuild(f"could not schedule: {exc}")
                try:
                    future = self._pool.schedule(worker.run_task, args=args)
                except (RuntimeError, BrokenProcessPool) as again:
                    return Outcome.failure("worker_died", f"process pool unavailable: {again}")
            call.on_cancel(future.cancel)
            try:
                reply = await asyncio.wrap_future(future)
            except (asyncio.CancelledError, FutureCancelled):
                if call.cancelled:
                    self._reap_soon()
                    return CANCELLED
                future.cancel()  # type: ignore[no-untyped-call]  # pebble: ProcessFuture.cancel is unannotated
                raise
            except pebble.ProcessExpired as exc:
                self._reap_soon()
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

    def _reap_soon(self) -> None:
        """A worker was killed or died: once it is gone, so is whatever its task spawned."""
        if self._loop is not None:
            for delay in (0.2, self.kill_grace + 1.0):
                self._loop.call_later(delay, self._reap_groups)

    def _reap_groups(self) -> None:
        for pid, started in list(self._workers.items()):
            if procs.start_time(pid) != started:  # that worker is gone
                del self._workers[pid]
                if procs.kill_orphaned_group(pid):
                    log.info("killed processes left by worker %d's job", pid)

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
            self._reap_groups()
        if self._channel_server is not None:
            self._channel_server.close()
            self._channel_server = None
        if self._channel_dir is not None:
            shutil.rmtree(self._channel_dir, ignore_errors=True)
            self._channel_dir = None


class _ChannelConnection(asyncio.Protocol):
    """One worker's connection: frames ``{"t": token, "k": kind, "p": payload}``."""

    def __init__(self, executor: ProcessExecutor) -> None:
        self.executor = executor
        self.decoder = FrameDecoder()
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            for body in self.decoder.feed(data):
                # Our own worker wrote it: msgpack's checks suffice, no walk first.
                message = decode_body(body, max_depth=None)
                self.executor._deliver(message["t"], message["k"], message["p"])
        except (BadFrame, FrameTooLarge, KeyError) as exc:
            log.error("dropping a broken worker channel: %s", exc)
            if self.transport is not None:
                self.transport.close()
