"""An in-process job core for tests: a real Store on a temp file, fake executors that
finish when the test says so, and a clock that moves only when the test moves it.

Storage faults are real too: :func:`writer_blocked` holds SQLite's write lock from a
second connection, as another process would, so the store's commits wait (stall) or,
with a short busy timeout, fail with "database is locked".
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

from pyrexisd.access import Caller
from pyrexisd.config import Config
from pyrexisd.core.assembly import Core, build_core
from pyrexisd.executors.base import CANCELLED, Executor, JobCall, Outcome
from pyrexisd.store import Store
from pyrexisd.store_reads import in_thread
from pyrexisd.tasks.registry import Registry, make_task

START = 1_800_000_000.0
DAEMON_UID = 4242  # the uid the in-process core believes it runs as
ADMIN = Caller(DAEMON_UID, DAEMON_UID, None, True)  # the daemon's own user


def user(uid: int) -> Caller:
    """A peer that is not an admin."""
    return Caller(uid, uid, None, False)


class FakeClock:
    """Wall-clock time that moves only when told."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ManualExecutor(Executor):
    """Runs nothing: each attempt waits until the test finishes it. A cancel only marks
    the call; the work "stops" when the test says so, as a slow thread would."""

    mode = "thread"

    def __init__(self, slots: int) -> None:
        super().__init__(slots)
        self.calls: dict[str, JobCall] = {}
        self._outcomes: dict[str, asyncio.Future[Outcome]] = {}
        self.started: list[str] = []  # job ids in the order their work began

    async def run(self, call: JobCall) -> Outcome:
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.calls[call.job_id] = call
        self._outcomes[call.job_id] = fut
        self.started.append(call.job_id)
        try:
            return await fut
        finally:
            del self._outcomes[call.job_id]
            del self.calls[call.job_id]

    @property
    def running(self) -> set[str]:
        return set(self._outcomes)

    def finish(self, job_id: str, outcome: Outcome | None = None) -> None:
        """The attempt of ``job_id`` returns ``outcome`` (success with None by default)."""
        self._outcomes[job_id].set_result(outcome if outcome is not None else Outcome.success(None))

    def stop_cancelled(self, job_id: str) -> None:
        """A cancelled attempt's work has really stopped."""
        assert self.calls[job_id].cancelled
        self._outcomes[job_id].set_result(CANCELLED)


def work(x: int = 0) -> int:
    """The test task: its args model has one int."""
    return x


def make_registry() -> Registry:
    registry = Registry()
    registry.add(make_task(work, name="work", mode="thread"))
    return registry


@dataclass
class CoreHarness:
    core: Core
    store: Store
    clock: FakeClock
    executor: ManualExecutor
    path: str

    @property
    def service(self) -> Any:
        return self.core.service

    async def until(self, predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
        """Let the loop run until ``predicate()`` is truthy; fail after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            await asyncio.sleep(0.002)

    async def stored(self, job_id: str) -> Any:
        row = await self.store.reads.get_job(job_id)
        assert row is not None, job_id
        return row

    async def started(self, job_id: str) -> None:
        await self.until(lambda: job_id in self.executor.running, what=f"{job_id} running")

    async def writer_busy_timeout(self, ms: int) -> None:
        """How long the store's writer waits for SQLite's write lock before failing."""
        def set_timeout(conn: sqlite3.Connection) -> None:
            conn.execute(f"PRAGMA busy_timeout={ms}")

        await in_thread(self.store._writer_conn(), set_timeout)  # noqa: SLF001


@contextmanager
def writer_blocked(path: str) -> Iterator[Callable[[], None]]:
    """Hold the database's write lock from another connection until released (the yielded
    function) or the block ends: commits of the store wait, or fail past its busy timeout."""
    other = sqlite3.connect(path, isolation_level=None, timeout=5)
    other.execute("BEGIN IMMEDIATE")
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            other.execute("ROLLBACK")
            other.close()

    try:
        yield release
    finally:
        release()


@asynccontextmanager
async def running_core(
    path: str, slots: int = 1, clock: FakeClock | None = None, lazy_delay: float = 0.003, window: int = 2048,
    registry: Registry | None = None, **config: Any,
) -> AsyncIterator[CoreHarness]:
    """A loaded and started core on a real store at ``path``, torn down at the end."""
    clock = clock or FakeClock()
    store = Store(path, "normal", lazy_delay=lazy_delay)
    await store.open()
    executor = ManualExecutor(slots)
    core = build_core(
        Config(socket="/nonexistent/pyrexis-test.sock", db=path, threads=slots, **config),
        store, registry or make_registry(), {"thread": executor}, clock, window, daemon_uid=DAEMON_UID,
    )  # fmt: skip
    try:
        await core.load()
        await core.dispatch.start()
        yield CoreHarness(core, store, clock, executor, path)
    finally:
        core.stop_taking_work()
        core.ledger.fail_waiters()
        await core.dispatch.close()
        await store.close()
