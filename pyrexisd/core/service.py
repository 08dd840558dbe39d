"""The service: the one object the protocol handlers (and any other front) call.

Each method is one command or query of the contract, in the daemon's own terms: it
checks that the daemon takes work, asks admission, the ledger, the waiting room,
dispatch or the queues, and returns records. Two parts with reasons of their own to
change have rooms of their own that the service hands over to: a submit's flow from
admitted specs to committed jobs (:mod:`pyrexisd.core.submission`), and the figures of
``stats`` and ``metrics`` (:mod:`pyrexisd.core.stats`). Nothing here knows about frames
or sockets, and nothing outside the core reaches past it into the store.

Every method takes the :class:`~pyrexisd.access.Caller` it acts for, and applies
ownership (:mod:`pyrexisd.core.owners`): a caller that is not an admin sees and acts on
its own jobs and schedules only — another user's is ``not_found`` — lists, watches and
counts only its own, and may not change the queues' settings (``unauthorized``).

A command that changes anything runs to its end even if its caller is cancelled (the
server cancels the requests of a client that disconnects): once its write is queued it
commits regardless, so the rest — the job launched or queued, its slot freed, the
waiting room and the scheduler told — must follow, or a job stays ``running`` in the
store with no attempt and its slot lost for good (:func:`to_the_end`).
"""

from __future__ import annotations

import asyncio
import functools
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import replace
from typing import Any, Concatenate, ParamSpec, TypeVar

import msgpack

from protocol.errors import Internal, InvalidState, ShuttingDown, Unauthorized
from protocol.pipeline import PIPELINE_TASK
from protocol.status import TERMINAL, WAITING
from pyrexisd.access import Caller
from pyrexisd.config import FRAME_ENVELOPE, Config
from pyrexisd.core import model
from pyrexisd.core.admission import Admission, decode_cursor, encode_cursor
from pyrexisd.core.cache import ResultCache
from pyrexisd.core.dispatch import Dispatch
from pyrexisd.core.ledger import Ledger
from pyrexisd.core.ledger import to_the_end as run_to_the_end
from pyrexisd.core.model import JobRow, LogLine, OutputItem
from pyrexisd.core.owners import Owners
from pyrexisd.core.queues import QueueChanges, Queues
from pyrexisd.core.retention import CleanFilter, Retention
from pyrexisd.core.stats import Stats
from pyrexisd.core.submission import Submission
from pyrexisd.core.waiting import Waiting
from pyrexisd.events import EventFilter, EventHub, Subscription
from pyrexisd.executors.base import Outcome
from pyrexisd.metrics import Metrics
from pyrexisd.recurring import Recurring
from pyrexisd.store import Store
from pyrexisd.tasks.registry import Registry

LOG_PAGE = 1000  # log lines or outputs read from the store at a time
BACKUP_CHUNK = 256 * 1024  # bytes of a backup sent in one event
BACKUP_PREFIX = ".backup-"  # the copy's name, next to the database, while it is sent

P = ParamSpec("P")
T = TypeVar("T")


