"""Submits and round trips while one CPU-bound thread job runs beside them.

usage: python docs/perf/cpu_bound_neighbour.py [CHECKOUT ...] [--rounds 3]

For each round and checkout (a directory holding ``.venv/bin/pyrexisd``): a fresh daemon
with ``--threads 2`` and a task module holding ``burn`` (a thread task computing in
Python for 30 s); with one ``burn`` running, 300 ``hello`` round trips and 200 serial
``echo`` submits; their p50 and p90.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "shared" / "bench"))  # ../shared/bench
from wire import Conn  # noqa: E402

BURN = '''
import time
from pyrexisd import task

@task(name="burn", mode="thread", modes=["thread"])
def burn(seconds: float) -> int:
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += sum(range(100))
    return n
'''


def quantiles(times: list[float]) -> str:
    times.sort()
    return f"p50 {times[len(times) // 2] * 1e3:.2f} ms, p90 {times[int(len(times) * 0.9)] * 1e3:.2f} ms"


def one(checkout: str) -> str:
    wd = tempfile.mkdtemp(prefix="burn", dir="/tmp")
    Path(wd, "burn_tasks.py").write_text(BURN)
    sock = os.path.join(wd, "s.sock")
    env = dict(os.environ, PYTHONPATH=wd)
    proc = subprocess.Popen(
        [os.path.join(checkout, ".venv", "bin", "pyrexisd"), "--socket", sock, "--db", os.path.join(wd, "d.db"),
         "--threads", "2", "--tasks", "burn_tasks"],
        stderr=open(os.path.join(wd, "log"), "w"), env=env,
    )
    try:
        while not os.path.exists(sock):
            time.sleep(0.05)
        time.sleep(0.3)
        c = Conn(sock, timeout=60)
        c.call("submit", {"task": "burn", "args": {"seconds": 30}})
        time.sleep(0.2)
        hellos, submits = [], []
        for _ in range(300):
            t = time.perf_counter()
            c.call("hello", {"protocol": 1})
            hellos.append(time.perf_counter() - t)
        for i in range(200):
            t = time.perf_counter()
            c.call("submit", {"task": "echo", "args": {"value": i}})
            submits.append(time.perf_counter() - t)
        return f"hello {quantiles(hellos)}; submit {quantiles(submits)}"
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkouts", nargs="*", default=["."])
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    for r in range(a.rounds):
        for checkout in a.checkouts:
            print(f"round {r + 1} {checkout}: {one(checkout)}", flush=True)


if __name__ == "__main__":
    main()
