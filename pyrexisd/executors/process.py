"""Process mode: functions in worker processes that can be killed one by one.

The standard ``ProcessPoolExecutor`` breaks every future in flight when one worker dies
and cannot stop a single job, so the pool is our own, and driven from the event loop
itself: ``slots`` long-lived workers (:class:`~pyrexisd.executors.workerproc.WorkerProcess`),
each with one socket to the daemon carrying the call, the attempt's progress, log lines
and outputs, and its end, in that order. No thread of the daemon stands between the loop
and a worker (a pool with its own feeder and collector threads costs hand-overs and GIL
contention on every job), and a job's events need no counting: its end comes after them.

- Cancel or timeout of a running job stops its worker alone (SIGTERM, SIGKILL after the
  kill grace period); the attempt ends once the worker is gone, and a new worker takes
  its place.
- A worker that dies (killed, ``os._exit``, a crash in C code) fails the attempt it ran,
  ``worker_died`` (retryable), and only that one; an idle worker that dies costs no job.
- A worker that breaks the channel (a frame that is not ours) is killed the same way.
- Each worker leads its own process group: once it is gone, whatever its task spawned is
  killed too. Each new worker is reported to ``on_worker`` (pid and start time) so that
  one outliving a crashed daemon is killed when the daemon starts again.
- A worker that cannot load the task modules says why and exits; it is not replaced at
  once (no loop of failing starts): the next job starts a worker and, if it fails again,
  fails with that reason.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import multiprocessing
from collections.abc import Callable
from typing import Any

from pyrexisd import procs
from pyrexisd.config import DEFAULT_MAX_RESULT
from pyrexisd.executors import worker
from pyrexisd.executors.base import CANCELLED, Executor, JobCall, Outcome
from pyrexisd.executors.workerproc import START_METHOD, WorkerProcess, WorkerStartError

log = logging.getLogger(__name__)

_JOB_KINDS = frozenset({"progress", "log", "output", "ok", "err"})


class _Job:
    """One attempt given to one worker."""

    __slots__ = ("token", "call", "future", "worker")

    def __init__(self, token: int, call: JobCall, future: asyncio.Future[Outcome], worker: WorkerProcess) -> None:
        self.token = token
        self.call = call
        self.future = future
        self.worker = worker


class ProcessExecutor(Executor):
    mode = "process"

    def __init__(
        self,
        slots: int,
        task_modules: tuple[str, ...] = (),
        kill_grace: float = 5.0,
        on_worker: Callable[[int, int | None], None] | None = None,
        max_result: int = DEFAULT_MAX_RESULT,
    ) -> None:
        super().__init__(slots)
        self.on_worker = on_worker  # told of each new worker (pid, start time)
        self.task_modules = task_modules
        self.kill_grace = kill_grace
        self.max_result = max_result
        self._context = multiprocessing.get_context(START_METHOD)
        self._workers: list[WorkerProcess] = []  # alive (or not yet known dead)
        self._idle: list[WorkerProcess] = []
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._tokens = itertools.count(1)
        self._closed = False

    async def start(self) -> None:
        self._context.set_forkserver_preload(["pyrexisd.executors.worker", *self.task_modules])
        for _ in range(self.slots):
            try:
                self._idle.append(self._spawn())
            except WorkerStartError as exc:
                # Thread and async jobs still run; process jobs fail with this reason.
                log.error("%s", exc.message)
                break

    def _spawn(self) -> WorkerProcess:
        proc = WorkerProcess(self._context, self.task_modules, self.max_result, self._message, self._exit)
        self._workers.append(proc)
        if self.on_worker is not None:
            self.on_worker(proc.pid, proc.started)
        return proc

    async def run(self, call: JobCall) -> Outcome:
        token = next(self._tokens)
        try:
            data = worker.frame([token, call.task.name, call.args, call.job_id, call.attempt, call.inputs])
        except (TypeError, ValueError, OverflowError) as exc:
            return Outcome.failure("exception", f"the job's arguments cannot be sent to a worker: {exc}", retryable=False)
        try:
            proc = self._take_idle() or await self._free_worker()
        except WorkerStartError as exc:
            return Outcome.failure("worker_died", exc.message)
        job = _Job(token, call, asyncio.get_running_loop().create_future(), proc)
        proc.job = job
        call.on_cancel(lambda: self._stop(job))
        proc.send(data)
        try:
            return await job.future
        except asyncio.CancelledError:
            self._stop(job)  # the daemon gave up on it (stopping): it must not run on
            raise

    def _take_idle(self) -> WorkerProcess | None:
        while self._idle:
            proc = self._idle.pop()  # the most recently used: its memory is warm
            if not proc.has_exited():  # died idle, not noticed yet: never give it a job
                return proc
        return None

    async def _free_worker(self) -> WorkerProcess:
        """A worker for a new attempt: an idle one, a new one while there are fewer than
        ``slots``, else the next to become free."""
        while True:
            if self._closed:
                raise WorkerStartError("the process pool is shut down")
            proc = self._take_idle()
            if proc is not None:
                return proc
            if len(self._workers) < self.slots:
                return self._spawn()
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _stop(self, job: _Job) -> None:
        """Stop a job's worker, if it still runs that job (its end may have come first)."""
        if job.worker.job is job:
            job.worker.stop(self.kill_grace)

    # -- what workers say -----------------------------------------------------------------
    def _message(self, proc: WorkerProcess, kind: str, token: int, payload: Any) -> None:
        try:
            self._on_message(proc, kind, token, payload)
        except Exception as exc:  # a message of the right form with the wrong contents
            proc.broke(f"a {kind!r} message the daemon cannot use: {type(exc).__name__}: {exc}")

    def _on_message(self, proc: WorkerProcess, kind: str, token: int, payload: Any) -> None:
        if kind == "ready":
            proc.ready = True
            return
        if kind == "broken":
            proc.load_error = str(payload)
            log.error("a process worker cannot load the task modules: %s", proc.load_error)
            return
        if kind not in _JOB_KINDS:
            raise ValueError("no such kind")
        job = proc.job
        if not isinstance(job, _Job) or job.token != token:
            return  # from an earlier attempt's leftover thread: nobody's any more
        call = job.call
        if kind == "ok" or kind == "err":
            outcome = Outcome.success(payload) if kind == "ok" else Outcome(False, None, *payload)
            if proc.stopping:
                return  # being stopped: the attempt ends when the worker is gone
            proc.job = None
            if not job.future.done():
                job.future.set_result(CANCELLED if call.cancelled else outcome)
            if not self._closed:
                self._idle.append(proc)
                self._wake_one()
            return
        if call.cancelled:
            return
        if kind == "progress":
            fraction, message = payload
            call.events.progress(fraction, message)
        elif kind == "log":
            call.events.log("log", payload)
        else:
            call.events.output(payload)

    def _exit(self, proc: WorkerProcess, code: int) -> None:
        self._workers.remove(proc)
        if proc in self._idle:
            self._idle.remove(proc)
        job, proc.job = proc.job, None
        if isinstance(job, _Job) and not job.future.done():
            job.future.set_result(CANCELLED if job.call.cancelled else Outcome.failure("worker_died", proc.death(code)))
        if proc.stopping and proc.problem is None:
            log.info("process worker %d stopped (%s)", proc.pid, proc.death(code))
        else:
            log.warning("process worker %d ended: %s", proc.pid, proc.death(code))
        # Its group outlives it only through what its task spawned.
        if procs.kill_orphaned_group(proc.pid):
            log.info("killed processes left by worker %d's job", proc.pid)
        if self._closed:
            return
        if proc.ready and not self._waiters:
            # Keep the pool warm for the next job, but not for a worker that never got
            # ready: the next job will try (and say why if it fails again).
            try:
                self._idle.append(self._spawn())
            except WorkerStartError as exc:
                log.error("%s", exc.message)
        self._wake_one()

    # -- the end ------------------------------------------------------------------------
    async def shutdown(self) -> None:
        """Stop every worker: idle ones exit when their socket ends, running ones were
        stopped with their attempts; any left after the kill grace period is killed."""
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # it sees the pool closed
        self._idle.clear()
        workers = list(self._workers)
        for proc in workers:
            proc.close(self.kill_grace)
        if workers:
            await asyncio.wait([p.gone for p in workers], timeout=self.kill_grace + 2.0)
        for proc in workers:
            if not proc.gone.done():
                log.error("process worker %d did not exit after SIGKILL", proc.pid)
