"""The daemon's figures: the record of ``stats`` and the Prometheus exporter behind
``metrics``.

Nothing is counted here: each figure is read, when asked for, from the room that keeps
it (the metrics' counters, the scheduler's slots, the executors' states, the group
commit's timings, the event hub's drops, retention, the running pipelines' last
checkpoints). A new figure changes this room and the one that keeps it, nothing else.
What a caller sees follows ownership (:mod:`pyrexisd.core.owners`): the job counts and
pipelines are its own unless it is an admin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyrexisd.access import Caller
from pyrexisd.core.cache import ResultCache
from pyrexisd.core.dispatch import Dispatch
from pyrexisd.core.model import JobRow
from pyrexisd.core.owners import Owners
from pyrexisd.core.queues import Queues
from pyrexisd.core.retention import Retention
from pyrexisd.events import EventHub
from pyrexisd.metrics import Metrics
from pyrexisd.prometheus import Exporter, cache_families, pipeline_families
from pyrexisd.scheduler import Scheduler
from pyrexisd.store import Store


class Stats:
    """The ``stats`` record, per caller, and the exporter of every metric."""

    def __init__(
        self,
        store: Store,
        dispatch: Dispatch,
        queues: Queues,
        scheduler: Scheduler,
        metrics: Metrics,
        hub: EventHub,
        clock: Callable[[], float],
        owners: Owners,
        cache: ResultCache | None = None,
        retention: Retention | None = None,
    ) -> None:
        self._store = store
        self._dispatch = dispatch
        self._scheduler = scheduler
        self._metrics = metrics
        self._hub = hub
        self._clock = clock
        self._owners = owners
        self._retention = retention
        # The daemon adds families of its own (its connections) once it serves.
        self.exporter = Exporter(metrics, lambda: scheduler.slots, lambda: queues.rows(None))
        self.exporter.add(
            lambda: pipeline_families(((row.pipeline or {}).get("stages", []) for row in dispatch.running_pipelines()), metrics.task_label)
        )
        if cache is not None:
            self.exporter.add(lambda: cache_families(cache.stats(), metrics.task_label))

    def record(self, caller: Caller) -> dict[str, Any]:
        """The daemon's counters; the job counts are only the caller's own unless it is an admin."""
        executors = self._dispatch.executors
        slots = {mode: n for mode, n in self._scheduler.slots.items() if mode in executors}
        out = self._metrics.snapshot(self._clock(), slots, None if caller.admin else caller.uid)
        for mode, executor in executors.items():
            state = executor.state()
            if state is not None:
                out[mode] = state  # e.g. "dask": the cluster as the mode sees it
        store = self._store
        group = store.group_commit
        commits = group.commits
        out["store"] = {
            "file_bytes": store.file_bytes(),
            "commits": commits,
            "writes_per_commit": group.committed_writes / commits if commits else 0.0,
            "commit_ms": 1000.0 * group.commit_seconds / commits if commits else 0.0,
            # Per commit, where the time goes: writes waiting for their batch to start, the
            # hand-over to the writer's thread, the statements, COMMIT, the hand-back.
            "commit_split_ms": {k: (1000.0 * v / commits if commits else 0.0) for k, v in group.split.items()},
            "sync": store.sync,
        }
        out["completed_per_s_by_queue"] = self._metrics.completed_per_s_by_queue(self._clock())
        out["events"] = self._hub.drops()
        retention = self._retention
        if retention is not None:
            out["retention"] = {
                "finished": retention.finished_count(),
                "pruned": retention.pruned,
                "keep_finished": retention.rules.keep_finished,
                "keep_max": retention.rules.keep_max,
            }
        # Running pipelines and their figures per stage, as of their last checkpoint.
        out["pipelines"] = {
            row.job_id: _pipeline_summary(row)
            for row in self._dispatch.running_pipelines()
            if self._owners.sees(caller, row.owner)
        }
        return out


def _pipeline_summary(row: JobRow) -> dict[str, Any]:
    state = row.pipeline or {}
    return {"items": state.get("items"), "outputs": state.get("outputs"), "stages": state.get("stages", [])}
