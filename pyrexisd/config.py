"""The daemon's configuration: one frozen object, validated once at start-up.

:class:`Config` is also the *table of options*: each of its fields made with
:func:`option` is a command-line flag of ``pyrexisd``, a key of the configuration file
and a ``PYREXIS_*`` environment variable, all derived from that one field
(:data:`OPTIONS`). The key is the flag's long name with underscores
(``--max-waiting`` → ``max_waiting``), the variable ``PYREXIS_`` and the key in capitals
(``PYREXIS_MAX_WAITING``). So a new setting is one new field here::

    http: str | None = option(None, help="Serve HTTP on HOST:PORT too.", live=False)

and ``pyrexisd --http``, ``http = "..."`` in the file, ``PYREXIS_HTTP``, ``--print-config``
and ``reload`` (which reports it as needing a restart unless ``live`` and an applier in
:mod:`pyrexisd.reload` say otherwise) all follow. Where the values come from and in which
order is :mod:`pyrexisd.settings`.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from protocol.durations import parse_duration
from protocol.errors import PyrexisError
from protocol.framing import DEFAULT_MAX_DEPTH, DEFAULT_MAX_FRAME, MAX_DEPTH
from protocol.paths import resolve_socket_path
from protocol.status import PIPELINE_MODE
from pyrexisd.http.address import HttpAddress
from pyrexisd.scheduler import DEFAULT_AGING

DEFAULT_MAX_RESULT = 1024 * 1024
# Room a job record needs besides its args, labels, depends_on and result (or error): its
# other keys, ids and names (200 characters at most each) and a progress message (cut at
# MAX_PROGRESS_MESSAGE). An error message is cut at MAX_MESSAGE.
RECORD_RESERVE = 1536
FRAME_ENVELOPE = 256  # a reply's keys around its result, and a list page's cursor
MAX_MESSAGE = 1024
MAX_PROGRESS_MESSAGE = 256


def default_max_result(max_frame: int) -> int:
    """1 MiB, or less when frames are small, so that a finished job's record still fits."""
    return min(DEFAULT_MAX_RESULT, max(1, (max_frame - RECORD_RESERVE - FRAME_ENVELOPE) // 2))


LOOPS = ("auto", "asyncio", "uvloop")

# Tasks a peer that is not an admin may submit unless --user-tasks says otherwise. Python
# tasks run as the daemon's user, so only the harmless built-ins; ``shell`` too when the
# daemon is root, because then a user's command runs as that user (a daemon that is not
# root cannot switch, so it would run other users' commands as itself: not by default).
DEFAULT_USER_TASKS = ("echo", "sleep", "shell")
DEFAULT_MAX_WAITING = 10_000_000  # far above the million the scheduler pages with ease
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_MAX_STREAMS = 128
DEFAULT_FRAME_TIMEOUT = 30.0
DEFAULT_IDLE_TIMEOUT = 600.0
DEFAULT_MAX_BUFFERED = 256 * 1024 * 1024
DEFAULT_CACHE_MAX_ENTRIES = 100_000
DEFAULT_CACHE_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_HTTP_MAX_BODY = 1024 * 1024
DEFAULT_HTTP_RATE = 100.0  # requests per second per client, with bursts of twice as many
DEFAULT_HTTP_MAX_STREAMS = 64
DEFAULT_KEEP_FINISHED = 7 * 86400.0
DEFAULT_KEEP_MAX = 100_000
ENV_PREFIX = "PYREXIS_"


class ConfigError(PyrexisError, ValueError):
    """A setting is wrong: ``key`` names it (a config-file key), ``where`` where its value
    came from (a file, an environment variable, a flag) once known."""

    def __init__(self, key: str, problem: str, where: str | None = None) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem
        self.where = where

    def line(self) -> str:
        """One line naming the source, the key and the problem."""
        return f"{self.where}: {self.key}: {self.problem}" if self.where else f"{self.key}: {self.problem}"


def default_user_tasks(euid: int | None = None) -> tuple[str, ...]:
    """The tasks others may submit by default: with ``shell`` only for a root daemon."""
    euid = os.geteuid() if euid is None else euid
    return DEFAULT_USER_TASKS if euid == 0 else tuple(t for t in DEFAULT_USER_TASKS if t != "shell")


def default_db_path(uid: int | None = None) -> str:
    """The SQLite file: the system state dir for root, else the user's state dir."""
    uid = os.getuid() if uid is None else uid
    if uid == 0:
        return "/var/lib/pyrexis/pyrexis.db"
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "pyrexis", "pyrexis.db")


def default_config_path(uid: int | None = None) -> str:
    """The configuration file read when ``--config`` is not given (absent is fine):
    ``/etc/pyrexis/pyrexisd.toml`` for root, else the user's config dir."""
    uid = os.getuid() if uid is None else uid
    if uid == 0:
        return "/etc/pyrexis/pyrexisd.toml"
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "pyrexis", "pyrexisd.toml")


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# -- value parsers: each takes what a flag, a variable (a string) or the file gives ------
def _items(value: Any) -> list[Any]:
    """A list from a list, or from a comma-separated text (a flag or a variable)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ValueError("expected a list (or a comma-separated text)")


def _names(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in _items(value))


def _ids_of(resolve: Callable[[str], int]) -> Callable[[Any], tuple[int, ...]]:
    def parse(value: Any) -> tuple[int, ...]:
        return tuple(v if isinstance(v, int) and not isinstance(v, bool) else resolve(str(v)) for v in _items(value))

    return parse


def _users(value: Any) -> tuple[int, ...]:
    from pyrexisd.access import resolve_user

    return _ids_of(resolve_user)(value)


def _groups(value: Any) -> tuple[int, ...]:
    from pyrexisd.access import resolve_group

    return _ids_of(resolve_group)(value)


def _limit(value: Any) -> Any:
    """0 means no limit (None)."""
    try:
        return None if not isinstance(value, bool) and float(value) == 0 else value
    except (TypeError, ValueError):
        return value  # the type check says what is wrong


def _level(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


@dataclass(frozen=True)
class OptionInfo:
    """What :func:`option` records about a field, beside its default."""

    help: str
    flag: str | None = None  # default: --field-name
    parse: Callable[[Any], Any] | None = None
    live: bool = False
    multiple: bool = False  # the flag may be repeated (the key takes a list)
    metavar: str | None = None
    shown_default: str | None = None  # for --help, when the default is computed


def option(
    default: Any = MISSING,
    *,
    help: str,
    default_factory: Callable[[], Any] | Any = MISSING,
    flag: str | None = None,
    parse: Callable[[Any], Any] | None = None,
    live: bool = False,
    multiple: bool = False,
    metavar: str | None = None,
    shown_default: str | None = None,
) -> Any:
    """A field of :class:`Config` that is also a flag, a file key and a variable.

    ``live``: ``reload`` may apply a new value without a restart (it also needs an
    applier in :mod:`pyrexisd.reload`). ``parse`` turns what a flag, a variable or the
    file gives into the field's value before it is checked against the field's type.
    """
    info = OptionInfo(help, flag, parse, live, multiple, metavar, shown_default)
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata={"option": info})
    return field(default=default, metadata={"option": info})


class QueueDecl(BaseModel):
    """A queue declared in the file (``[queues.NAME]``): the settings it names are
    applied at start and on reload; the others keep their stored values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    paused: bool | None = None
    weight: float | None = Field(default=None, gt=0)
    max_concurrency: int | None = Field(default=None, ge=0)  # 0: no cap
    aging: float | None = Field(default=None, ge=0)


