"""``pyrexisctl bench``: throughput and latency of fresh daemons, one per SQLite sync setting.

Each daemon runs as our own subprocess (``python -m pyrexisd``) on a socket and database in
a short temporary directory, so a benchmark never disturbs a daemon in use and always
starts from an empty store. Scenarios, all with the built-in ``echo`` task:

- ``serial``: one client submits a job and waits for it, then the next (latency bound);
- ``pipelined``: one connection keeps up to ``inflight`` submits in flight, then waits for
  every job with pipelined ``wait`` requests (throughput bound); once per mode;
- ``queued`` (``--queued N``): N jobs left waiting in a paused queue, filled with
  ``submit_many``: the fill rate and the daemon's memory with them waiting;
- ``restart`` (with ``--restart``): the daemon holding those N jobs is stopped and started
  again: seconds until the first of them has run (the queue resumed as soon as the daemon
  answers), the time to answer in the DAEMON P99 column, and the highest RSS seen from
  the start to that first job.

For each: jobs/s over the whole scenario, submit-to-start latency p50/p99 from the records
(``started_at - created_at``), the daemon's own p99 over its last 1,000 starts (from
becoming ready to really starting, the commit of the running row included), the writes
each group commit carried, and the daemon's resident memory afterwards.
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

from protocol.errors import Overloaded, PyrexisError, WireError
from pyrexisctl.aio import AsyncClient
from pyrexisctl.client import Client, DaemonUnreachable, Record
from pyrexisctl.render import format_duration, table

T = TypeVar("T")

START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
OVERLOAD_GIVE_UP = 60.0
"""Seconds a request may keep being answered ``overloaded`` before the benchmark fails."""

SCENARIO_ORDER = ("serial", "pipelined", "queued", "restart")
QUEUED_NAME = "bench-queued"
QUEUED_BATCH = 5000  # specs per submit_many when filling the queue
ECHO_MODES = ("thread", "process", "async")
"""The modes the built-in ``echo`` task runs in, so the modes a scenario can measure."""


class BenchError(Exception):
    """The benchmark could not run: a daemon did not start, or jobs could not be run."""


@dataclass(frozen=True)
class BenchConfig:
    """What to measure; see the module docstring."""

    jobs: int = 5000
    serial_jobs: int = 5000
    syncs: tuple[str, ...] = ("full", "normal")
    modes: tuple[str, ...] = ("thread", "process")
    inflight: int = 1000
    daemon_args: tuple[str, ...] = ()
    start_timeout: float = START_TIMEOUT
    queued: int = 0  # jobs to leave waiting (in a paused queue) to measure memory; 0: skip
    restart: bool = False  # then restart the daemon holding them and time its recovery


@dataclass
class ScenarioResult:
    """The measurements of one scenario on one daemon."""

    scenario: str
    mode: str
    sync: str
    jobs: int
    seconds: float
    failed: int
    latencies_ms: list[float] = field(repr=False)
    rss_kib: int | None
    daemon_p99_ms: float | None = None
    writes_per_commit: float | None = None

    @property
    def jobs_per_s(self) -> float:
        """Jobs finished per second over the whole scenario (submits and waits included)."""
        return self.jobs / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, fraction: float) -> float | None:
        """Submit-to-start latency at ``fraction`` (nearest rank), in ms."""
        return percentile(self.latencies_ms, fraction)

    def as_dict(self) -> dict[str, Any]:
        """The result as one JSON-ready map."""
        return {
            "scenario": self.scenario,
            "mode": self.mode,
            "sync": self.sync,
            "jobs": self.jobs,
            "seconds": round(self.seconds, 4),
            "jobs_per_s": round(self.jobs_per_s, 1),
            "submit_to_start_ms": {
                "p50": _round(self.percentile_ms(0.50)),
                "p99": _round(self.percentile_ms(0.99)),
            },
            "daemon_start_p99_ms": _round(self.daemon_p99_ms),
            "writes_per_commit": _round(self.writes_per_commit),
            "failed": self.failed,
            "daemon_rss_kib": self.rss_kib,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile of ``values`` (need not be sorted); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


# --------------------------------------------------------------------------- the daemon


def _project_root() -> Path | None:
    # Run from a source tree, ``python -m pyrexisd`` needs that tree on its path even when
    # the current directory is elsewhere; an installed pyrexisd is found as it is.
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyrexisd").is_dir() else None


def read_rss_kib(pid: int) -> int | None:
    """``VmRSS`` of a process in KiB, from ``/proc`` (None where there is no ``/proc``)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class BenchDaemon:
    """One ``pyrexisd`` subprocess on a private socket and database, removed on exit."""

    def __init__(self, sync: str, extra_args: Sequence[str] = ()) -> None:
        self.sync = sync
        # Short on purpose: a Unix socket path must fit in about 107 bytes.
        self.tmpdir = tempfile.mkdtemp(prefix="pxb")
        self.socket_path = os.path.join(self.tmpdir, "s.sock")
        self.db_path = os.path.join(self.tmpdir, "b.db")
        self.log_path = os.path.join(self.tmpdir, "daemon.log")
        self.command = [
            sys.executable, "-m", "pyrexisd",
            "--socket", self.socket_path,
            "--db", self.db_path,
            "--sync", sync,
            *extra_args,
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float) -> None:
        """Start the daemon and return once it answers ``hello`` (``BenchError`` otherwise)."""
        env = dict(os.environ)
        root = _project_root()
        if root is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
            )
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code is not None:
                raise BenchError(f"pyrexisd exited with {code} at start-up:\n{self.log_tail()}")
            try:
                with Client(self.socket_path, connect_timeout=1.0) as client:
                    client.hello("pyrexisctl-bench")
                return
            except DaemonUnreachable:
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"pyrexisd did not answer on {self.socket_path} within {timeout:.0f} s:\n"
                        f"{self.log_tail()}"
                    ) from None
                time.sleep(0.05)

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        assert self.process is not None
        return self.process.pid

    def rss_kib(self) -> int | None:
        """The daemon's resident memory now, in KiB."""
        return read_rss_kib(self.pid) if self.process is not None else None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the daemon wrote, for error messages."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as log:
                return "".join(log.readlines()[-lines:]).rstrip() or "(no output)"
        except OSError:
            return "(no output)"

    def terminate(self) -> None:
        """SIGTERM, and SIGKILL if it hangs; the database stays."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def stop(self) -> None:
        """Terminate the daemon, then remove the temporary directory."""
        try:
            self.terminate()
        finally:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- scenarios


async def _patiently(call: Callable[[], Awaitable[T]]) -> T:
    """Run ``call``, retrying while the daemon answers ``overloaded`` (as a careful client does)."""
    give_up = time.monotonic() + OVERLOAD_GIVE_UP
    while True:
        try:
            return await call()
        except Overloaded as exc:
            if time.monotonic() > give_up:
                raise
            details = exc.details if isinstance(exc.details, dict) else {}
            retry_after = details.get("retry_after")
            await asyncio.sleep(retry_after if isinstance(retry_after, (int, float)) else 0.01)


def _latencies_ms(records: Iterable[Record]) -> list[float]:
    latencies = []
    for record in records:
        started, created = record.get("started_at"), record.get("created_at")
        if isinstance(started, (int, float)) and isinstance(created, (int, float)):
            latencies.append((started - created) * 1000)
    return latencies


def _failed(records: Iterable[Record]) -> int:
    return sum(1 for record in records if record.get("status") != "completed")


async def serial(client: AsyncClient, jobs: int) -> tuple[float, list[Record]]:
    """Submit one echo job, wait for it, repeat: the seconds taken and the final records."""
    finals: list[Record] = []
    started = time.perf_counter()
    for index in range(jobs):
        record = await client.submit("echo", {"value": index}, mode="thread")
        finals.append(await client.wait(record["job_id"]))
    return time.perf_counter() - started, finals


async def pipelined(
    client: AsyncClient, jobs: int, inflight: int, mode: str
) -> tuple[float, list[Record]]:
    """Submit ``jobs`` echo jobs with up to ``inflight`` requests in flight, then wait for all."""
    slots = asyncio.Semaphore(inflight)

    async def submit(index: int) -> Record:
        async with slots:
            return await _patiently(lambda: client.submit("echo", {"value": index}, mode=mode))

    async def wait(job_id: str) -> Record:
        async with slots:
            return await _patiently(lambda: client.wait(job_id))

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        submits = [group.create_task(submit(index)) for index in range(jobs)]
    async with asyncio.TaskGroup() as group:
        waits = [group.create_task(wait(task.result()["job_id"])) for task in submits]
    return time.perf_counter() - started, [task.result() for task in waits]


async def queued(client: AsyncClient, jobs: int) -> float:
    """Fill a paused queue with ``jobs`` waiting echo jobs; the time it took."""
    queue = QUEUED_NAME
    await client.pause(queue)
    started = time.perf_counter()
    for first in range(0, jobs, QUEUED_BATCH):
        count = min(QUEUED_BATCH, jobs - first)
        specs = [{"task": "echo", "args": {"value": i}, "queue": queue} for i in range(first, first + count)]

        async def submit_batch(batch: list[dict[str, Any]] = specs) -> Any:
            return await client.submit_many(batch)

        await _patiently(submit_batch)
    return time.perf_counter() - started


async def _run_scenarios(
    config: BenchConfig, daemon: BenchDaemon, log: Callable[[str], None]
) -> list[ScenarioResult]:
    results: list[ScenarioResult] = []
    plan: list[tuple[str, str, int]] = [("serial", "thread", config.serial_jobs)]
    plan += [("pipelined", mode, config.jobs) for mode in config.modes]
    async with AsyncClient(daemon.socket_path, client_name="pyrexisctl-bench") as client:
        await client.hello()
        for scenario, mode, jobs in plan:
            log(f"sync={daemon.sync}: {scenario} {mode}, {jobs} jobs ...")
            if scenario == "serial":
                seconds, finals = await serial(client, jobs)
            else:
                seconds, finals = await pipelined(client, jobs, config.inflight, mode)
            result = ScenarioResult(
                scenario=scenario,
                mode=mode,
                sync=daemon.sync,
                jobs=jobs,
                seconds=seconds,
                failed=_failed(finals),
                latencies_ms=_latencies_ms(finals),
                rss_kib=daemon.rss_kib(),
            )
            stats = await client.stats()
            result.daemon_p99_ms = stats.get("submit_to_start_ms", {}).get("p99")
            result.writes_per_commit = stats.get("store", {}).get("writes_per_commit")
            log(f"  {result.jobs_per_s:.0f} jobs/s in {format_duration(seconds)}")
            results.append(result)
        if config.queued:
            log(f"sync={daemon.sync}: queued, {config.queued} jobs left waiting ...")
            seconds = await queued(client, config.queued)
            result = ScenarioResult("queued", "-", daemon.sync, config.queued, seconds, 0, [], daemon.rss_kib())
            log(f"  daemon RSS {result.rss_kib} KiB with {config.queued} jobs waiting")
            results.append(result)
    if config.queued and config.restart:
        log(f"sync={daemon.sync}: restart with {config.queued} jobs waiting ...")
        results.append(await asyncio.to_thread(restart, daemon, config))
    return results


def restart(daemon: BenchDaemon, config: BenchConfig) -> ScenarioResult:
    """Stop the daemon holding the queued jobs, start it again, resume their queue at once:
    the seconds until the first of them has run; the highest RSS seen until then."""
    daemon.terminate()
    peak = 0
    started = time.perf_counter()
    daemon.start(config.start_timeout)
    answered = time.perf_counter() - started
    with Client(daemon.socket_path) as client:
        before = client.stats()["by_status"].get("completed", 0)
        client.resume(QUEUED_NAME)
        while client.stats()["by_status"].get("completed", 0) == before:
            peak = max(peak, daemon.rss_kib() or 0)
            if time.perf_counter() - started > config.start_timeout:
                raise BenchError("no queued job ran after the restart")
            time.sleep(0.005)
        seconds = time.perf_counter() - started
        client.pause(QUEUED_NAME)
    peak = max(peak, daemon.rss_kib() or 0)
    result = ScenarioResult("restart", "-", daemon.sync, config.queued, seconds, 0, [], peak or None)
    result.daemon_p99_ms = answered * 1000  # the time to answer, shown in that column
    return result


def run(
    config: BenchConfig, log: Callable[[str], None] = lambda text: None
) -> list[ScenarioResult]:
    """Run every scenario on one fresh daemon per sync setting; daemons are stopped and removed."""
    results: list[ScenarioResult] = []
    for sync in config.syncs:
        with BenchDaemon(sync, config.daemon_args) as daemon:
            log(f"sync={sync}: starting {' '.join(daemon.command[1:])}")
            daemon.start(config.start_timeout)
            try:
                results += asyncio.run(_run_scenarios(config, daemon, log))
            except (PyrexisError, ExceptionGroup) as exc:
                raise BenchError(
                    f"sync={sync}: {_describe(exc)}\n--- the daemon's last lines:\n"
                    f"{daemon.log_tail()}"
                ) from None
    return results


def _describe(exc: BaseException) -> str:
    # A TaskGroup reports every failed job; the first says what went wrong.
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    if isinstance(exc, WireError):
        return f"{exc.code}: {exc.message}"
    if isinstance(exc, PyrexisError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


def results_table(results: Iterable[ScenarioResult]) -> str:
    """The results with the sync settings of each scenario side by side (adjacent rows)."""
    materialised = list(results)
    # Scenarios, modes and syncs keep the order they ran in; a scenario's syncs are adjacent.
    syncs = list(dict.fromkeys(result.sync for result in materialised))
    modes = list(dict.fromkeys(result.mode for result in materialised))

    def order(result: ScenarioResult) -> tuple[int, int, int]:
        return (
            SCENARIO_ORDER.index(result.scenario),
            modes.index(result.mode) if result.mode in modes else len(modes),
            syncs.index(result.sync),
        )

    rows = []
    for result in sorted(materialised, key=order):
        p50, p99 = result.percentile_ms(0.50), result.percentile_ms(0.99)
        rows.append(
            [
                result.scenario,
                result.mode,
                result.sync,
                str(result.jobs),
                format_duration(result.seconds),
                "-" if result.scenario == "restart" else f"{result.jobs_per_s:.0f}",
                "-" if p50 is None else f"{p50:.2f}",
                "-" if p99 is None else f"{p99:.2f}",
                "-" if result.daemon_p99_ms is None else f"{result.daemon_p99_ms:.2f}",
                "-" if result.writes_per_commit is None else f"{result.writes_per_commit:.1f}",
                "-" if result.rss_kib is None else f"{result.rss_kib / 1024:.1f}",
                str(result.failed),
            ]
        )
    headers = (
        "SCENARIO", "MODE", "SYNC", "JOBS", "TIME", "JOBS/S",
        "P50 MS", "P99 MS", "DAEMON P99", "WRITES/COMMIT", "RSS MIB", "FAILED",
    )  # fmt: skip
    return table(headers, rows, right=range(3, 12))
