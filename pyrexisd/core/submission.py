"""Submission: specs in, new jobs committed, each one started at once where a slot is free.

Admission (:mod:`pyrexisd.core.admission`) turns each spec into a row; the rest of a
submit is here, in order: the dependencies and client ids are looked up in the store (a
client id in use answers the stored job's record, for the same spec, or ``conflict``),
the result cache answers the jobs it holds a result for (they are stored ``completed``
and never run), the waiting quotas are reserved for the jobs that will wait, and the new
rows commit together in one ``ledger.change``, which decides where each starts. A batch
is all-or-nothing: every spec is valid and stored, or none is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from protocol.errors import Conflict, StorageError
from pyrexisd.access import Caller
from pyrexisd.core.admission import Admission, Admitted
from pyrexisd.core.cache import ResultCache
from pyrexisd.core.dispatch import Dispatch
from pyrexisd.core.ledger import Ledger
from pyrexisd.core.model import JobRow
from pyrexisd.core.waiting import Waiting
from pyrexisd.store_reads import Reads


class Submission:
    """The flow of ``submit`` and ``submit_many`` from admitted specs to committed jobs."""

    def __init__(
        self,
        admission: Admission,
        reads: Reads,
        ledger: Ledger,
        waiting: Waiting,
        dispatch: Dispatch,
        clock: Callable[[], float],
        check_open: Callable[[], None],
        cache: ResultCache | None = None,
    ) -> None:
        self.admission = admission
        self._reads = reads
        self.ledger = ledger
        self.waiting = waiting
        self.dispatch = dispatch
        self.clock = clock
        # Refuses work while the daemon stops: asked again after the reads, before the commit.
        self.check_open = check_open
        self.cache = cache

    async def submit_many(self, caller: Caller, raws: Sequence[Any], batch: bool = True) -> list[dict[str, Any]]:
        """All-or-nothing: every spec is valid and stored, or none is."""
        self.check_open()
        admitted = self.admission.prepare_batch(caller, raws, batch)
        known: dict[str, str] = {}
        if any(a.spec.depends_on for a in admitted):
            external = Admission.external_dependencies(admitted)
            found = await self._reads.get_jobs_by_id(external) if external else {}
            known = self.admission.check_dependencies(caller, admitted, found, batch)
        existing = await self._resubmits(caller, admitted, batch)
        served = 0
        if self.cache is not None and any(a.cache_key is not None for a in admitted):
            served = await self._from_cache(self.cache, admitted, existing)
        self.check_open()
        fresh = [a.row for i, a in enumerate(admitted) if i not in existing]
        if fresh:
            quotas = self.admission.quotas
            waits = len(fresh) - served  # a job the cache answered never waits
            quotas.reserve(caller.uid, waits)
            try:
                await self._accept(fresh, known)
            finally:
                quotas.release(caller.uid, waits)
        return [existing[i] if i in existing else a.row.record() for i, a in enumerate(admitted)]

    async def _resubmits(self, caller: Caller, admitted: list[Admitted], batch: bool) -> dict[int, dict[str, Any]]:
        """Specs whose client id is in use already: their records (same spec) or conflict."""
        wanted = Admission.client_ids(admitted)
        if not wanted:
            return {}
        # A submit of the same id may be committing right now: read once it is done.
        await self.ledger.claims_settled(wanted)
        rows = await self._reads.get_jobs_by_id(list(wanted))
        while await self.ledger.claims_settled(wanted):
            rows = await self._reads.get_jobs_by_id(list(wanted))
        out = self.admission.resubmits(caller, admitted, rows, batch)
        for job_id, i in wanted.items():
            if i not in out and self.ledger.claimed(job_id):
                raise Conflict(f"job_id {job_id!r} is being submitted concurrently", {"job_id": job_id})
        return out

    async def _from_cache(
        self, cache: ResultCache, admitted: list[Admitted], existing: dict[int, dict[str, Any]]
    ) -> int:
        """Answer from the result cache the new jobs it holds a result for: they will be
        stored ``completed``, never run. How many it answered."""
        asked = [(a, a.cache_key) for i, a in enumerate(admitted) if a.cache_key is not None and i not in existing]
        if not asked:
            return 0
        hits = await cache.lookup_many([key for _, key in asked])
        now = self.clock()
        served = 0
        for a, key in asked:
            hit = hits.get(key.digest)
            if hit is not None:
                row = a.row
                row.cached_from = hit.job_id
                row.result = hit.result
                row.finished_at = now
                served += 1
        return served

    async def _accept(self, rows: list[JobRow], known: dict[str, str]) -> None:
        """Commit new jobs, each already ``running`` when a slot is free for it now."""
        ledger = self.ledger
        # Only a client's own ids can be resubmitted while these commit (generated ids are
        # new), so only those are claimed.
        ids = [row.job_id for row in rows if row.spec_digest]
        claim = ledger.claim(ids) if ids else None
        for row in rows:
            row.seq = ledger.next_seq()
        starting: list[JobRow] = []
        # (queue, mode) pairs refused a slot: no slot frees up within this loop (the
        # rows are one caller's, so the owner's cap is the same for all of them).
        refused: set[tuple[str, str]] = set()
        try:
            now = self.clock()
            async with ledger.change(rows, created=True):
                for row in rows:
                    row.status = status = Admission.initial_status(row, known, now)
                    if status != "pending" or (row.queue, row.mode) in refused:
                        continue
                    if self.dispatch.try_start_now(row):
                        row.status = "running"
                        row.attempts = 1
                        row.started_at = now
                        starting.append(row)
                    else:
                        refused.add((row.queue, row.mode))
        except StorageError:
            for row in starting:
                self.dispatch.release_slot(row)
            self.dispatch.kick()
            raise
        finally:
            if claim is not None:
                ledger.unclaim(ids, claim)
        for row in rows:
            if row.status == "running":
                self.dispatch.launch(row)
            elif row.cached_from is None:
                self.waiting.enqueue(row)
        self.dispatch.kick()
