"""The database's schema: its tables, the columns of a job, and the records the other
tables hold, as the store takes and gives them.

The tables are made and upgraded by :data:`MIGRATIONS` alone, keyed by ``PRAGMA
user_version`` (:meth:`pyrexisd.store.Store.open` runs them). The write path
(:mod:`pyrexisd.store`) and the reads (:mod:`pyrexisd.store_reads`) both build on this
module; it runs no statement itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

JOB_COLUMNS: tuple[str, ...] = (
    "seq", "job_id", "task", "args", "queue", "priority", "mode", "status", "created_at",
    "max_retries", "on_interrupt", "dependency_policy", "depends_on", "labels", "timeout",
    "attempts", "round_base", "started_at", "finished_at", "run_at", "enqueued_at",
    "result", "error", "progress", "log_seq", "spec_digest", "output_seq", "pid", "pid_start",
    "sched_key", "owner", "pipeline", "cached_from",
)  # fmt: skip
_BLOBS = frozenset({"args", "depends_on", "labels", "result", "error", "progress", "pipeline"})
ARGS_INDEX = JOB_COLUMNS.index("args")
# args are written from the row's packed copy (see store.job_params), the other blobs
# packed with the row.
BLOB_INDEXES = tuple(i for i, c in enumerate(JOB_COLUMNS) if c in _BLOBS and c != "args")
TERMINAL_SQL = "('completed', 'failed', 'cancelled')"

# Each entry upgrades the schema from version i to i + 1 (PRAGMA user_version).
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY,
        job_id TEXT NOT NULL UNIQUE,
        task TEXT NOT NULL,
        args BLOB NOT NULL,
        queue TEXT NOT NULL,
        priority INTEGER NOT NULL,
        mode TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at REAL NOT NULL,
        max_retries INTEGER NOT NULL,
        on_interrupt TEXT NOT NULL,
        dependency_policy TEXT NOT NULL,
        depends_on BLOB NOT NULL,
        labels BLOB NOT NULL,
        timeout REAL,
        attempts INTEGER NOT NULL,
        round_base INTEGER NOT NULL,
        started_at REAL,
        finished_at REAL,
        run_at REAL,
        enqueued_at REAL NOT NULL,
        result BLOB,
        error BLOB,
        progress BLOB,
        log_seq INTEGER NOT NULL,
        spec_digest BLOB NOT NULL
    );
    CREATE INDEX jobs_created ON jobs (created_at, job_id);
    CREATE INDEX jobs_status ON jobs (status, created_at, job_id);
    CREATE INDEX jobs_queue ON jobs (queue, created_at, job_id);
    CREATE TABLE logs (
        job_seq INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        stream TEXT NOT NULL,
        line TEXT NOT NULL,
        time REAL NOT NULL,
        PRIMARY KEY (job_seq, seq)
    ) WITHOUT ROWID;
    CREATE TABLE queues (
        name TEXT PRIMARY KEY,
        paused INTEGER NOT NULL,
        weight REAL NOT NULL,
        max_concurrency INTEGER,
        aging REAL NOT NULL
    );
    CREATE TABLE settings (key TEXT PRIMARY KEY, value BLOB);
    """,
    """
    ALTER TABLE jobs ADD COLUMN output_seq INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE outputs (
        job_seq INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        value BLOB NOT NULL,
        time REAL NOT NULL,
        PRIMARY KEY (job_seq, seq)
    ) WITHOUT ROWID;
    """,
    """
    CREATE TABLE schedules (
        name TEXT PRIMARY KEY,
        cron TEXT,
        every REAL,
        job BLOB NOT NULL,
        next_run REAL NOT NULL,
        created_at REAL NOT NULL,
        last_run REAL,
        last_job_id TEXT
    );
    """,
    """
    ALTER TABLE jobs ADD COLUMN pid INTEGER;
    ALTER TABLE jobs ADD COLUMN pid_start INTEGER;
    """,
    # The scheduler's static key of a pending job, so that the jobs beyond its windows are
    # read back in its order (a partial index: only pending jobs are ever paged in).
    # Filled in for older rows at start-up, where the queues' aging rates are known.
    """
    ALTER TABLE jobs ADD COLUMN sched_key REAL;
    CREATE INDEX jobs_ready ON jobs (queue, mode, sched_key, seq) WHERE status = 'pending';
    """,
    # Ownership: the submitter's uid (NULL for older jobs and schedules, which belong to
    # whoever runs the daemon); "my jobs" pages through the owner's index.
    """
    ALTER TABLE jobs ADD COLUMN owner INTEGER;
    CREATE INDEX jobs_owner ON jobs (owner, created_at, job_id);
    ALTER TABLE schedules ADD COLUMN owner INTEGER;
    """,
    # A pipeline job's state: per-stage figures and where a resume starts (NULL for
    # other jobs). Checkpoints update it, with the outputs they cover, in one commit.
    """
    ALTER TABLE jobs ADD COLUMN pipeline BLOB;
    """,
    # The result cache (pyrexisd.core.cache): one row per (task code, args, owner) digest,
    # its result packed; a job answered from it names the job whose result it reused.
    """
    ALTER TABLE jobs ADD COLUMN cached_from TEXT;
    CREATE TABLE cache (
        key BLOB PRIMARY KEY,
        task TEXT NOT NULL,
        owner INTEGER,
        job_id TEXT NOT NULL,
        result BLOB NOT NULL,
        stored_at REAL NOT NULL,
        expires_at REAL,
        used_at REAL NOT NULL
    );
    """,
    # Retention: finished jobs in the order they ended, for pruning the oldest first.
    """
    CREATE INDEX jobs_finished ON jobs (finished_at, seq) WHERE status IN ('completed', 'failed', 'cancelled');
    """,
)


