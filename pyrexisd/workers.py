"""The durable list of process-mode workers, so none outlives a crashed daemon.

Workers already die with their parent (``PR_SET_PDEATHSIG``, through the forkserver that
dies with the daemon); this list covers the rest: at start-up every recorded worker that
is still the same process (pid and start time) is killed before jobs are recovered.
"""

from __future__ import annotations

import asyncio
import logging

from protocol.errors import StorageError
from pyrexisd import procs
from pyrexisd.store import Store

log = logging.getLogger(__name__)

SETTING = "process_workers"


class WorkerRegistry:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._live: dict[int, int | None] = {}

    def started(self, pid: int, started: int | None) -> None:
        """A worker announced itself: record it with the workers still alive."""
        self._live = {p: s for p, s in self._live.items() if s is not None and procs.start_time(p) == s}
        self._live[pid] = started
        fut = self.store.write(settings=[(SETTING, [[p, s] for p, s in self._live.items()])])
        fut.add_done_callback(_report)

    async def kill_survivors(self) -> None:
        recorded = (await self.store.reads.settings()).get(SETTING) or []
        for pid, started in recorded:
            if started is not None and procs.kill_if_same(int(pid), int(started), group=False):
                log.warning("killed process worker %d left by the previous daemon", pid)


def _report(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled() and isinstance(fut.exception(), StorageError):
        log.warning("the list of process workers was not stored: %s", fut.exception())
