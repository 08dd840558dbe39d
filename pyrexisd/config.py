"""The daemon's configuration: one frozen object, validated once at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from protocol.framing import DEFAULT_MAX_DEPTH, DEFAULT_MAX_FRAME, MAX_DEPTH
from protocol.paths import resolve_socket_path
from protocol.status import PIPELINE_MODE
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


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Config:
    """Everything the daemon needs to know; see ``pyrexisd --help`` for each option."""

    socket: str = field(default_factory=resolve_socket_path)
    db: str = field(default_factory=default_db_path)
    threads: int = field(default_factory=lambda: min(32, _cpus() + 4))
    processes: int = field(default_factory=_cpus)
    async_slots: int = 1000
    shell_slots: int = field(default_factory=lambda: 2 * _cpus())
    pipelines: int = 8  # pipeline jobs running at once
    sync: str = "full"
    log_level: str = "INFO"
    loop: str = "auto"
    grace: float = 10.0
    kill_grace: float = 5.0
    max_frame: int = DEFAULT_MAX_FRAME
    max_result: int = DEFAULT_MAX_RESULT
    aging: float = DEFAULT_AGING
    default_max_retries: int = 0
    task_modules: tuple[str, ...] = ()
    enable_shell: bool = True
    max_inflight: int = 1024
    max_log_bytes: int = 16 * 1024 * 1024  # per attempt; later lines are dropped, with a note
    # -- who may connect, and what they may do (see pyrexisd.access) --
    allow_users: tuple[int, ...] = ()
    allow_groups: tuple[int, ...] = ()
    user_tasks: tuple[str, ...] | None = None  # None: default_user_tasks()
    # -- quotas (None: no limit) --
    max_waiting: int | None = DEFAULT_MAX_WAITING
    max_waiting_per_user: int | None = None
    max_running_per_user: int | None = None
    # -- what one peer may make the daemon hold --
    max_depth: int = DEFAULT_MAX_DEPTH
    max_args: int | None = None  # None: as much as a frame allows (see max_spec)
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_streams: int = DEFAULT_MAX_STREAMS  # open streams per connection
    frame_timeout: float = DEFAULT_FRAME_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT  # 0: idle connections are never closed
    max_buffered: int | None = None  # None: max(DEFAULT_MAX_BUFFERED, max_frame)
    # -- the dask mode (extra pyrexis[dask]): on when a cluster is given, one way or the other --
    dask_scheduler: str | None = None  # address of a running cluster's scheduler
    dask_local: int | None = None  # workers of an in-process LocalCluster (one process each)
    dask_slots: int | None = None  # None: the cluster's total threads
    # -- the result cache (pyrexisd.core.cache); 0 entries or 0 bytes: nothing is kept --
    cache_max_entries: int = DEFAULT_CACHE_MAX_ENTRIES
    cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES

    def __post_init__(self) -> None:
        for name in ("threads", "processes", "async_slots", "shell_slots", "pipelines", "max_inflight", "max_connections", "max_streams"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("max_waiting", "max_waiting_per_user", "max_running_per_user"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or unset: no limit)")
        if not 1 <= self.max_depth <= MAX_DEPTH:
            raise ValueError(f"max_depth must be between 1 and {MAX_DEPTH}")
        if self.frame_timeout <= 0:
            raise ValueError("frame_timeout must be > 0")
        if self.idle_timeout < 0:
            raise ValueError("idle_timeout must be >= 0 (0: never)")
        if self.max_buffered is not None and self.max_buffered < self.max_frame:
            raise ValueError("max_buffered must be at least max_frame (a whole frame must fit)")
        if any(uid < 0 for uid in self.allow_users) or any(gid < 0 for gid in self.allow_groups):
            raise ValueError("uids and gids are >= 0")
        if self.cache_max_entries < 0 or self.cache_max_bytes < 0:
            raise ValueError("the result cache's bounds are >= 0 (0: keep nothing)")
        if self.sync not in ("full", "normal"):
            raise ValueError("sync must be 'full' or 'normal'")
        if self.loop not in LOOPS:
            raise ValueError(f"loop must be one of {', '.join(LOOPS)}")
        if self.grace < 0 or self.kill_grace < 0:
            raise ValueError("grace periods must be >= 0")
        if self.max_frame < 1024:
            raise ValueError("max_frame must be at least 1024 bytes")
        if not 0 < self.max_result <= self.max_frame - RECORD_RESERVE - FRAME_ENVELOPE - 64:
            raise ValueError(
                f"max_result must leave room in max_frame for the rest of a job record "
                f"(at most {self.max_frame - RECORD_RESERVE - FRAME_ENVELOPE - 64} with this max_frame)"
            )
        if self.aging < 0:
            raise ValueError("aging must be >= 0")
        if self.max_log_bytes < 1024:
            raise ValueError("max_log_bytes must be at least 1024")
        if self.default_max_retries < 0:
            raise ValueError("default_max_retries must be >= 0")
        if self.dask_scheduler is not None and self.dask_local is not None:
            raise ValueError("give dask_scheduler (a running cluster) or dask_local (a cluster of its own), not both")
        if self.dask_scheduler is not None and "://" not in self.dask_scheduler:
            raise ValueError(f"dask_scheduler must be an address such as tcp://HOST:8786, not {self.dask_scheduler!r}")
        for name in ("dask_local", "dask_slots"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.dask_slots is not None and not self.dask_enabled:
            raise ValueError("dask_slots needs the dask mode: give dask_scheduler or dask_local too")
        if self.max_args is not None and not 1 <= self.max_args <= self.frame_spec:
            raise ValueError(
                f"max_args must be between 1 and {self.frame_spec} with this max_frame and max_result "
                "(a job's record must fit in a frame with its result)"
            )

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
