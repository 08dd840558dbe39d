"""Side by side in one daemon: N `echo` jobs in process mode, then in dask mode on a LocalCluster.

One daemon runs both (``--processes W --dask-local W``: W slots each, one worker process
per slot), so both modes share the same store, scheduler and machine in the same run.
Each round submits N jobs at once (``submit_many``) in one mode and waits for them all;
jobs/s is N over the span from the first job's creation to the last one's end, as the
daemon recorded them.

usage: python docs/perf/dask_vs_process.py [--n 2000] [--rounds 3] [--workers 2] [--dask-slots S]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

from pyrexisctl.client import Client, DaemonUnreachable


def wait_ready(socket_path: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited with {proc.returncode}")
        try:
            with Client(socket_path) as c:
                if c.stats().get("dask", {}).get("status") == "connected":
                    return
        except (DaemonUnreachable, OSError):
            pass
        time.sleep(0.1)
    raise SystemExit("the daemon or its cluster did not come up")


def run_round(c: Client, mode: str, n: int) -> float:
    jobs = c.submit_many([{"task": "echo", "args": {"value": i}, "mode": mode} for i in range(n)])
    ends = []
    for job in jobs:
        done = c.wait(job["job_id"], timeout=600)
        assert done["status"] == "completed", done
        ends.append(done["finished_at"])
    return n / (max(ends) - min(j["created_at"] for j in jobs))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dask-slots", type=int)
    opts = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="pxperf")
    socket_path = os.path.join(workdir, "s.sock")
    command = [
        sys.executable, "-m", "pyrexisd", "--socket", socket_path, "--db", os.path.join(workdir, "d.db"),
        "--log-level", "WARNING", "--processes", str(opts.workers), "--dask-local", str(opts.workers),
    ]
    if opts.dask_slots:
        command += ["--dask-slots", str(opts.dask_slots)]
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=open(os.path.join(workdir, "log"), "wb"))
    try:
        wait_ready(socket_path, proc)
        with Client(socket_path) as c:
            slots = c.stats()["slots"]
            for mode in ("process", "dask"):
                run_round(c, mode, 50)  # warm up: workers started, imports done
            rates: dict[str, list[float]] = {"process": [], "dask": []}
            for _ in range(opts.rounds):
                for mode in rates:
                    rates[mode].append(run_round(c, mode, opts.n))
        print(f"{opts.n} echo jobs per round, {opts.rounds} rounds; slots: process {slots['process']}, dask {slots['dask']}")
        for mode, values in rates.items():
            print(f"{mode:8} jobs/s: " + "  ".join(f"{v:7.0f}" for v in values) + f"   best {max(values):.0f}")
    finally:
        proc.terminate()
        proc.wait(60)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
