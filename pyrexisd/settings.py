"""Where the configuration's values come from, and in which order.

For each option of :data:`pyrexisd.config.OPTIONS`, the value is, from the weakest to
the strongest: its default, the configuration file (TOML), the ``PYREXIS_*``
environment variable, the command-line flag. Every value goes through the option's
parser and a pydantic check of the field's type, then :class:`~pyrexisd.config.Config`
checks the values together, once. A wrong value is one :class:`ConfigError` naming its
source (the file, the variable, the flag), the key and the problem.

:class:`ConfigSource` keeps the flags and the file's path so that ``reload`` (and
SIGHUP) can read the file and the environment again, with the same flags on top.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from pyrexisd.config import (
    OPTIONS,
    OPTIONS_BY_KEY,
    TABLES,
    Config,
    ConfigError,
    Option,
    QueueDecl,
    ScheduleDecl,
    default_config_path,
    key_of,
)

ENV_CONFIG = "PYREXIS_CONFIG"
DEFAULT = "default"


@functools.cache
def _adapter(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation)


def _problem(exc: ValidationError) -> tuple[str, str]:
    """(where inside the value, what is wrong) of a pydantic error, in one line."""
    first = exc.errors()[0]
    loc = ".".join(str(part) for part in first.get("loc", ()))
    return loc, str(first.get("msg", "invalid value"))


def check_value(opt: Option, raw: Any, where: str) -> Any:
    """``raw`` (from a flag, a variable or the file) as the value of ``opt``'s field."""
    try:
        value = opt.parse(raw)
        return _adapter(opt.annotation).validate_python(value)
    except ValidationError as exc:
        _, msg = _problem(exc)
        raise ConfigError(opt.key, f"{msg} (got {raw!r})", where) from None
    except ValueError as exc:
        raise ConfigError(opt.key, str(exc), where) from None


_TABLE_TYPES: dict[str, Any] = {"queues": dict[str, QueueDecl], "schedules": dict[str, ScheduleDecl]}


def _check_table(name: str, raw: Any, where: str) -> Any:
    try:
        return _adapter(_TABLE_TYPES[name]).validate_python(raw)
    except ValidationError as exc:
        loc, msg = _problem(exc)
        raise ConfigError(f"{name}.{loc}" if loc else name, msg, where) from None


def read_file(path: str) -> dict[str, Any] | None:
    """The file's TOML document, or None when it does not exist."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise ConfigError("(file)", "is a directory, not a TOML file", path) from None
    except OSError as exc:
        raise ConfigError("(file)", f"cannot read it: {exc.strerror or exc}", path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("(file)", f"not valid TOML: {exc}", path) from None


def _unknown_key(key: str, path: str) -> ConfigError:
    known = [*OPTIONS_BY_KEY, *TABLES]
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return ConfigError(key, f"unknown key{hint}", path)


@dataclass(frozen=True)
class Loaded:
    """An effective configuration and where each of its values came from."""

    config: Config
    origins: dict[str, str]  # key (or "queues.NAME"/"schedules.NAME") → source
    path: str
    found: bool  # whether the file existed


class ConfigSource:
    """The flags given at start and the file's path: enough to load the configuration
    again (``reload``) with the same precedence."""

    def __init__(self, flags: Mapping[str, Any], path: str | None = None, env: Mapping[str, str] | None = None) -> None:
        self.flags = dict(flags)  # option key → the raw value given on the command line
        self._env = env
        environ = os.environ if env is None else env
        self.explicit = bool(path or environ.get(ENV_CONFIG))
        self.path = path or environ.get(ENV_CONFIG) or default_config_path()

    def load(self) -> Loaded:
        """Read the file and the environment now; :class:`ConfigError` if anything is wrong."""
        env = os.environ if self._env is None else self._env
        values: dict[str, Any] = {}
        origins: dict[str, str] = {}
        doc = read_file(self.path)
        if doc is None and self.explicit:
            raise ConfigError("(file)", "no such file", self.path)
        for key, raw in (doc or {}).items():
            if key in TABLES:
                table = _check_table(key, raw, self.path)
                values[key] = table
                for name in table:
                    origins[f"{key}.{name}"] = self.path
                continue
            opt = OPTIONS_BY_KEY.get(key)
            if opt is None:
                raise _unknown_key(key, self.path)
            values[opt.name] = check_value(opt, raw, self.path)
            origins[key] = self.path
        for opt in OPTIONS:
            raw_env = env.get(opt.env)
            if raw_env is not None and raw_env != "":
                values[opt.name] = check_value(opt, raw_env, opt.env)
                origins[opt.key] = opt.env
            if opt.key in self.flags:
                values[opt.name] = check_value(opt, self.flags[opt.key], opt.flag)
                origins[opt.key] = opt.flag
        try:
            config = Config(**values)
        except ConfigError as exc:
            exc.where = origins.get(exc.key) or (self.path if doc is not None else None)
            raise
        return Loaded(config, origins, self.path, doc is not None)


# -- --print-config -----------------------------------------------------------------------
def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_bare(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def _bare(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _toml(key)


def render(loaded: Loaded) -> str:
    """The effective configuration as a TOML document that could be the file, each value
    followed by a comment naming where it came from."""
    config = loaded.config
    state = "" if loaded.found else " (absent)"
    lines = [f"# pyrexisd's effective configuration; file: {loaded.path}{state}", ""]
    for opt in OPTIONS:
        value = getattr(config, opt.name)
        origin = loaded.origins.get(opt.key, DEFAULT)
        if value is None:
            shown = opt.info.shown_default or "no limit"
            lines.append(f"# {opt.key} is unset: {shown}  # {origin}")
        else:
            lines.append(f"{opt.key} = {_toml(value)}  # {origin}")
    for table in TABLES:
        decls: Mapping[str, Any] = getattr(config, table)
        for name, decl in decls.items():
            lines += ["", f"[{table}.{_bare(name)}]  # {loaded.origins.get(f'{table}.{name}', DEFAULT)}"]
            for k, v in decl.model_dump(exclude_none=True).items():
                lines.append(f"{k} = {_toml(v)}")
    return "\n".join(lines) + "\n"


def changed_keys(old: Config, new: Config) -> list[str]:
    """The keys (and ``queues.NAME``/``schedules.NAME``) whose value differs."""
    out = [opt.key for opt in OPTIONS if getattr(old, opt.name) != getattr(new, opt.name)]
    for table in TABLES:
        a: Mapping[str, Any] = getattr(old, table)
        b: Mapping[str, Any] = getattr(new, table)
        out += [f"{table}.{name}" for name in sorted(set(a) | set(b)) if a.get(name) != b.get(name)]
    return out


__all__ = ["ConfigSource", "Loaded", "check_value", "changed_keys", "key_of", "read_file", "render"]
