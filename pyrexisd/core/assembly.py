"""One job core wired together: the rooms, built in the order their imports point."""


from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from protocol.pipeline import PIPELINE_MODE
from protocol.status import MODES
from pyrexisd.config import Config
from pyrexisd.core.attempt import AttemptLimits
from pyrexisd.core.background import Background
from pyrexisd.core.cache import ResultCache, StageCache
from pyrexisd.core.dispatch import Dispatch
from pyrexisd.core.ledger import Ledger
from pyrexisd.core.model import JobRow
from pyrexisd.core.owners import Owners
from pyrexisd.core.pipeline.calls import ItemCache
from pyrexisd.core.pipeline.runner import PipelineEnv, Pipelines
from pyrexisd.core.queues import Queues
from pyrexisd.core.recovery import recover_interrupted
from pyrexisd.core.retention import Retention, Rules
from pyrexisd.core.service import Service
from pyrexisd.core.stats import Stats
from pyrexisd.core.waiting import Waiting
from pyrexisd.events import EventHub
from pyrexisd.executors.base import Executor
from pyrexisd.metrics import Metrics
from pyrexisd.scheduler import DEFAULT_WINDOW, Scheduler
from pyrexisd.store import Store
from pyrexisd.tasks.registry import Registry


@dataclass(frozen=True)
class Core:
    """One daemon's job core: its rooms, wired to one store and one set of executors."""

    ledger: Ledger
    waiting: Waiting
    dispatch: Dispatch
    queues: Queues
    service: Service
    scheduler: Scheduler
    hub: EventHub
    metrics: Metrics
    store: Store
    clock: Callable[[], float]
    retention: Retention
    stats: Stats
    cache: ResultCache | None = None

    async def load(self) -> None:
        """Start-up, in order: the committed view, the queues' settings, the jobs the last
        daemon left running, the waiting jobs. Nothing runs yet."""
        await self.ledger.load()
        self.ledger.raise_seq(await self.retention.load())
        if self.cache is not None:
            await self.cache.load(self.service.registry.all())
        await self.queues.load()
        await recover_interrupted(self.store, self.ledger, self.clock)
        await self.waiting.load()

    def stop_taking_work(self) -> None:
        """New submits and commands answer ``shutting_down``; nothing new starts."""
        self.ledger.stopping.set()
        self.waiting.stop()


def build_core(
    config: Config,
    store: Store,
    registry: Registry,
    executors: dict[str, Executor],
    clock: Callable[[], float] = time.time,
    window: int = DEFAULT_WINDOW,
    daemon_uid: int | None = None,
    pipeline_cache: ItemCache | None = None,
) -> Core:
    """A core on ``store``, running work on ``executors`` (mode → executor), for a daemon
    running as ``daemon_uid`` (this process's effective uid by default); ``window`` ready
    jobs per queue and mode are held in memory, the others paged in from the store;
    ``pipeline_cache`` answers pipeline stages' calls it holds (none by default)."""
    # A mode without an executor (a daemon restarted without --dask-local, say) has no
    # slots: its waiting jobs load and wait for a daemon that runs it, instead of failing
    # the start.
    slots = {mode: 0 for mode in MODES} | {mode: ex.slots for mode, ex in executors.items()}
    slots[PIPELINE_MODE] = config.pipelines
    scheduler = Scheduler(slots, clock, config.aging, window=window)
    hub = EventHub()
    metrics = Metrics(clock())
    store.group_commit.on_commit = metrics.committed
    background = Background()
    owners = Owners(daemon_uid)
    ledger = Ledger(store, hub, metrics, scheduler, clock, owners)
    waiting = Waiting(store, ledger, scheduler, background, clock)
    limits = AttemptLimits(max_log_bytes=config.max_log_bytes, max_result=config.max_result)
    cache = ResultCache(store, clock, config.cache_max_entries, config.cache_max_bytes, config.max_result)
    if pipeline_cache is None:
        def stage_cache(row: JobRow) -> ItemCache:
            return StageCache(cache, row.owner, row.job_id)
    else:
        def stage_cache(row: JobRow) -> ItemCache:
            return pipeline_cache
    pipelines = Pipelines(
        PipelineEnv(
            store, ledger.publish_stored, executors, registry, config.max_result, clock,
            lambda uid: owners.is_admin(owners.of(uid)), stage_cache,
        )  # fmt: skip
    )
    dispatch = Dispatch(
        store, ledger, waiting, scheduler, executors, registry, hub, metrics, background, limits,
        config.kill_grace, clock, owners, config.max_running_per_user, pipelines, cache,
    )  # fmt: skip
    queues = Queues(store, scheduler, metrics, waiting, dispatch.kick)
    retention = Retention(
        store, ledger, metrics, owners, Rules(config.keep_finished, config.keep_max), waiting.depended_on, clock
    )
    stats = Stats(store, dispatch, queues, scheduler, metrics, hub, clock, owners, cache, retention)
    service = Service(
        config, store, registry, ledger, waiting, dispatch, queues, stats, metrics, hub, clock, owners, cache,
        retention,
    )
    return Core(
        ledger, waiting, dispatch, queues, service, scheduler, hub, metrics, store, clock, retention, stats, cache
    )