@dataclass(frozen=True, slots=True)
class QueueSettings:
    name: str
    paused: bool
    weight: float
    max_concurrency: int | None
    aging: float


@dataclass(frozen=True, slots=True)
class CacheRow:
    """One entry of the result cache as stored (``result`` packed)."""

    key: bytes
    task: str
    owner: int | None
    job_id: str
    result: bytes
    stored_at: float
    expires_at: float | None
    used_at: float


@dataclass(slots=True)
class CacheWrites:
    """Changes of the result cache for one group commit: entries stored, entries
    dropped (by key), and entries used (``(used_at, key)``, for the LRU order)."""

    put: Sequence[CacheRow] = ()
    drop: Sequence[bytes] = ()
    touch: Sequence[tuple[float, bytes]] = ()


@dataclass(slots=True)
class Schedule:
    """A recurring job: its definition and where it stands."""

    name: str
    cron: str | None
    every: float | None
    job: dict[str, Any]
    next_run: float
    created_at: float
    last_run: float | None = None
    last_job_id: str | None = None
    owner: int | None = None  # who added it: its runs are that user's jobs

    def record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cron": self.cron,
            "every": self.every,
            "job": self.job,
            "next_run": self.next_run,
            "last_run": self.last_run,
            "last_job_id": self.last_job_id,
            "owner": self.owner,
        }

    def job_id_for(self, slot: float) -> str:
        """The job id of the run for ``slot``: the same for the same slot (so a run is never
        submitted twice), distinct for distinct slots (microseconds: ``every`` may be < 1 s)."""
        name = self.name
        if len(name) > 120:  # job ids are limited to 200 characters
            name = name[:80] + "~" + hashlib.sha1(name.encode()).hexdigest()[:12]
        return f"{name}@{self.created_at:.0f}:{slot:.6f}"


@dataclass(frozen=True, slots=True)
class Finished:
    """A finished job as retention sees it."""

    seq: int
    job_id: str
    queue: str
    status: str
    owner: int | None
    finished_at: float
