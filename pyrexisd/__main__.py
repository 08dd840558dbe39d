"""``pyrexisd``: run the daemon in the foreground, logging to stderr."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import click

from protocol.framing import DEFAULT_MAX_DEPTH, MAX_DEPTH
from protocol.paths import resolve_socket_path
from pyrexisd import __version__
from pyrexisd.access import resolve_group, resolve_user
from pyrexisd.config import (
    DEFAULT_CACHE_MAX_BYTES,
    DEFAULT_CACHE_MAX_ENTRIES,
    DEFAULT_FRAME_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_STREAMS,
    DEFAULT_MAX_WAITING,
    Config,
    default_db_path,
    default_max_result,
)

EXIT_OK = 0
EXIT_STARTUP = 1
EXIT_USAGE = 2


def _run(config: Config) -> int:
    from pyrexisd.daemon import Daemon, StartupError

    coro = Daemon(config).run()
    try:
        if config.loop == "asyncio":
            return asyncio.run(coro)
        try:
            import uvloop
        except ImportError:
            if config.loop == "uvloop":
                raise click.UsageError("--loop uvloop: uvloop is not installed") from None
            return asyncio.run(coro)
        return uvloop.run(coro)
    except StartupError as exc:
        logging.getLogger("pyrexisd").error("%s", exc.message)
        return EXIT_STARTUP


def _ids(resolve: Any) -> Any:
    """A click callback turning NAME|ID values into numeric ids."""

    def callback(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[int, ...]:
        try:
            return tuple(resolve(v) for v in values)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return callback


def _task_names(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(name.strip() for name in value.split(",") if name.strip())


def _limit(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    """0 means no limit."""
    return None if value == 0 else value


@click.command(context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "PYREXISD"})
@click.option("--socket", "socket_path", metavar="PATH", help="Unix socket to serve (default: the contract's path rules).")
@click.option("--db", metavar="PATH", help="SQLite database file (default: the user's state dir).")
@click.option("--threads", type=click.IntRange(min=1), help="Thread-mode slots (default: min(32, CPUs + 4)).")
@click.option("--processes", type=click.IntRange(min=1), help="Process-mode slots (default: CPUs).")
@click.option("--async-slots", type=click.IntRange(min=1), help="Async-mode slots (default: 1000).")
@click.option("--shell-slots", type=click.IntRange(min=1), help="Shell-mode slots (default: 2 × CPUs).")
@click.option("--pipelines", type=click.IntRange(min=1), help="Pipelines running at once (default: 8); their stages use the executors' pools.")
@click.option("--sync", type=click.Choice(["full", "normal"]), default="full", show_default=True,
              help="SQLite synchronous: full survives power loss; normal may lose the last commits on power loss (not on a crash).")
@click.option("--grace", type=click.FloatRange(min=0), default=10.0, show_default=True, help="Seconds running jobs get to finish on shutdown.")
@click.option("--kill-grace", type=click.FloatRange(min=0), default=5.0, show_default=True, help="Seconds between SIGTERM and SIGKILL for process and shell jobs.")
@click.option("--max-frame", type=click.IntRange(min=1024), default=16 * 1024 * 1024, show_default=True, help="Largest frame in bytes.")
@click.option("--max-result", type=click.IntRange(min=1), help="Largest job result in bytes (default: 1 MiB, less if --max-frame is small).")
@click.option("--max-log-bytes", type=click.IntRange(min=1024), default=16 * 1024 * 1024, show_default=True, help="Log bytes kept per attempt; later lines are dropped with a note.")
@click.option("--aging", type=click.FloatRange(min=0), default=1.0, show_default=True, help="Default aging: priority points gained per second of waiting.")
@click.option("--max-retries", "default_max_retries", type=click.IntRange(min=0), default=0, show_default=True, help="Retries of a job whose task and spec set none.")
@click.option("--tasks", "task_modules", multiple=True, metavar="MODULE", help="Import this task module (repeatable).")
@click.option("--no-shell", is_flag=True, help="Disable the shell task.")
@click.option("--allow-user", "allow_users", multiple=True, metavar="NAME|UID", callback=_ids(resolve_user),
              help="Let this user connect too (repeatable). By default only the daemon's own uid and root may.")
@click.option("--allow-group", "allow_groups", multiple=True, metavar="NAME|GID", callback=_ids(resolve_group),
              help="Let members of this group connect too (repeatable).")
@click.option("--user-tasks", metavar="TASK,...", callback=_task_names,
              help="Tasks a user who is not an admin may submit (default: echo,sleep,shell as root; echo,sleep otherwise).")
@click.option("--max-waiting", type=click.IntRange(min=0), default=DEFAULT_MAX_WAITING, show_default=True, callback=_limit,
              help="Waiting jobs of all users together; a submit past it answers overloaded (0: no limit).")
@click.option("--max-waiting-per-user", type=click.IntRange(min=0), default=0, callback=_limit,
              help="Waiting jobs per user; a submit past it answers overloaded (default 0: no limit).")
@click.option("--max-running-per-user", type=click.IntRange(min=0), default=0, callback=_limit,
              help="Running jobs per user; more wait (pending) until one ends (default 0: no limit).")
@click.option("--max-depth", type=click.IntRange(1, MAX_DEPTH), default=DEFAULT_MAX_DEPTH, show_default=True,
              help="Deepest nesting of maps and lists a frame may hold.")
@click.option("--max-args", type=click.IntRange(min=1),
              help="Largest args + labels + depends_on of one job, packed, in bytes (default: what fits a frame with its result).")
@click.option("--max-connections", type=click.IntRange(min=1), default=DEFAULT_MAX_CONNECTIONS, show_default=True,
              help="Connections served at once; the next is told overloaded and closed.")
@click.option("--max-inflight", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Requests in flight per connection; past it the connection is not read until one ends.")
@click.option("--max-streams", type=click.IntRange(min=1), default=DEFAULT_MAX_STREAMS, show_default=True,
              help="Open streams (wait --events, logs, watch) per connection; the next is told overloaded.")
@click.option("--frame-timeout", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_FRAME_TIMEOUT, show_default=True,
              help="Seconds a frame may take to arrive whole once its first byte came; a slower sender is closed.")
@click.option("--idle-timeout", type=click.FloatRange(min=0), default=DEFAULT_IDLE_TIMEOUT, show_default=True,
              help="Seconds a connection with nothing in flight may stay silent before it is closed (0: never).")
@click.option("--max-buffered", type=click.IntRange(min=1024),
              help="Bytes of unfinished frames all connections together may make the daemon hold (default: 256 MiB, or max-frame if larger).")
@click.option("--dask-scheduler", metavar="tcp://HOST:8786",
              help="Run dask-mode jobs on the Dask cluster of this scheduler (needs the extra pyrexis[dask]).")
@click.option("--dask-local", type=click.IntRange(min=1), metavar="N",
              help="Run dask-mode jobs on a LocalCluster of N worker processes started with the daemon (needs pyrexis[dask]).")
@click.option("--dask-slots", type=click.IntRange(min=1),
              help="Dask-mode slots (default: the cluster's total threads, followed as workers come and go).")
@click.option("--cache-max-entries", type=click.IntRange(min=0), default=DEFAULT_CACHE_MAX_ENTRIES, show_default=True,
              help="Entries the result cache keeps; the least recently used go first (0: cache nothing).")
@click.option("--cache-max-bytes", type=click.IntRange(min=0), default=DEFAULT_CACHE_MAX_BYTES, show_default=True,
              help="Bytes of packed results the result cache keeps; the least recently used go first (0: cache nothing).")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False), default="INFO", show_default=True)
@click.option("--loop", type=click.Choice(["auto", "asyncio", "uvloop"]), default="auto", show_default=True, help="Event loop: uvloop when importable (auto).")
@click.version_option(__version__, prog_name="pyrexisd")
def main(socket_path: str | None, db: str | None, log_level: str, no_shell: bool, task_modules: tuple[str, ...], **options: Any) -> None:
    """Run the PYREXIS job daemon in the foreground (logs go to stderr).

    Only the daemon's own uid and root may connect unless --allow-user/--allow-group say
    otherwise; see the README's "Security model"."""
    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Quotas are the only options whose None (no limit) differs from "not given".
    unlimited = {"max_waiting", "max_waiting_per_user", "max_running_per_user"}
    given = {k: v for k, v in options.items() if v is not None or k in unlimited}
    if "max_result" not in given:
        given["max_result"] = default_max_result(options["max_frame"])
    try:
        config = Config(
            socket=resolve_socket_path(socket_path),
            db=db or default_db_path(),
            log_level=log_level.upper(),
            enable_shell=not no_shell,
            task_modules=task_modules,
            **given,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    sys.exit(_run(config))


if __name__ == "__main__":
    main()
