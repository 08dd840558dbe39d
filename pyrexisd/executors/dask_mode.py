"""Dask mode: a task's function runs on a Dask distributed cluster.

The daemon keeps everything durable (the row, attempts, retries, priorities, fair
share, dependencies, timeouts, cancel) exactly as for the other modes; Dask only runs
the function. An attempt is one Dask task, keyed ``<task>-<run>-<token>`` (unique per
daemon run and attempt, so nothing is ever shared with or taken from another client of
the cluster), submitted with ``retries=0``: the daemon's own retry policy decides.

- Slots follow the cluster: its total threads (or ``--dask-slots``) while connected,
  zero while not, so dask jobs wait (``pending``) until the cluster is back.
- Cancel and timeout cancel the attempt's key on the cluster (``Future.cancel``) and
  the attempt ends at once: its slot is free. Dask cannot stop a function that is
  running: ``ctx.cancelled`` turns true on the worker, and a task that ignores it runs
  on, abandoned, its result discarded (it still occupies a worker thread meanwhile).
- A worker that dies while running the attempt fails it as ``worker_died``; a lost
  scheduler fails the attempts in flight as ``scheduler_lost``: both retryable.
- Progress, log lines and outputs travel as Dask events (see ``dask_worker``) and are
  handed to the job's events in the order the task made them, before its end.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

from pyrexisd.executors.base import CANCELLED, Executor, JobCall, Outcome
from pyrexisd.executors.dask_link import AttemptLost, ClusterLink, ClusterState
from pyrexisd.executors.relay import EventRelay


class DaskExecutor(Executor):
    """Runs attempts on the cluster of ``scheduler`` (an address) or on a LocalCluster of
    ``local`` worker processes; ``fixed_slots`` replaces the cluster's thread count."""

    mode = "dask"

    def __init__(
        self,
        scheduler: str | None = None,
        local: int | None = None,
        fixed_slots: int | None = None,
        task_modules: tuple[str, ...] = (),
        max_result: int = 1024 * 1024,
        close_timeout: float = 5.0,
    ) -> None:
        super().__init__(0)  # no slots until connected
        self.fixed_slots = fixed_slots
        self.max_result = max_result
        self.close_timeout = close_timeout
        self._run_id = uuid.uuid4().hex[:12]
        self._link = ClusterLink(
            scheduler, local, task_modules, f"pyrexis-{self._run_id}", self._on_events, self._on_state
        )
        self._cluster = ClusterState(scheduler=scheduler, local=local is not None)
        self._tokens = itertools.count(1)
        self._relay = EventRelay("dask")

    async def start(self) -> None:
        self._link.start()

    def state(self) -> dict[str, Any]:
        return {**self._cluster.as_dict(), "running": len(self._relay.calls)}

    def _on_state(self, cluster: ClusterState) -> None:
        self._cluster = cluster
        connected = cluster.status == "connected"
        self.set_slots((self.fixed_slots or cluster.threads) if connected else 0)

    def _on_events(self, events: list[tuple[int, str, Any]]) -> None:
        for token, kind, payload in events:
            self._relay.deliver(token, kind, payload)

    async def run(self, call: JobCall) -> Outcome:
        token = next(self._tokens)
        key = f"{call.task.name}-{self._run_id}-{token}"
        args = (call.task.name, call.args, call.inputs, call.job_id, call.attempt, token, self._link.topic, key, self.max_result)
        self._relay.add(token, call)
        try:
            future = asyncio.wrap_future(self._link.run(key, token, args))
            call.on_cancel(lambda: self._link.cancel(token, AttemptLost("cancelled", "cancelled")))
            try:
                reply = await future
            except asyncio.CancelledError:
                # The daemon's own task was cancelled (stopping): do not leave it running.
                self._link.cancel(token, AttemptLost("cancelled", "the daemon is stopping"))
                raise
            except AttemptLost as exc:
                if exc.error_type == "cancelled" or call.cancelled:
                    return CANCELLED
                return Outcome.failure(exc.error_type, exc.message)
            except Exception as exc:  # Dask's own failures: a task that cannot be pickled, say
                return Outcome.failure("exception", f"the Dask cluster failed the attempt: {type(exc).__name__}: {exc}")
            await self._relay.catch_up(token, reply[-1])
        finally:
            self._relay.remove(token)
        if call.cancelled:
            return CANCELLED
        if reply[0] == "ok":
            return Outcome.success(reply[1])
        _, error_type, message, retryable, delay, tb, _sent = reply
        return Outcome(False, None, error_type, message, retryable, delay, tb)

    async def shutdown(self) -> None:
        await self._link.stop(self.close_timeout)
