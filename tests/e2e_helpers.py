"""Helpers shared by test_modes.py and test_durability.py (polling, pids, logs)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from conftest import RawClient, wait_until

TERMINAL = ("completed", "failed", "cancelled")


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a zombie has stopped running)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except FileNotFoundError:
        return False
    except OSError:
        pass
    else:
        # pid (comm) state ...: comm may hold spaces and parentheses, so split at the last ')'.
        state = stat.rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_pid_gone(pid: int, timeout: float = 10.0, what: str = "process") -> None:
    wait_until(lambda: not pid_alive(pid), timeout, 0.02, f"{what} {pid} to be gone")


def read_pid(path: str, timeout: float = 20.0) -> int:
    """Wait for a marker file holding a pid and return it."""

    def read() -> int | None:
        return read_marker(path)

    return wait_until(read, timeout, 0.02, f"a pid in {path}")  # type: ignore[no-any-return]


def kill_quietly(pid: int | None) -> None:
    """Clean-up of a process a test's job started (only by its exact pid)."""
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def wait_status(client: RawClient, job_id: str, statuses: str | tuple[str, ...], timeout: float = 15.0) -> dict[str, Any]:
    """Poll ``get`` until the job has one of ``statuses``; the record."""
    wanted = (statuses,) if isinstance(statuses, str) else statuses
    last: dict[str, Any] = {}

    def check() -> dict[str, Any] | None:
        nonlocal last
        last = client.get(job_id)
        return last if last["status"] in wanted else None

    try:
        return wait_until(check, timeout, 0.02, f"job {job_id} to be {'/'.join(wanted)}")  # type: ignore[no-any-return]
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last record: {last}") from None


def wait_terminal(client: RawClient, job_id: str, timeout: float = 15.0) -> dict[str, Any]:
    return wait_status(client, job_id, TERMINAL, timeout)


def job_logs(client: RawClient, job_id: str) -> list[dict[str, Any]]:
    """The stored log events of a job (``logs`` without ``follow``)."""
    events, final = client.stream("logs", {"job_id": job_id})
    assert final["ok"], final
    return [e for e in events if e.get("kind") == "log"]


def still_serving(client: RawClient) -> None:
    """The daemon answers and still runs jobs."""
    assert client.request("hello", {"protocol": 1})["protocol"] == 1
    job = client.submit("echo", {"value": "alive"})
    done = client.wait(job["job_id"], timeout=15)
    assert done["status"] == "completed", done
    assert done["result"] == "alive"


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start


def read_marker(path: str) -> int | None:
    """The pid a task wrote to ``path``, or None if it is not (fully) there yet."""
    try:
        with open(path) as fh:
            text = fh.read().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def rss_kib(pid: int) -> int:
    """The resident memory of process ``pid``, in KiB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def metric_values(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples by name, parsed back with prometheus-client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out
