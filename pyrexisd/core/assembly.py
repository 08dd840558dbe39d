"""One job core wired together: the rooms, built in the order their imports point."""


from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from pyrexisd.config import Config
from pyrexisd.core.attempt import AttemptLimits
from pyrexisd.core.background import Background
from pyrexisd.core.dispatch import Dispatch
from pyrexisd.core.ledger import Ledger
from pyrexisd.core.owners import Owners
from pyrexisd.core.queues import Queues
from pyrexisd.core.service import Service
from pyrexisd.core.waiting import Waiting
from pyrexisd.events import EventHub
from pyrexisd.executors.base import Executor
from pyrexisd.metrics import Metrics
from pyrexisd.scheduler import Scheduler
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

    async def load(self) -> None:
        """Start-up, in order: the committed view, the queues' settings, the jobs the last
        daemon left running, the waiting jobs. Nothing runs yet."""
        await self.ledger.load()
        await self.queues.load()
        await self.dispatch.recover_interrupted()
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
    daemon_uid: int | None = None,
) -> Core:
    """A core on ``store``, running work on ``executors`` (mode → executor), for a daemon
    running as ``daemon_uid`` (this process's effective uid by default)."""
    scheduler = Scheduler({mode: ex.slots for mode, ex in executors.items()}, clock, config.aging)
    hub = EventHub()
    metrics = Metrics(clock())
    background = Background()
    owners = Owners(daemon_uid)
    parked: list[Waiting] = []  # the waiting room, once built (the ledger is built first)

    def is_waiting(seq: int) -> bool:
        # Waiting here means: in the scheduler, or parked by its owner's running cap.
        return scheduler.is_waiting(seq) or (bool(parked) and parked[0].is_parked(seq))

    ledger = Ledger(store, hub, metrics, is_waiting, clock, owners)
    waiting = Waiting(store, ledger, scheduler, background, clock)
    parked.append(waiting)
    limits = AttemptLimits(max_log_bytes=config.max_log_bytes, max_result=config.max_result)
    dispatch = Dispatch(
        store, ledger, waiting, scheduler, executors, registry, hub, metrics, background, limits,
        config.kill_grace, clock, owners, config.max_running_per_user,
    )  # fmt: skip
    queues = Queues(store, scheduler, metrics, dispatch.kick)
    service = Service(
        config, store, registry, ledger, waiting, dispatch, queues, scheduler, metrics, hub, clock, owners
    )
    return Core(ledger, waiting, dispatch, queues, service, scheduler, hub, metrics)
