"""``pyrexisd``: run the daemon in the foreground, logging to stderr."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import click

from protocol.paths import resolve_socket_path
from pyrexisd import __version__
from pyrexisd.config import Config, default_db_path, default_max_result

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


@click.command(context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "PYREXISD"})
@click.option("--socket", "socket_path", metavar="PATH", help="Unix socket to serve (default: the contract's path rules).")
@click.option("--db", metavar="PATH", help="SQLite database file (default: the user's state dir).")
@click.option("--threads", type=click.IntRange(min=1), help="Thread-mode slots (default: min(32, CPUs + 4)).")
@click.option("--processes", type=click.IntRange(min=1), help="Process-mode slots (default: CPUs).")
@click.option("--async-slots", type=click.IntRange(min=1), help="Async-mode slots (default: 1000).")
@click.option("--shell-slots", type=click.IntRange(min=1), help="Shell-mode slots (default: 2 × CPUs).")
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
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False), default="INFO", show_default=True)
@click.option("--loop", type=click.Choice(["auto", "asyncio", "uvloop"]), default="auto", show_default=True, help="Event loop: uvloop when importable (auto).")
@click.version_option(__version__, prog_name="pyrexisd")
def main(socket_path: str | None, db: str | None, log_level: str, no_shell: bool, task_modules: tuple[str, ...], **options: Any) -> None:
    """Run the PYREXIS job daemon in the foreground (logs go to stderr)."""
    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    given = {k: v for k, v in options.items() if v is not None}
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
