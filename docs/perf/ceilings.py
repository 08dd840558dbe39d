"""What the durability invariants allow on this box, beside what the daemon reaches.

usage: python docs/perf/ceilings.py [--checkout DIR] [--rounds 2] [--n 2000]

Two invariants put commits on the path of every job (docs/architecture.md):
"durable before told" puts one commit between a submit and its answer, and "work starts
only after its running row is committed" puts one commit between two jobs of a slot. So,
with the daemon's own commit latency C of that workload (from ``stats``: hand-over,
statements, COMMIT, hand-back; a write's wait for its batch left out) and the socket's
round trip R (a ``hello``):

- serial (one client, each submit awaited): at most 1 / (R + C) submits/s;
- pipelined, S slots, jobs shorter than a commit: at most S / C jobs/s, however short the
  loop's own work;
- shell, S slots: at most S / (C + T) jobs/s, T being one ``true`` spawned and reaped
  (a bare ``subprocess.run`` loop on one thread).

Each bound is printed beside the rate reached in the same round, on a fresh daemon with
``--threads 2 --shell-slots 2`` (the peers' settings). The commit latency moves with the
load on the box, so read bound and rate of one round together.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "shared" / "bench"))  # ../shared/bench
from wire import Conn  # noqa: E402

COMMIT_PARTS = ("handover", "statements", "commit", "handback")


class Daemon:
    def __init__(self, checkout: str, wd: str) -> None:
        self.sock = os.path.join(wd, "d.sock")
        self.proc = subprocess.Popen(
            [os.path.join(checkout, ".venv", "bin", "pyrexisd"), "--socket", self.sock, "--db", os.path.join(wd, "d.db"),
             "--threads", "2", "--shell-slots", "2", "--log-level", "WARNING"],
            stderr=open(os.path.join(wd, "log"), "w"),
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.c = Conn(self.sock, timeout=120)
                self.c.call("hello", {"protocol": 1})
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def commit_sums(self) -> tuple[int, float]:
        """Commits so far and the seconds their hand-over, statements, COMMIT and hand-back took."""
        store = self.c.call("stats", {})["store"]
        n = store["commits"]
        return n, n * sum(store["commit_split_ms"][k] for k in COMMIT_PARTS) / 1000.0

    def close(self) -> None:
        self.c.close()
        self.proc.terminate()
        self.proc.wait(30)


def measured(d: Daemon, work: Callable[[], int]) -> tuple[float, float]:
    """``work``'s jobs per second and the mean commit latency while it ran."""
    n0, s0 = d.commit_sums()
    t0 = time.perf_counter()
    jobs = work()
    rate = jobs / (time.perf_counter() - t0)
    n1, s1 = d.commit_sums()
    return rate, (s1 - s0) / max(1, n1 - n0)


def round_trip(c: Conn, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        c.call("hello", {"protocol": 1})
        times.append(time.perf_counter() - t)
    return sorted(times)[n // 2]


def serial(c: Conn, n: int) -> int:
    ids = [c.call("submit", {"task": "echo", "args": {"value": i}})["job_id"] for i in range(n)]
    assert all(c.call("wait", {"job_id": j})["status"] == "completed" for j in ids)
    return n


def pipelined(c: Conn, specs: list[dict[str, Any]]) -> int:
    ids: list[str] = []
    for lo in range(0, len(specs), 256):
        ids += [j["job_id"] for j in c.call("submit_many", {"jobs": specs[lo : lo + 256]})["jobs"]]
    for lo in range(0, len(ids), 256):
        rids = [c.request("wait", {"job_id": j, "timeout": 120}) for j in ids[lo : lo + 256]]
        assert all(c.response(r)["result"]["status"] == "completed" for r in rids)
    return len(specs)


def bare_true(n: int) -> float:
    """Seconds per ``true`` spawned and reaped, one at a time."""
    t0 = time.perf_counter()
    for _ in range(n):
        subprocess.run(["true"], check=True)
    return (time.perf_counter() - t0) / n


def one_round(checkout: str, n: int) -> list[tuple[str, float, float, float]]:
    wd = tempfile.mkdtemp(prefix="ceil", dir="/tmp")
    d = Daemon(checkout, wd)
    try:
        c = d.c
        pipelined(c, [{"task": "echo", "args": {"value": i}} for i in range(200)])  # warm up
        rtt = round_trip(c, 1000)
        rows = []
        rate, commit = measured(d, lambda: serial(c, n))
        rows.append(("serial e2e", rate, 1 / (rtt + commit), commit))
        rate, commit = measured(d, lambda: pipelined(c, [{"task": "echo", "args": {"value": i}} for i in range(2 * n)]))
        rows.append(("pipelined e2e", rate, 2 / commit, commit))
        shells = max(100, n // 4)
        true_s = bare_true(shells)
        rate, commit = measured(d, lambda: pipelined(c, [{"task": "shell", "args": {"cmd": ["true"]}}] * shells))
        rows.append(("shell e2e", rate, 2 / (commit + true_s), commit))
        rows.append(("(round trip, one true)", rtt * 1e6, true_s * 1e6, 0.0))
        return rows
    finally:
        d.close()
        shutil.rmtree(wd, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkout", default=".")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--n", type=int, default=2000)
    a = ap.parse_args()
    for r in range(a.rounds):
        print(f"round {r + 1}")
        for name, rate, bound, commit in one_round(a.checkout, a.n):
            if commit:
                print(f"  {name:14s} {rate:7.0f}/s   bound {bound:7.0f}/s   reached {rate / bound:4.2f} of it"
                      f"   commit {commit * 1e3:.3f} ms")
            else:
                print(f"  round trip {rate:.0f} µs, one true {bound:.0f} µs")


if __name__ == "__main__":
    main()
