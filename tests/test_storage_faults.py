"""Storage faults, end to end: a full disk (a file-size limit), a database locked by
another process, an unusable database path, and two daemons on one database.

Every test runs a real ``pyrexisd`` subprocess on a real SQLite file. Sessions and CI run
as root, so chmod cannot make a file unwritable: a full disk is a lowered RLIMIT_FSIZE
of the daemon's process (the daemon ignores SIGXFSZ, so a write past the limit fails with
EFBIG instead of killing it). Only the soft limit is lowered: raising a hard limit again
needs CAP_SYS_RESOURCE, which containers often lack, while the soft limit alone is what
the kernel enforces.
"""

from __future__ import annotations

import os
import resource
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import ROOT, Daemon, wait_until
from e2e_helpers import (
    Stopwatch,
    kill_quietly,
    read_pid,
    still_serving,
    wait_status,
)

from protocol.errors import WireError

TASKS = ("--tasks", "sample_tasks", "--kill-grace", "1")


class PipedDaemon(Daemon):
    """A daemon whose stderr goes through a pipe that the test copies to ``daemon.log``.

    A file-size limit applies to every file the limited process writes, its log file
    included: logging into a pipe keeps the daemon's own log lines while it is "full".
    """

    def start(self, wait: bool = True) -> PipedDaemon:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
        )
        if self.env:
            env.update(self.env)
        proc = subprocess.Popen(
            self.command(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
            env=env,
        )
        self.proc = proc
        out = open(self.log_path, "ab")  # noqa: SIM115 - closed by the copying thread

        def copy() -> None:
            assert proc.stdout is not None
            with out:
                for chunk in iter(lambda: proc.stdout.read1(1 << 16), b""):  # type: ignore[union-attr]
                    out.write(chunk)
                    out.flush()

        threading.Thread(target=copy, name="daemon-log", daemon=True).start()
        if wait:
            self.wait_ready()
        return self


@pytest.fixture
def piped_daemon(workdir: str) -> Iterator[Callable[..., PipedDaemon]]:
    started: list[PipedDaemon] = []

    def start(*args: str) -> PipedDaemon:
        d = PipedDaemon(workdir, args)
        started.append(d)
        return d.start()

    yield start
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(10)


def _db_files(d: Daemon) -> dict[str, int]:
    folder = os.path.dirname(d.db)
    base = os.path.basename(d.db)
    return {
        name: os.path.getsize(os.path.join(folder, name))
        for name in sorted(os.listdir(folder))
        if name.startswith(base)
    }


def _errors(d: Daemon) -> list[str]:
    return [ln for ln in d.log().splitlines() if " ERROR " in ln or " WARNING " in ln]


def _integrity(db: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()


# == disk full ============================================================================
def test_disk_full_by_file_size_limit(piped_daemon: Callable[..., PipedDaemon]) -> None:
    d = piped_daemon(*TASKS, "--log-level", "INFO")
    acked: list[str] = []
    refused: list[str] = []
    with d.client() as c:
        for i in range(5):
            job = c.submit("echo", {"value": i}, job_id=f"pre-{i}")
            assert c.wait(job["job_id"], timeout=15)["status"] == "completed"
            acked.append(job["job_id"])
        before = _db_files(d)
        assert "d.db" in before and "d.db-wal" in before, f"expected a WAL database: {before}"
        limit = max(before["d.db"], before["d.db-wal"]) + 1024 * 1024
        soft, hard = resource.prlimit(d.pid, resource.RLIMIT_FSIZE)
        assert soft == resource.RLIM_INFINITY
        resource.prlimit(d.pid, resource.RLIMIT_FSIZE, (limit, hard))
        full_since = time.monotonic()
        try:
            # Jobs that end while the disk is full: their end must wait for the disk.
            for i in range(3):
                acked.append(c.submit("sleep", {"seconds": 0.3}, job_id=f"nap-{i}")["job_id"])
            first_error: WireError | None = None
            watch = Stopwatch()
            for i in range(5000):
                job_id = f"fill-{i}"
                try:
                    c.submit("echo", {"value": "x" * 2000}, job_id=job_id)
                except WireError as exc:
                    assert exc.code == "storage_error", (exc.code, exc.message)
                    first_error = exc
                    refused.append(job_id)
                    break
                acked.append(job_id)
                assert watch.elapsed < 60, "the limit is never reached"
            assert first_error is not None, f"5000 submits fit under a limit of {limit} bytes"
            fills = i
            # The limit is a cliff for each write, not a full disk: a smaller commit may
            # still fit after a bigger one failed. Small submits until 3 refusals in a row.
            small_after_first_error = 0
            in_a_row = 0
            for i in range(300):
                job_id = f"small-{i}"
                try:
                    c.submit("echo", {"value": i}, job_id=job_id)
                except WireError as exc:
                    assert exc.code == "storage_error", (exc.code, exc.message)
                    refused.append(job_id)
                    in_a_row += 1
                    if in_a_row == 3:
                        break
                    continue
                acked.append(job_id)
                small_after_first_error += 1
                in_a_row = 0
            assert in_a_row == 3, "small submits never stop fitting"
            filled = _db_files(d)
            with pytest.raises(WireError) as info:
                c.request(
                    "submit_many",
                    {"jobs": [{"task": "echo", "args": {"value": 1}, "job_id": "full-many"}]},
                )
            assert info.value.code == "storage_error"
            refused.append("full-many")
            # Reads still work while full.
            assert c.get(acked[0])["status"] == "completed"
            assert c.request("list", {"limit": 5})["jobs"]
            stats = c.request("stats")
            assert sum(stats["by_status"].values()) >= len(acked)
            assert c.request("tasks")["tasks"]
            time.sleep(max(0.0, 1.0 - (time.monotonic() - full_since)))  # the naps are over by now
            naps_while_full = [c.get(f"nap-{i}")["status"] for i in range(3)]
            assert d.proc is not None and d.proc.poll() is None, (
                "the daemon died of the file-size limit"
            )
        finally:
            resource.prlimit(d.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, hard))
        # It recovers by itself: new submits succeed, pending ends are committed.
        watch = Stopwatch()
        job = c.submit("echo", {"value": "after"}, job_id="after-full")
        acked.append(job["job_id"])
        recovered_in = watch.elapsed
        assert c.wait("after-full", timeout=15)["result"] == "after"
        for job_id in acked:
            rec = c.wait(job_id, timeout=30)
            assert rec["status"] == "completed", rec
        for job_id in refused:
            with pytest.raises(WireError) as info:
                c.get(job_id)
            assert info.value.code == "not_found", (
                f"{job_id} was refused with storage_error, yet it is stored"
            )
        still_serving(c)
    errors = _errors(d)
    d.kill9()
    d.restart()
    with d.client() as c:
        for job_id in acked:
            rec = c.wait(job_id, timeout=30)
            assert rec["status"] == "completed", rec
        for job_id in refused:
            with pytest.raises(WireError):
                c.get(job_id)
    assert d.terminate(30) == 0
    assert _integrity(d.db) == [("ok",)]
    print(
        f"\n[disk full] limit={limit} B over files {before}; {fills} fills of 2 KB acknowledged, then "
        f"storage_error {first_error.message!r}; then {small_after_first_error} small submits still fit; "
        f"files when full {filled}; naps while full {naps_while_full}; "
        f"first submit after raising the limit took {recovered_in * 1000:.0f} ms; "
        f"{len(errors)} error/warning lines, e.g. {errors[:2]}",
        flush=True,
    )


# == a database locked by another process ================================================
def test_database_locked_by_another_process(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(*TASKS, "--log-level", "INFO")
    acked: list[str] = []
    with d.client() as c:
        for i in range(5):
            acked.append(c.submit("echo", {"value": i}, job_id=f"pre-{i}")["job_id"])
        for job_id in acked:
            assert c.wait(job_id, timeout=15)["status"] == "completed"
        holder = sqlite3.connect(d.db, isolation_level=None, timeout=1)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            watch = Stopwatch()
            with pytest.raises(WireError) as info:
                c.submit("echo", {"value": "locked"}, job_id="locked-1")
            refused_after = watch.elapsed
            refusal = info.value.message
            assert info.value.code == "storage_error", info.value
            assert "locked" in info.value.message or "busy" in info.value.message, (
                info.value.message
            )
            assert 4.5 <= refused_after <= 10, (
                f"storage_error after {refused_after:.2f} s, busy timeout is 5 s"
            )
            # Reads go on (WAL: a writer's lock does not block readers).
            watch = Stopwatch()
            assert c.get(acked[0])["status"] == "completed"
            assert len(c.request("list", {"limit": 10})["jobs"]) == 5
            c.request("stats")
            assert watch.elapsed < 1.0, f"reads took {watch.elapsed:.2f} s under the lock"
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        watch = Stopwatch()
        job = c.submit("echo", {"value": "free"}, job_id="after-lock")
        acked.append(job["job_id"])
        after = watch.elapsed
        assert after < 2, f"the first submit after the lock took {after:.2f} s"
        for job_id in acked:
            rec = c.wait(job_id, timeout=15)
            assert rec["status"] == "completed", rec
        with pytest.raises(WireError) as info:
            c.get("locked-1")
        assert info.value.code == "not_found"
        still_serving(c)
    print(
        f"\n[db locked] submit refused with storage_error after {refused_after:.2f} s "
        f"({refusal!r}); first submit after release {after * 1000:.0f} ms",
        flush=True,
    )
    assert d.terminate(30) == 0
    assert _integrity(d.db) == [("ok",)]


# == an unusable database path ===========================================================
@pytest.mark.parametrize("case", ["db-is-a-directory", "parent-is-a-file"])
def test_unusable_database_path_fails_start(
    start_daemon: Callable[..., Daemon], workdir: str, case: str
) -> None:
    if case == "db-is-a-directory":
        db = os.path.join(workdir, "bad", "d.db")
        os.makedirs(db)
        expect = "cannot open database"
    else:
        os.makedirs(os.path.join(workdir, "bad"))
        open(os.path.join(workdir, "bad", "file"), "w").close()
        db = os.path.join(workdir, "bad", "file", "d.db")
        expect = os.path.join(workdir, "bad", "file")
    d = start_daemon(*TASKS, db=db, subdir="run", wait=False)
    assert d.proc is not None
    rc = d.proc.wait(30)
    log = d.log()
    assert rc != 0, log
    assert not os.path.exists(d.socket), "a daemon that cannot start must not leave a socket"
    assert expect in log, log
    last = [ln for ln in log.splitlines() if ln.strip()][-1]
    # A clear message: one error line naming the path, as for the other start-up
    # refusals (lock held, socket in use), not a Python traceback.
    assert "Traceback" not in log, (
        f"rc={rc}; the daemon reports an unusable database path with a traceback; last line: {last!r}\n{log[-2500:]}"
    )
    assert rc == 1


# == two daemons, one database ===========================================================
def _refuses(d: Daemon, timeout: float = 15.0) -> tuple[bool, str]:
    assert d.proc is not None
    try:
        rc = d.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return False, "still running"
    return rc != 0, f"exit code {rc}"


def test_simultaneous_daemons_on_one_database(
    start_daemon: Callable[..., Daemon], workdir: str
) -> None:
    """Three daemons started at once, each with its own socket, one database: exactly one serves."""
    db = os.path.join(workdir, "shared", "d.db")
    os.makedirs(os.path.dirname(db))
    ds = [start_daemon(*TASKS, db=db, subdir=f"d{i}", wait=False) for i in range(3)]

    def settled() -> bool:
        alive = [d for d in ds if d.proc is not None and d.proc.poll() is None]
        return len(alive) == 1 and os.path.exists(alive[0].socket)

    wait_until(settled, 30, 0.05, "exactly one of three daemons to remain")
    winner = next(d for d in ds if d.proc is not None and d.proc.poll() is None)
    for d in ds:
        if d is not winner:
            assert d.proc is not None and d.proc.returncode != 0
            assert "another pyrexisd" in d.log() and db in d.log(), d.log()[-1500:]
            assert not os.path.exists(d.socket)
    with winner.client() as c:
        still_serving(c)
    # Once the holder is gone (even by kill -9), another daemon may take the database.
    winner.kill9()
    heir = start_daemon(*TASKS, db=db, subdir="heir")
    with heir.client() as c:
        assert c.request("list", {})["jobs"][0]["result"] == "alive"


@pytest.mark.parametrize("alias", ["symlink-to-file", "symlinked-directory", "hard-link"])
def test_second_daemon_through_another_path_of_the_same_database(
    start_daemon: Callable[..., Daemon], workdir: str, alias: str
) -> None:
    """The same database under another name must be refused as well: a second daemon on
    it would recover the first one's running jobs as interrupted and kill their processes."""
    first = start_daemon(*TASKS, subdir="first")
    marker = os.path.join(workdir, "victim.pid")
    victim = None
    try:
        with first.client() as c:
            job = c.submit("shell", {"cmd": f"echo $$ > {marker}; exec sleep 60"})
            victim = read_pid(marker)
            wait_status(c, job["job_id"], "running")
            time.sleep(0.3)  # its pid commit
            other_dir = os.path.join(workdir, "second")
            os.makedirs(other_dir)
            if alias == "symlink-to-file":
                db = os.path.join(other_dir, "alias.db")
                os.symlink(first.db, db)
            elif alias == "hard-link":
                db = os.path.join(other_dir, "alias.db")
                os.link(first.db, db)
            else:
                link = os.path.join(workdir, "first-link")
                os.symlink(os.path.dirname(first.db), link)
                db = os.path.join(link, os.path.basename(first.db))
            second = start_daemon(*TASKS, db=db, subdir="second", wait=False)
            refused, how = _refuses(second, 6)
            if not refused:
                rec = c.get(job["job_id"])
                harm = (
                    f"the first daemon's running shell job is now {rec['status']} "
                    f"({(rec['error'] or {}).get('type')}), its process alive={os.path.exists(f'/proc/{victim}')}"
                )
                second.kill9()
                pytest.fail(
                    f"a second daemon opened the same database through {alias} {db} ({how}); "
                    f"the lock file is {db}.lock, not {first.db}.lock. Harm: {harm}"
                )
            assert "another pyrexisd" in second.log(), second.log()[-1500:]
            assert c.get(job["job_id"])["status"] == "running"
            c.request("cancel", {"job_id": job["job_id"]})
    finally:
        kill_quietly(victim)
