"""The daemon's configuration: one frozen object, validated once at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from protocol.framing import DEFAULT_MAX_FRAME
from protocol.paths import resolve_socket_path
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

    def __post_init__(self) -> None:
        for name in ("threads", "processes", "async_slots", "shell_slots", "max_inflight"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
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

    @property
    def max_spec(self) -> int:
        """Largest args + labels + depends_on of a job, so its record always fits a frame."""
        outcome = max(self.max_result, MAX_MESSAGE + 128)  # a result, or an error
        return self.max_frame - outcome - RECORD_RESERVE - FRAME_ENVELOPE

    @property
    def slots(self) -> dict[str, int]:
        slots = {"thread": self.threads, "process": self.processes, "async": self.async_slots}
        if self.enable_shell:
            slots["shell"] = self.shell_slots
        return slots
