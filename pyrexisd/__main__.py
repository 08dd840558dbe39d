"""``pyrexisd``: run the daemon in the foreground, logging to stderr.

Its flags are made from :data:`pyrexisd.config.OPTIONS` (one per field of ``Config``):
a new option is a new field there, never a new ``click.option`` here.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import typing
from collections.abc import Callable
from typing import Any, Literal

import click
from click.core import ParameterSource

from pyrexisd import __version__, logs
from pyrexisd.config import OPTIONS, ConfigError, Option, default_config_path
from pyrexisd.settings import ConfigSource, Loaded, render

EXIT_OK = 0
EXIT_STARTUP = 1
EXIT_USAGE = 2

F = typing.TypeVar("F", bound=Callable[..., Any])


def _run(loaded: Loaded, source: ConfigSource) -> int:
    from pyrexisd.daemon import Daemon, StartupError

    config = loaded.config
    coro = Daemon(config, source).run()
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


def _shown_default(opt: Option) -> str:
    if opt.info.shown_default is not None:
        return opt.info.shown_default
    from dataclasses import fields

    from pyrexisd.config import Config

    default = next(f.default for f in fields(Config) if f.name == opt.name)
    if isinstance(default, tuple):
        return ",".join(map(str, default)) or "none"
    return str(default)


_METAVARS: dict[Any, str] = {int: "N", float: "X", int | None: "N", str: "TEXT"}


def _click_option(opt: Option) -> Callable[[F], F]:
    """The flag of one option: its value is checked with the file's and the
    environment's, in :mod:`pyrexisd.settings`, so every flag is taken as text here
    (choices excepted, for --help)."""
    help_text = f"{opt.info.help} [default: {_shown_default(opt)}; key {opt.key}, env {opt.env}]"
    annotation = opt.annotation
    if annotation is bool:
        name = opt.flag[2:]
        return click.option(f"{opt.flag}/--no-{name}", opt.name, default=None, help=help_text)
    kwargs: dict[str, Any] = {"help": help_text, "metavar": opt.info.metavar or _METAVARS.get(annotation, "VALUE")}
    if typing.get_origin(annotation) is Literal:
        kwargs["type"] = click.Choice([str(a) for a in typing.get_args(annotation)], case_sensitive=False)
        kwargs["metavar"] = None
    if opt.info.multiple:
        kwargs["multiple"] = True
    return click.option(opt.flag, opt.name, **kwargs)


def _with_options(func: F) -> F:
    for opt in reversed(OPTIONS):
        func = _click_option(opt)(func)
    return func


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--config", "config_path", metavar="FILE",
              help=f"Configuration file (TOML; default: $PYREXIS_CONFIG, else {default_config_path()}; absent is fine).")
@click.option("--print-config", is_flag=True, help="Print the effective configuration, and where each value came from, and exit.")
@_with_options
@click.version_option(__version__, prog_name="pyrexisd")
@click.pass_context
def main(ctx: click.Context, /, config_path: str | None, print_config: bool, **options: Any) -> None:
    """Run the PYREXIS job daemon in the foreground (logs go to stderr).

    Every option is also a key of the configuration file and a PYREXIS_* environment
    variable; the environment overrides the file, flags override both. SIGHUP (or
    `pyrexisctl reload`) reads the file again and applies what can change live.

    Only the daemon's own uid and root may connect unless --allow-user/--allow-group say
    otherwise; see the README's "Security model"."""
    flags: dict[str, Any] = {}
    for opt in OPTIONS:
        if ctx.get_parameter_source(opt.name) == ParameterSource.COMMANDLINE:
            value = options[opt.name]
            flags[opt.key] = list(value) if isinstance(value, tuple) else value
    source = ConfigSource(flags, config_path)
    try:
        loaded = source.load()
    except ConfigError as exc:
        click.echo(f"pyrexisd: {exc.line()}", err=True)
        sys.exit(EXIT_USAGE)
    if print_config:
        click.echo(render(loaded), nl=False)
        sys.exit(EXIT_OK)
    logs.setup(loaded.config.log_format, loaded.config.log_level)
    sys.exit(_run(loaded, source))


if __name__ == "__main__":
    main()
