"""The configuration applied to a running daemon: at start (the declared queues and
schedules) and on ``reload`` or SIGHUP (whatever can change live).

``reload`` reads the file and the environment again (the flags given at start still win),
compares the result with the running configuration, and for each key that changed
either applies it — when the option is ``live`` and :data:`APPLIERS` has a function for
it — or reports it as needing a restart (the daemon goes on with the old value, and
:attr:`Reloader.config` keeps saying so). A file that is not valid changes nothing and
is answered ``invalid_state`` with the file, the key and the problem.

Declared queues (``[queues.NAME]``) set the settings they name, durably, as
``configure_queue`` would; a queue no longer declared keeps its settings. Declared
schedules (``[schedules.NAME]``) are the file's: one that changed is replaced (its next
run computed anew), one no longer declared is removed; a schedule someone added by hand
under a declared name is replaced by the declaration.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from protocol.errors import InvalidState, PyrexisError, WireError
from pyrexisd import logs
from pyrexisd.config import OPTIONS, OPTIONS_BY_KEY, Config, ConfigError, QueueDecl, ScheduleDecl
from pyrexisd.core.assembly import Core
from pyrexisd.core.queues import QueueChanges
from pyrexisd.core.retention import Rules
from pyrexisd.server import Server
from pyrexisd.settings import ConfigSource, changed_keys

log = logging.getLogger("pyrexisd")

DECLARED_SCHEDULES = "declared_schedules"  # setting: the names of the schedules the file made


@dataclass(frozen=True)
class Running:
    """The parts of a running daemon a new configuration reaches."""

    core: Core
    server: Server | None = None


def _log_level(run: Running, config: Config) -> None:
    logs.set_level(config.log_level)


def _quotas(run: Running, config: Config) -> None:
    core = run.core
    quotas = core.service.admission.quotas
    quotas.max_waiting = config.max_waiting
    quotas.per_user = config.max_waiting_per_user


def _running_cap(run: Running, config: Config) -> None:
    core = run.core
    core.dispatch.set_running_cap(config.max_running_per_user)


def _user_tasks(run: Running, config: Config) -> None:
    core = run.core
    core.service.admission.user_tasks = config.tasks_for_users


def _defaults(run: Running, config: Config) -> None:
    core = run.core
    core.service.config = config
    core.service.admission.config = config


def _retention(run: Running, config: Config) -> None:
    core = run.core
    core.retention.set_rules(Rules(config.keep_finished, config.keep_max))


def _server_limits(run: Running, config: Config) -> None:
    # The server reads its limits as it goes: new values hold for every connection from
    # the next frame, stream or sweep on (max_frame and max_connections need a restart:
    # clients were told the one, the listen backlog was sized for the other).
    if run.server is not None:
        run.server.limits = replace(run.server.limits, max_inflight=config.max_inflight,
                                    max_streams=config.max_streams, frame_timeout=config.frame_timeout,
                                    idle_timeout=config.idle_timeout, max_buffered=config.buffered_limit)


APPLIERS: dict[str, Callable[[Running, Config], None]] = {
    "log_level": _log_level,
    "max_waiting": _quotas,
    "max_waiting_per_user": _quotas,
    "max_running_per_user": _running_cap,
    "user_tasks": _user_tasks,
    "max_retries": _defaults,
    "keep_finished": _retention,
    "keep_max": _retention,
    "max_inflight": _server_limits,
    "max_streams": _server_limits,
    "frame_timeout": _server_limits,
    "idle_timeout": _server_limits,
    "max_buffered": _server_limits,
}
"""Option key → how a new value reaches the running daemon (``live`` options only)."""


def queue_changes(decl: QueueDecl) -> QueueChanges:
    changes: QueueChanges = {}
    if decl.weight is not None:
        changes["weight"] = decl.weight
    if decl.max_concurrency is not None:
        changes["max_concurrency"] = decl.max_concurrency or None  # 0: no cap
    if decl.aging is not None:
        changes["aging"] = decl.aging
    return changes


async def apply_queues(core: Core, declared: Mapping[str, QueueDecl]) -> None:
    """Give the declared queues the settings they name (durable)."""
    for name, decl in declared.items():
        changes = queue_changes(decl)
        if changes:
            await core.queues.configure(name, changes)
        if decl.paused is not None and core.scheduler.queue(name).paused != decl.paused:
            await core.queues.set_paused(name, decl.paused)


async def apply_schedules(core: Core, declared: Mapping[str, ScheduleDecl]) -> None:
    """Make the stored schedules agree with the declared ones (see the module docstring)."""
    service = core.service
    recurring = service.schedules
    made = set((await core.store.reads.settings()).get(DECLARED_SCHEDULES) or ())
    daemon = service.owners.caller_for(None)
    for name in sorted(made - set(declared)):
        if name in recurring.schedules:
            await recurring.remove(name)
    for name, decl in declared.items():
        job = decl.job()
        existing = recurring.schedules.get(name)
        if existing is not None:
            if (existing.cron, existing.every, existing.job) == (decl.cron, decl.every, job):
                continue
            await recurring.remove(name)
        try:
            await recurring.add(daemon, name, decl.cron, decl.every, job)
        except WireError as exc:
            raise type(exc)(f"schedules.{name}: {_explained(exc)}", exc.details) from None
    await core.store.write(settings=[(DECLARED_SCHEDULES, sorted(declared))])


def _explained(exc: PyrexisError) -> str:
    """The message, with the first validation error's place and reason when there is one."""
    errors = exc.details.get("errors") if isinstance(exc.details, Mapping) else None
    if errors and isinstance(errors[0], Mapping):
        loc = ".".join(str(p) for p in errors[0].get("loc") or ())
        return f"{exc.message} ({loc}: {errors[0].get('msg')})" if loc else f"{exc.message} ({errors[0].get('msg')})"
    return exc.message


