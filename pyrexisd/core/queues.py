"""Queue settings: pause and resume, weights, concurrency caps, aging. Durable.

The scheduler holds the live settings; the store keeps them across restarts. A change is
committed first, then applied to the scheduler, then dispatch is asked to start what
the change allows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypedDict, Unpack

from protocol.status import WAITING
from pyrexisd.core.waiting import AGING_SETTING, Waiting
from pyrexisd.metrics import Metrics
from pyrexisd.scheduler import Scheduler
from pyrexisd.store import Store
from pyrexisd.store_schema import QueueSettings

_RUNNING = frozenset({"running"})


class QueueChanges(TypedDict, total=False):
    """Some of a queue's settings, to change (``max_concurrency=None`` removes the cap)."""

    paused: bool
    weight: float
    max_concurrency: int | None
    aging: float


class Queues:
    """The queues' settings and their rows for ``queues``, ``pause``, ``resume``."""

    def __init__(
        self, store: Store, scheduler: Scheduler, metrics: Metrics, waiting: Waiting, kick: Callable[[], None]
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.metrics = metrics
        self.waiting = waiting
        self.kick = kick

    async def load(self) -> None:
        """At start-up: the stored settings into the scheduler."""
        settings = await self.store.reads.settings()
        if settings.get("paused_by_default"):
            self.scheduler.pause_all(True)
        for q in await self.store.reads.queue_settings():
            self.scheduler.configure(
                q.name, weight=q.weight, max_concurrency=q.max_concurrency, aging=q.aging, paused=q.paused
            )

    def row(self, name: str, owner: int | None = None) -> dict[str, Any]:
        """A queue's row; its job counts only ``owner``'s when given."""
        q = self.scheduler.queue(name)
        return {
            "queue": name,
            "paused": q.paused,
            "weight": q.weight,
            "max_concurrency": q.max_concurrency,
            "aging": q.aging,
            "waiting": self.metrics.count(name, WAITING, owner),
            "running": self.metrics.count(name, _RUNNING, owner),
        }

    def _names(self) -> set[str]:
        return set(self.scheduler.queues) | self.metrics.queues()

    def rows(self, owner: int | None = None) -> list[dict[str, Any]]:
        """Every queue's row (job counts only ``owner``'s when given)."""
        return [self.row(n, owner) for n in sorted(self._names())]

    def _settings_of(self, name: str, **changes: Unpack[QueueChanges]) -> QueueSettings:
        q = self.scheduler.queue(name)
        current = QueueSettings(name, q.paused, q.weight, q.max_concurrency, q.aging)
        return replace(current, **changes)

    async def set_paused(self, queue: str | None, paused: bool) -> list[dict[str, Any]]:
        """Pause or resume one queue, or every queue (including later ones)."""
        if queue is None:
            names = self._names()
            await self.store.write(
                queues=[self._settings_of(n, paused=paused) for n in names],
                settings=[("paused_by_default", paused)],
            )
            for n in names:
                self.scheduler.queue(n)
            self.scheduler.pause_all(paused)
            self.kick()
            return self.rows()
        await self.store.write(queues=[self._settings_of(queue, paused=paused)])
        self.scheduler.configure(queue, paused=paused)
        self.kick()
        return [self.row(queue)]

    async def configure(self, queue: str, changes: QueueChanges) -> dict[str, Any]:
        """Change some of a queue's settings (``max_concurrency=None`` removes the cap).

        A new aging rate changes the order of the queue's pending jobs: their stored keys
        are rewritten in the same commit, and the scheduler's windows paged in anew.
        """
        aging = changes.get("aging")
        rekey = aging is not None and aging != self.scheduler.queue(queue).aging
        if rekey:
            assert aging is not None
            keyed = dict((await self.store.reads.settings()).get(AGING_SETTING) or {})
            keyed[queue] = aging
            await self.store.write(
                queues=[self._settings_of(queue, **changes)], rekeys=[(queue, aging)], settings=[(AGING_SETTING, keyed)]
            )
        else:
            await self.store.write(queues=[self._settings_of(queue, **changes)])
        self.scheduler.configure(
            queue,
            weight=changes.get("weight"),
            max_concurrency=changes["max_concurrency"] if "max_concurrency" in changes else False,
            aging=aging,
        )
        if rekey:
            self.waiting.rekeyed()
        self.kick()
        return self.row(queue)
