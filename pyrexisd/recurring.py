"""Recurring jobs: schedules that submit a job by cron expression or every N seconds.

Cron expressions have five fields and are read in the daemon's local time (croniter
does the calendar arithmetic). Each run submits the schedule's job with a job id made
of the schedule and the slot it fills, so a run that committed just before a crash is
not submitted twice when the daemon comes back. Runs missed while the daemon was down
are caught up by *one* run at start-up, never a burst; the next run is then computed
from the present.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from croniter import croniter

from protocol.errors import Conflict, InvalidRequest, NotFound, PyrexisError
from pyrexisd.access import Caller
from pyrexisd.store import Store
from pyrexisd.store_schema import Schedule

log = logging.getLogger(__name__)

FORBIDDEN_JOB_FIELDS = ("job_id", "run_at", "delay", "depends_on")


def validate_cron(expr: str) -> None:
    if len(expr.split()) != 5 or not croniter.is_valid(expr):
        raise InvalidRequest(
            f"not a 5-field cron expression: {expr!r}",
            {"errors": [{"loc": ["cron"], "msg": "expected 5 fields: minute hour day month weekday"}]},
        )


def next_fire(cron: str | None, every: float | None, after: float) -> float:
    """The first run strictly after ``after`` (seconds since the epoch)."""
    if cron is not None:
        start = datetime.fromtimestamp(after).astimezone()
        return float(croniter(cron, start).get_next(float))
    assert every is not None and every > 0
    return after + every


class Recurring:
    """Owns the schedules: durable rows, one timer for the earliest run.

    A schedule belongs to the user who added it: its runs are submitted as that user's
    jobs (the same task rules and quotas as the user's own submits), and only that user
    (or an admin) lists or removes it.
    """

    def __init__(
        self,
        store: Store,
        submit: Callable[[Caller, dict[str, Any]], Any],
        check_job: Callable[[Caller, dict[str, Any]], None],
        caller_for: Callable[[int | None], Caller],
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self._submit = submit
        self._check_job = check_job
        self._caller_for = caller_for
        self.clock = clock
        self.schedules: dict[str, Schedule] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._firing: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.stopped = False

    async def start(self) -> None:
        for row in await self.store.reads.load_schedules():
            self.schedules[row.name] = row
        self._arm()

    def stop(self) -> None:
        self.stopped = True
        if self._timer is not None:
            self._timer.cancel()
        for task in self._tasks:
            task.cancel()

    async def add(
        self, caller: Caller, name: str, cron: str | None, every: float | None, job: dict[str, Any]
    ) -> dict[str, Any]:
        if (cron is None) == (every is None):
            raise InvalidRequest(
                "give exactly one of cron or every",
                {"errors": [{"loc": ["cron"], "msg": "exactly one of cron and every"}]},
            )
        if cron is not None:
            validate_cron(cron)
        bad = [f for f in FORBIDDEN_JOB_FIELDS if job.get(f) is not None and job.get(f) != []]
        if bad:
            raise InvalidRequest(
                f"a schedule's job may not set {', '.join(bad)}",
                {"errors": [{"loc": ["job", f], "msg": "not allowed in a schedule"} for f in bad]},
            )
        self._check_job(caller, job)
        if name in self.schedules:
            raise Conflict(f"schedule {name!r} exists", {"name": name})
        now = self.clock()
        schedule = Schedule(name, cron, every, dict(job), next_fire(cron, every, now), now, owner=caller.uid)
        self.schedules[name] = schedule
        try:
            await self.store.write(schedules=[schedule])
        except PyrexisError:
            del self.schedules[name]
            raise
        self._arm()
        return schedule.record()

    def list(self, visible: Callable[[int | None], bool] | None = None) -> list[dict[str, Any]]:
        """The schedules, by name (those whose owner ``visible`` accepts, when given)."""
        return [
            s.record()
            for s in sorted(self.schedules.values(), key=lambda s: s.name)
            if visible is None or visible(s.owner)
        ]

    async def remove(self, name: str, visible: Callable[[int | None], bool] | None = None) -> None:
        """Delete a schedule (another user's is ``not_found`` unless ``visible`` accepts it)."""
        schedule = self.schedules.get(name)
        if schedule is None or (visible is not None and not visible(schedule.owner)):
            raise NotFound(f"no schedule {name!r}", {"name": name})
        del self.schedules[name]
        try:
            await self.store.write(removed_schedules=[name])
        except PyrexisError:
            self.schedules[name] = schedule
            raise
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.stopped:
            return
        waiting = [s.next_run for s in self.schedules.values() if s.name not in self._firing]
        if not waiting:
            return
        delay = max(0.0, min(waiting) - self.clock())
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self.clock()
        for schedule in list(self.schedules.values()):
            if schedule.next_run <= now and schedule.name not in self._firing:
                self._firing.add(schedule.name)
                task = asyncio.ensure_future(self._fire(schedule))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        self._arm()

    async def _fire(self, schedule: Schedule) -> None:
        slot = schedule.next_run
        job_id = schedule.job_id_for(slot)
        try:
            record = await self._submit(self._caller_for(schedule.owner), {**schedule.job, "job_id": job_id})
            schedule.last_job_id = record["job_id"]
        except PyrexisError as exc:
            # The run is skipped (an unloaded task, a full disk); the schedule goes on.
            log.error("schedule %s could not submit its job: %s", schedule.name, exc.message)
        now = self.clock()
        schedule.last_run = now
        schedule.next_run = next_fire(schedule.cron, schedule.every, max(now, slot))
        try:
            if schedule.name in self.schedules:
                await self.store.write(schedules=[schedule])
        except PyrexisError as exc:
            log.error("schedule %s: next run not stored: %s", schedule.name, exc.message)
        finally:
            self._firing.discard(schedule.name)
            self._arm()