class ScheduleDecl(BaseModel):
    """A schedule declared in the file (``[schedules.NAME]``): a job of ``task`` by
    ``cron`` or ``every`` seconds, with the job options given."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cron: str | None = None
    every: float | None = Field(default=None, gt=0)
    task: str = Field(min_length=1)
    args: dict[str, Any] = Field(default_factory=dict)
    queue: str | None = None
    priority: int | None = None
    mode: str | None = None
    max_retries: int | None = Field(default=None, ge=0)
    timeout: float | None = Field(default=None, gt=0)
    labels: dict[str, str] | None = None

    @model_validator(mode="after")
    def _one_timing(self) -> ScheduleDecl:
        if (self.cron is None) == (self.every is None):
            raise ValueError("give exactly one of cron and every")
        if self.cron is not None:
            from croniter import croniter

            if len(self.cron.split()) != 5 or not croniter.is_valid(self.cron):
                raise ValueError(f"not a 5-field cron expression: {self.cron!r}")
        return self

    def job(self) -> dict[str, Any]:
        """The job spec every run submits."""
        spec = self.model_dump(exclude={"cron", "every"}, exclude_none=True)
        return spec


@dataclass(frozen=True)
class Config:
    """Everything the daemon needs to know; see ``pyrexisd --help`` for each option."""

    socket: str = option(default_factory=resolve_socket_path, metavar="PATH", shown_default="the contract's path rules",
                         help="Unix socket to serve.")
    db: str = option(default_factory=default_db_path, metavar="PATH", shown_default="the state dir",
                     help="SQLite database file.")
    threads: int = option(default_factory=lambda: min(32, _cpus() + 4), shown_default="min(32, CPUs + 4)",
                          help="Thread-mode slots.")
    processes: int = option(default_factory=_cpus, shown_default="CPUs", help="Process-mode slots.")
    async_slots: int = option(1000, help="Async-mode slots.")
    shell_slots: int = option(default_factory=lambda: 2 * _cpus(), shown_default="2 × CPUs", help="Shell-mode slots.")
    pipelines: int = option(8, help="Pipelines running at once; their stages use the executors' pools.")
    sync: Literal["full", "normal"] = option(
        "full", help="SQLite synchronous: full survives power loss; normal may lose the last commits on power loss (not on a crash).")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = option("INFO", parse=_level, live=True, help="Least severe log lines written.")
    log_format: Literal["auto", "text", "journal", "json"] = option(
        "auto", help="text (with times), journal (syslog priority prefixes, no times), json (a JSON object a line); "
        "auto: journal under journald, else text.")
    loop: Literal["auto", "asyncio", "uvloop"] = option("auto", help="Event loop: uvloop when importable (auto).")
    grace: float = option(10.0, help="Seconds running jobs get to finish on shutdown.")
    kill_grace: float = option(5.0, help="Seconds between SIGTERM and SIGKILL for process and shell jobs.")
    max_frame: int = option(DEFAULT_MAX_FRAME, help="Largest frame in bytes.")
    max_result: int = option(0, shown_default="1 MiB, less if max_frame is small",
                             help="Largest job result in bytes (0: the default).")
    max_log_bytes: int = option(16 * 1024 * 1024, help="Log bytes kept per attempt; later lines are dropped with a note.")
    aging: float = option(DEFAULT_AGING, help="Default aging: priority points gained per second of waiting.")
    default_max_retries: int = option(0, flag="--max-retries", live=True, help="Retries of a job whose task and spec set none.")
    task_modules: tuple[str, ...] = option((), flag="--tasks", multiple=True, parse=_names, metavar="MODULE",
                                           help="Import this task module (repeatable).")
    enable_shell: bool = option(True, flag="--shell", help="Enable the shell task (--no-shell disables it).")
    max_inflight: int = option(1024, live=True, help="Requests in flight per connection; past it the connection is not read until one ends.")
    # -- who may connect, and what they may do (see pyrexisd.access) --
    allow_users: tuple[int, ...] = option((), flag="--allow-user", multiple=True, parse=_users, metavar="NAME|UID",
                                          help="Let this user connect too (repeatable). By default only the daemon's own uid and root may.")
    allow_groups: tuple[int, ...] = option((), flag="--allow-group", multiple=True, parse=_groups, metavar="NAME|GID",
                                           help="Let members of this group connect too (repeatable).")
    user_tasks: tuple[str, ...] | None = option(None, parse=_names, metavar="TASK,...", live=True,
                                                shown_default="echo,sleep,shell as root; echo,sleep otherwise",
                                                help="Tasks a user who is not an admin may submit.")
    # -- quotas (None: no limit; 0 on the command line or in the file) --
    max_waiting: int | None = option(DEFAULT_MAX_WAITING, parse=_limit, live=True,
                                     help="Waiting jobs of all users together; a submit past it answers overloaded (0: no limit).")
    max_waiting_per_user: int | None = option(None, parse=_limit, live=True, shown_default="0: no limit",
                                              help="Waiting jobs per user; a submit past it answers overloaded (0: no limit).")
    max_running_per_user: int | None = option(None, parse=_limit, live=True, shown_default="0: no limit",
                                              help="Running jobs per user; more wait (pending) until one ends (0: no limit).")
    # -- what one peer may make the daemon hold --
    max_depth: int = option(DEFAULT_MAX_DEPTH, help="Deepest nesting of maps and lists a frame may hold.")
    max_args: int | None = option(None, parse=_limit, shown_default="what fits a frame with its result",
                                  help="Largest args + labels + depends_on of one job, packed, in bytes.")
    max_connections: int = option(DEFAULT_MAX_CONNECTIONS, help="Connections served at once; the next is told overloaded and closed.")
    max_streams: int = option(DEFAULT_MAX_STREAMS, live=True, help="Open streams (wait --events, logs, watch) per connection; the next is told overloaded.")
    frame_timeout: float = option(DEFAULT_FRAME_TIMEOUT, live=True, help="Seconds a frame may take to arrive whole once its first byte came; a slower sender is closed.")
    idle_timeout: float = option(DEFAULT_IDLE_TIMEOUT, live=True, help="Seconds a connection with nothing in flight may stay silent before it is closed (0: never).")
    max_buffered: int | None = option(None, parse=_limit, live=True, shown_default="256 MiB, or max_frame if larger",
                                      help="Bytes of unfinished frames all connections together may make the daemon hold.")
    # -- retention: finished jobs are pruned in the background (see pyrexisd.core.retention) --
    keep_finished: float = option(DEFAULT_KEEP_FINISHED, parse=parse_duration, live=True, metavar="DURATION", shown_default="7d",
                                  help="Keep a finished job (its logs and outputs) this long after it ended, e.g. 12h, 7d (0: forever).")
    keep_max: int = option(DEFAULT_KEEP_MAX, live=True, metavar="N",
                           help="Keep at most N finished jobs; the oldest ends go first (0: no limit).")
    # -- the dask mode (extra pyrexis[dask]): on when a cluster is given, one way or the other --
    dask_scheduler: str | None = option(None, metavar="tcp://HOST:8786", shown_default="none",
                                        help="Run dask-mode jobs on the Dask cluster of this scheduler (needs the extra pyrexis[dask]).")
    dask_local: int | None = option(None, metavar="N", shown_default="none",
                                    help="Run dask-mode jobs on a LocalCluster of N worker processes started with the daemon (needs pyrexis[dask]).")
    dask_slots: int | None = option(None, shown_default="the cluster's total threads, followed as workers come and go",
                                    help="Dask-mode slots.")
    # -- the HTTP listener (pyrexisd.http; off unless http is set) --
    http: str | None = option(None, metavar="ADDR", shown_default="off",
                              help="Also serve the HTTP API and dashboard on HOST:PORT, [V6]:PORT or unix:/PATH (needs "
                              "pyrexis[http]). Loopback and Unix paths act as the daemon's user; other addresses need "
                              "--http-token-file.")
    http_token_file: str | None = option(None, metavar="PATH", shown_default="none",
                                         help="File holding the bearer token every HTTP request must carry "
                                         "(required off loopback; owner-only).")
    http_max_body: int = option(DEFAULT_HTTP_MAX_BODY, help="Largest HTTP request body in bytes; a larger one answers 413.")
    http_rate: float | None = option(DEFAULT_HTTP_RATE, parse=_limit,
                                     help="HTTP requests per second per client address (bursts of twice that); past it "
                                     "429 (0: no limit).")
    http_max_streams: int = option(DEFAULT_HTTP_MAX_STREAMS,
                                   help="Server-Sent Events streams open at once, all HTTP clients together; the next answers 429.")
    # -- the result cache (pyrexisd.core.cache); 0 entries or 0 bytes: nothing is kept --
    cache_max_entries: int = option(DEFAULT_CACHE_MAX_ENTRIES,
                                    help="Entries the result cache keeps; the least recently used go first (0: cache nothing).")
    cache_max_bytes: int = option(DEFAULT_CACHE_MAX_BYTES,
                                  help="Bytes of packed results the result cache keeps; the least recently used go first (0: cache nothing).")
    # -- declared in the file only (tables, not flags) --
    queues: Mapping[str, QueueDecl] = field(default_factory=dict)
    schedules: Mapping[str, ScheduleDecl] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_result == 0:
            object.__setattr__(self, "max_result", default_max_result(self.max_frame))
        for name in ("threads", "processes", "async_slots", "shell_slots", "pipelines", "max_inflight", "max_connections", "max_streams"):
            if getattr(self, name) < 1:
                raise ConfigError(key_of(name), "must be at least 1")
        for name in ("max_waiting", "max_waiting_per_user", "max_running_per_user"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(key_of(name), "must be at least 1 (or 0: no limit)")
        if not 1 <= self.max_depth <= MAX_DEPTH:
            raise ConfigError("max_depth", f"must be between 1 and {MAX_DEPTH}")
        if self.frame_timeout <= 0:
            raise ConfigError("frame_timeout", "must be > 0")
        if self.idle_timeout < 0:
            raise ConfigError("idle_timeout", "must be >= 0 (0: never)")
        if self.max_frame < 1024:
            raise ConfigError("max_frame", "must be at least 1024 bytes")
        if self.max_buffered is not None and self.max_buffered < self.max_frame:
            raise ConfigError("max_buffered", "must be at least max_frame (a whole frame must fit)")
        if any(uid < 0 for uid in self.allow_users):
            raise ConfigError("allow_user", "uids are >= 0")
        if any(gid < 0 for gid in self.allow_groups):
            raise ConfigError("allow_group", "gids are >= 0")
        if self.cache_max_entries < 0:
            raise ConfigError("cache_max_entries", "must be >= 0 (0: keep nothing)")
        if self.cache_max_bytes < 0:
            raise ConfigError("cache_max_bytes", "must be >= 0 (0: keep nothing)")
        if self.http is not None:
            try:
                HttpAddress.parse(self.http)
            except ValueError as exc:
                raise ConfigError("http", str(exc)) from None
        if self.http_max_body < 1024:
            raise ConfigError("http_max_body", "must be at least 1024 bytes")
        if self.http_rate is not None and self.http_rate <= 0:
            raise ConfigError("http_rate", "must be > 0 (or 0: no limit)")
        if self.http_max_streams < 1:
            raise ConfigError("http_max_streams", "must be at least 1")
        if self.sync not in ("full", "normal"):
            raise ConfigError("sync", "must be 'full' or 'normal'")
        if self.loop not in LOOPS:
            raise ConfigError("loop", f"must be one of {', '.join(LOOPS)}")
        if self.grace < 0:
            raise ConfigError("grace", "must be >= 0")
        if self.kill_grace < 0:
            raise ConfigError("kill_grace", "must be >= 0")
        if not 0 < self.max_result <= self.max_frame - RECORD_RESERVE - FRAME_ENVELOPE - 64:
            raise ConfigError(
                "max_result",
                f"must leave room in max_frame for the rest of a job record "
                f"(at most {self.max_frame - RECORD_RESERVE - FRAME_ENVELOPE - 64} with this max_frame)",
            )
        if self.aging < 0:
            raise ConfigError("aging", "must be >= 0")
        if self.max_log_bytes < 1024:
            raise ConfigError("max_log_bytes", "must be at least 1024")
        if self.default_max_retries < 0:
            raise ConfigError("max_retries", "must be >= 0")
        if self.max_args is not None and not 1 <= self.max_args <= self.frame_spec:
            raise ConfigError(
                "max_args",
                f"must be between 1 and {self.frame_spec} with this max_frame and max_result "
                "(a job's record must fit in a frame with its result)",
            )
        if self.dask_scheduler is not None and self.dask_local is not None:
            raise ConfigError("dask_scheduler", "give dask_scheduler (a running cluster) or dask_local (a cluster of its own), not both")
        if self.dask_scheduler is not None and "://" not in self.dask_scheduler:
            raise ConfigError("dask_scheduler", f"must be an address such as tcp://HOST:8786, not {self.dask_scheduler!r}")
        for name in ("dask_local", "dask_slots"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(name, "must be at least 1")
        if self.dask_slots is not None and not self.dask_enabled:
            raise ConfigError("dask_slots", "needs the dask mode: give dask_scheduler or dask_local too")
        if self.keep_finished < 0:
            raise ConfigError("keep_finished", "must be >= 0 (0: keep forever)")
        if self.keep_max < 0:
            raise ConfigError("keep_max", "must be >= 0 (0: no limit)")

    @property
    def frame_spec(self) -> int:
        """Largest args + labels + depends_on whose record still fits a frame with its result."""
        outcome = max(self.max_result, MAX_MESSAGE + 128)  # a result, or an error
        return self.max_frame - outcome - RECORD_RESERVE - FRAME_ENVELOPE

    @property
    def max_spec(self) -> int:
        """Largest args + labels + depends_on (packed) a job may have: ``max_args``, or
        by default all that fits (:attr:`frame_spec`)."""
        return self.frame_spec if self.max_args is None else self.max_args

    @property
    def buffered_limit(self) -> int:
        """Bytes of unfinished frames all connections together may make the daemon hold."""
        return self.max_buffered if self.max_buffered is not None else max(DEFAULT_MAX_BUFFERED, self.max_frame)

    @property
    def tasks_for_users(self) -> frozenset[str]:
        """The tasks a peer that is not an admin may submit."""
        return frozenset(self.user_tasks if self.user_tasks is not None else default_user_tasks())

    @property
    def dask_enabled(self) -> bool:
        """Whether the daemon runs the ``dask`` mode."""
        return self.dask_scheduler is not None or self.dask_local is not None

    @property
    def modes(self) -> frozenset[str]:
        """The modes this daemon runs jobs in."""
        extra = {"dask"} if self.dask_enabled else set()
        if self.pipelines:
            extra.add(PIPELINE_MODE)
        return frozenset(self.slots) | extra

    @property
    def slots(self) -> dict[str, int]:
        slots = {"thread": self.threads, "process": self.processes, "async": self.async_slots}
        if self.enable_shell:
            slots["shell"] = self.shell_slots
        return slots


@dataclass(frozen=True)
class Option:
    """One setting of :class:`Config` as the command line, the file and the environment
    know it (derived from the field: see the module docstring)."""

    name: str  # the Config field
    key: str  # the file's key
    flag: str  # the long flag
    env: str  # the environment variable
    annotation: Any  # the field's type
    info: OptionInfo

    def parse(self, value: Any) -> Any:
        """The field's value from what a source gave (before the type check)."""
        if self.info.parse is not None:
            return self.info.parse(value)
        if isinstance(value, str) and _is_tuple(self.annotation):
            return tuple(_items(value))
        return value


def _is_tuple(annotation: Any) -> bool:
    return any(typing.get_origin(arg) is tuple for arg in (annotation, *typing.get_args(annotation)))


def _options() -> tuple[Option, ...]:
    hints = typing.get_type_hints(Config)
    out = []
    for f in fields(Config):
        info = f.metadata.get("option")
        if info is None:
            continue
        flag = info.flag or "--" + f.name.replace("_", "-")
        key = flag[2:].replace("-", "_")
        out.append(Option(f.name, key, flag, ENV_PREFIX + key.upper(), hints[f.name], info))
    return tuple(out)


OPTIONS: tuple[Option, ...] = _options()
"""Every option, in the order of :class:`Config`'s fields."""
OPTIONS_BY_KEY: dict[str, Option] = {o.key: o for o in OPTIONS}
TABLES = ("queues", "schedules")
"""The file's tables (not flags): declared queues and schedules."""
_KEY_OF = {o.name: o.key for o in OPTIONS}


def key_of(name: str) -> str:
    """The file key of a :class:`Config` field."""
    return _KEY_OF.get(name, name)