def to_the_end(
    command: Callable[Concatenate[Service, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[Service, P], Coroutine[Any, Any, T]]:
    """A command that changes state: it runs to its end even if its caller is cancelled
    (see the module docstring); the caller still gets its answer or its error."""

    async def run(self: Service, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await run_to_the_end(command(self, *args, **kwargs))

    functools.update_wrapper(run, command)  # its name and docstring
    return run


class Service:
    """Commands and queries on jobs, queues and schedules."""

    def __init__(
        self,
        config: Config,
        store: Store,
        registry: Registry,
        ledger: Ledger,
        waiting: Waiting,
        dispatch: Dispatch,
        queues: Queues,
        stats: Stats,
        metrics: Metrics,
        hub: EventHub,
        clock: Callable[[], float],
        owners: Owners | None = None,
        cache: ResultCache | None = None,
        retention: Retention | None = None,
    ) -> None:
        self.config = config
        self.cache = cache
        self.retention = retention
        self._store = store
        self.registry = registry
        self.ledger = ledger
        self.waiting = waiting
        self.dispatch = dispatch
        self.queues = queues
        self._stats = stats  # what stats and metrics answer
        self.metrics = metrics
        self.hub = hub
        self.clock = clock
        self.owners = owners if owners is not None else ledger.owners
        self.admission = Admission(registry, config, clock, self.owners, metrics, cache)
        self.submission = Submission(
            self.admission, store.reads, ledger, waiting, dispatch, clock, self.check_open, cache
        )
        self.schedules = Recurring(store, self.submit, self.check_spec, self.owners.caller_for, clock)
        # Installed by the daemon: reads the configuration file again and applies it.
        self.reloader: Callable[[], Awaitable[dict[str, Any]]] | None = None

    @property
    def stopping(self) -> asyncio.Event:
        """Set once the daemon stops taking work; open streams end with ``shutting_down``."""
        return self.ledger.stopping

    def check_open(self) -> None:
        """Refuse new work while the daemon stops."""
        if self.ledger.stopping.is_set():
            raise ShuttingDown("the daemon is stopping and takes no new work")

    # -- submit -------------------------------------------------------------------------
    def check_spec(self, caller: Caller, raw: Any) -> None:
        """Validate a spec as ``submit`` would (task, mode, args), without storing it."""
        self.admission.prepare(caller, raw)

    async def submit(self, caller: Caller, raw: Any) -> dict[str, Any]:
        """Validate, store and schedule one job of ``caller``; its record once it is durable."""
        return (await self.submit_many(caller, [raw], batch=False))[0]

    @to_the_end
    async def submit_many(self, caller: Caller, raws: Sequence[Any], batch: bool = True) -> list[dict[str, Any]]:
        """All-or-nothing: every spec is valid and stored, or none is."""
        return await self.submission.submit_many(caller, raws, batch)

    # -- commands on one job ------------------------------------------------------------
    async def _current(self, caller: Caller, job_id: str) -> JobRow:
        """The job's committed state, if ``caller`` may see it (else ``not_found``)."""
        row = await self.ledger.current(job_id)
        self.owners.check(caller, row.owner, job_id)
        return row

    @to_the_end
    async def cancel(self, caller: Caller, job_id: str) -> dict[str, Any]:
        self.check_open()
        row = await self._current(caller, job_id)
        if row.terminal:
            raise InvalidState(f"job {job_id!r} is already {row.status}", {"status": row.status})
        if row.status == "running":
            cancelled = Outcome.failure("cancelled", "cancelled by a client", retryable=False)
            await self.dispatch.end_early(self.dispatch.running_attempt(row), cancelled)
            return row.record()
        return (await self.waiting.change(row, lambda r: model.cancel_waiting(r, self.clock()))).record()

    @to_the_end
    async def retry(self, caller: Caller, job_id: str) -> dict[str, Any]:
        """A failed or cancelled job waits again, with a fresh round of retries (within
        its owner's waiting quota)."""
        self.check_open()
        row = await self._current(caller, job_id)
        if row.status not in ("failed", "cancelled"):
            raise InvalidState(
                f"only a failed or cancelled job can be retried; {job_id!r} is {row.status}",
                {"status": row.status},
            )
        owner = self.owners.of(row.owner)
        self.admission.quotas.reserve(owner, 1)
        try:
            return (await self.waiting.change(row, lambda r: model.reopen(r, self.clock()))).record()
        finally:
            self.admission.quotas.release(owner, 1)

    @to_the_end
    async def hold(self, caller: Caller, job_id: str) -> dict[str, Any]:
        """A waiting job stays waiting until released."""
        self.check_open()
        row = await self._current(caller, job_id)
        if row.status not in WAITING or row.status == "held":
            raise InvalidState(f"only a waiting job can be held; {job_id!r} is {row.status}", {"status": row.status})
        return (await self.waiting.change(row, lambda r: r.move("held"))).record()

    @to_the_end
    async def release(self, caller: Caller, job_id: str) -> dict[str, Any]:
        """A held job goes back to the waiting status that now applies."""
        self.check_open()
        row = await self._current(caller, job_id)
        if row.status != "held":
            raise InvalidState(f"only a held job can be released; {job_id!r} is {row.status}", {"status": row.status})
        return (await self.waiting.change(row, lambda r: model.unhold(r, self.clock()))).record()

    @to_the_end
    async def update(self, caller: Caller, job_id: str, priority: int | None, queue: str | None) -> dict[str, Any]:
        """Change a waiting job's priority or queue (it keeps its time waited, for aging)."""
        self.check_open()
        row = await self._current(caller, job_id)
        if row.status not in WAITING:
            raise InvalidState(f"only a waiting job can be updated; {job_id!r} is {row.status}", {"status": row.status})

        def change(r: JobRow) -> None:
            if priority is not None:
                r.priority = priority
            if queue is not None:
                r.queue = queue

        return (await self.waiting.change(row, change)).record()

    # -- queries ------------------------------------------------------------------------
    async def get(self, caller: Caller, job_id: str) -> dict[str, Any]:
        return await self.ledger.record(job_id, self.owners.lets(caller))

    async def current(self, caller: Caller, job_id: str) -> JobRow:
        """The job's committed state now, with no change in flight (a stream's opening)."""
        return await self._current(caller, job_id)

    async def find(self, caller: Caller, job_id: str) -> JobRow | None:
        """The job's stored row, or None (also when ``caller`` may not see it)."""
        row = await self._store.reads.get_job(job_id)
        return row if row is not None and self.owners.sees(caller, row.owner) else None

    async def wait(self, caller: Caller, job_id: str, timeout: float | None) -> dict[str, Any]:
        return await self.ledger.wait(job_id, timeout, self.owners.lets(caller))

    async def list_jobs(
        self,
        caller: Caller,
        statuses: Sequence[str] | None,
        task: str | None,
        queue: str | None,
        limit: int,
        after: str | None,
        all_users: bool = False,
        since: float | None = None,
        newest_first: bool = False,
    ) -> dict[str, Any]:
        """A page of records, oldest first (or newest first), and the cursor of the next
        page (or None); only jobs created at ``since`` or later, when given.

        The caller's own jobs, or with ``all_users`` every user's (admins only). A page is
        cut short where its records would not fit in one frame; one record always fits
        (submit refuses specs whose record could not).
        """
        if all_users and not caller.admin:
            raise Unauthorized("only an admin may list every user's jobs")
        cursor = decode_cursor(after) if after else None
        owner = None if all_users else caller.uid
        unowned = owner is not None and owner == self.owners.daemon_uid  # older jobs are the daemon's
        rows = await self._store.reads.list_jobs(
            statuses, task, queue, limit + 1, cursor, owner, unowned, since, newest_first
        )
        more = len(rows) > limit
        rows = rows[:limit]
        budget = self.config.max_frame - FRAME_ENVELOPE
        size = 0
        records = [row.record() for row in rows]
        for i, record in enumerate(records):
            size += len(msgpack.packb(record, use_bin_type=True))
            if size > budget:
                keep = max(1, i)
                return {"jobs": records[:keep], "next": encode_cursor(rows[keep - 1])}
        return {"jobs": records, "next": encode_cursor(rows[-1]) if more and rows else None}

    async def read_logs(self, job_seq: int, since: int) -> list[LogLine]:
        """Stored log lines of job ``job_seq`` from ``since``, a page at most."""
        return await self._store.reads.read_logs(job_seq, since, LOG_PAGE)

    async def read_outputs(self, job_seq: int, since: int) -> list[OutputItem]:
        """Stored outputs of job ``job_seq`` from ``since``, a page at most."""
        return await self._store.reads.read_outputs(job_seq, since, LOG_PAGE)

    def log_signal(self, job_seq: int) -> asyncio.Future[None]:
        """Resolves at the next commit of log lines, outputs or an end of ``job_seq``."""
        return self.ledger.log_signal(job_seq)

    def subscribe(self, caller: Caller, flt: EventFilter) -> Subscription:
        """A subscription to the events ``flt`` matches, of the jobs ``caller`` may see."""
        visible = self.owners.lets(caller)
        return self.hub.subscribe(flt if visible is None else replace(flt, visible=visible))

    def unsubscribe(self, sub: Subscription) -> None:
        self.hub.unsubscribe(sub)

    def stats(self, caller: Caller) -> dict[str, Any]:
        """The daemon's counters; the job counts are only the caller's own unless it is an admin."""
        return self._stats.record(caller)

    # -- the result cache ----------------------------------------------------------------
    def _result_cache(self) -> ResultCache:
        if self.cache is None:
            raise Internal("this core has no result cache")
        return self.cache

    def cache_stats(self, caller: Caller, task: str | None) -> dict[str, Any]:
        """The result cache's figures per task: the whole cache for an admin, the
        caller's own entries and counters for anyone else."""
        return self._result_cache().stats(task, self.owners.lets(caller))

    @to_the_end
    async def cache_clear(self, caller: Caller, task: str | None) -> dict[str, int]:
        """Remove cached results (of ``task``): every user's for an admin, the caller's
        own for anyone else. Durable before it answers."""
        self.check_open()
        return await self._result_cache().clear(task, self.owners.lets(caller))

    def metrics_text(self, caller: Caller) -> str:
        """Every metric in the Prometheus text format: the whole daemon's figures, so only
        for admins (the counts are everyone's)."""
        if not caller.admin:
            raise Unauthorized("only an admin may read the daemon's metrics: they count every user's jobs")
        return self._stats.exporter.text().decode()

    def task_list(self, caller: Caller) -> list[dict[str, Any]]:
        """The tasks ``caller`` may submit (every task, for an admin)."""
        allowed = None if caller.admin else self.admission.user_tasks
        # A pipeline is open to everyone: what its stages may run is checked at submit.
        return [
            t.describe() for t in self.registry.all() if allowed is None or t.name in allowed or t.name == PIPELINE_TASK
        ]

    # -- operations -------------------------------------------------------------------------
    @to_the_end
    async def clean(
        self,
        caller: Caller,
        older_than: float | None,
        statuses: Sequence[str],
        queue: str | None,
        all_users: bool,
    ) -> dict[str, Any]:
        """Prune finished jobs now (``clean``): the caller's own, or with ``all_users``
        every user's (admins only); ``{"removed": n, "kept": m}`` (kept: by the rules)."""
        if all_users and not caller.admin:
            raise Unauthorized("only an admin may clean every user's jobs")
        if self.retention is None:
            raise InvalidState("this daemon has no retention")
        wrong = [s for s in statuses if s not in TERMINAL]
        if wrong:
            raise InvalidState(f"only finished jobs can be cleaned, not {wrong[0]!r} ones", {"status": wrong[0]})
        owner = None if all_users else caller.uid
        flt = CleanFilter(
            before=None if older_than is None else self.clock() - older_than,
            statuses=tuple(statuses),
            queue=queue,
            owner=owner,
            unowned_too=owner is not None and owner == self.owners.daemon_uid,
        )
        removed, kept = await self.retention.clean(flt)
        return {"removed": removed, "kept": kept}

    async def backup(self, caller: Caller) -> AsyncIterator[bytes]:
        """The database, copied with SQLite's backup API while the daemon runs, in chunks
        (admins only: it holds every user's jobs). The copy is made next to the database
        (the only place a hardened unit lets the daemon write) and removed after."""
        if not caller.admin:
            raise Unauthorized("only an admin may back up the database: it holds every user's jobs")
        store = self._store
        fd, tmp = tempfile.mkstemp(prefix=BACKUP_PREFIX, suffix=".db", dir=os.path.dirname(os.path.abspath(store.path)))
        os.close(fd)
        try:
            await store.backup_to(tmp)
            with open(tmp, "rb") as fh:
                while chunk := await asyncio.to_thread(fh.read, BACKUP_CHUNK):
                    yield chunk
        finally:
            os.unlink(tmp)

    @to_the_end
    async def reload(self, caller: Caller) -> dict[str, Any]:
        """Read the configuration file again and apply what can change live (admins only)."""
        if not caller.admin:
            raise Unauthorized("only an admin may reload the daemon's configuration")
        if self.reloader is None:
            raise InvalidState("this daemon was not started from a configuration it can read again")
        return await self.reloader()

    # -- queues and schedules -------------------------------------------------------------
    def queue_rows(self, caller: Caller) -> list[dict[str, Any]]:
        """Every queue's settings, with the caller's own job counts unless it is an admin."""
        return self.queues.rows(None if caller.admin else caller.uid)

    @staticmethod
    def _admin_only(caller: Caller, what: str) -> None:
        if not caller.admin:
            raise Unauthorized(f"only an admin may {what}: the queues are shared by every user")

    @to_the_end
    async def set_paused(self, caller: Caller, queue: str | None, paused: bool) -> list[dict[str, Any]]:
        """Pause or resume one queue, or every queue (including later ones). Durable."""
        self._admin_only(caller, "pause or resume queues")
        self.check_open()
        return await self.queues.set_paused(queue, paused)

    @to_the_end
    async def configure_queue(self, caller: Caller, queue: str, changes: QueueChanges) -> dict[str, Any]:
        self._admin_only(caller, "configure queues")
        self.check_open()
        return await self.queues.configure(queue, changes)

    @to_the_end
    async def add_schedule(
        self, caller: Caller, name: str, cron: str | None, every: float | None, job: dict[str, Any]
    ) -> dict[str, Any]:
        """A schedule of ``caller``'s: its runs are ``caller``'s jobs."""
        self.check_open()
        return await self.schedules.add(caller, name, cron, every, job)

    def list_schedules(self, caller: Caller) -> list[dict[str, Any]]:
        return self.schedules.list(self.owners.lets(caller))

    @to_the_end
    async def remove_schedule(self, caller: Caller, name: str) -> None:
        await self.schedules.remove(name, self.owners.lets(caller))