async def apply_declared(core: Core, config: Config) -> None:
    """At start: the file's queues and schedules (after the tasks and the core are loaded)."""
    await apply_queues(core, config.queues)
    await apply_schedules(core, config.schedules)


class Reloader:
    """Re-reads the configuration and applies it to one running daemon."""

    def __init__(self, core: Core, source: ConfigSource, config: Config, server: Server | None = None) -> None:
        self.core = core
        self.running = Running(core, server)
        self.source = source
        self.config = config  # what runs now (keys needing a restart keep their old value)

    async def reload(self) -> dict[str, Any]:
        """``{"file", "changed": [keys applied], "restart_needed": [keys]}``."""
        try:
            loaded = self.source.load()
        except ConfigError as exc:
            raise InvalidState(
                f"the configuration was not reloaded: {exc.line()}",
                {"file": self.source.path, "key": exc.key, "msg": exc.problem, "where": exc.where},
            ) from None
        old, new = self.config, loaded.config
        applied: list[str] = []
        restart: list[str] = []
        kept: dict[str, Any] = {}
        appliers: list[Callable[[Running, Config], None]] = []
        for key in changed_keys(old, new):
            opt = OPTIONS_BY_KEY.get(key)
            if opt is None:  # queues.NAME, schedules.NAME: applied below
                applied.append(key)
            elif opt.info.live and key in APPLIERS:
                applied.append(key)
                if APPLIERS[key] not in appliers:
                    appliers.append(APPLIERS[key])
            else:
                restart.append(key)
                kept[opt.name] = getattr(old, opt.name)
        running = replace(new, **kept) if kept else new
        for apply in appliers:
            apply(self.running, running)
        try:
            if old.queues != new.queues:
                await apply_queues(self.core, new.queues)
            if old.schedules != new.schedules:
                await apply_schedules(self.core, new.schedules)
        except PyrexisError as exc:
            raise InvalidState(f"the configuration was reloaded in part: {exc.message}") from None
        finally:
            self.config = running
        log.info(
            "configuration reloaded from %s: changed %s; needing a restart %s",
            self.source.path, ", ".join(applied) or "nothing", ", ".join(restart) or "nothing",
        )
        return {"file": self.source.path, "changed": applied, "restart_needed": restart}


def live_keys() -> list[str]:
    """The option keys ``reload`` applies without a restart."""
    return [o.key for o in OPTIONS if o.info.live and o.key in APPLIERS]
