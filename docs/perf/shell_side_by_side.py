"""Side-by-side: 500 x `true` as a bare subprocess loop, task-spooler and pyrexisd shell jobs.

usage: python docs/perf/shell_side_by_side.py [--rounds 3] [--n 500] name=/path/to/venv/bin ...
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "shared" / "bench"))  # ../shared/bench
from wire import Conn  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def bare(n: int, threads: int) -> float:
    t0 = time.perf_counter()
    if threads == 1:
        for _ in range(n):
            subprocess.run(["true"], check=True)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda _: subprocess.run(["true"], check=True), range(n)))
    return n / (time.perf_counter() - t0)


def tsp(n: int, wd: str) -> float:
    sock = os.path.join(wd, "tsp.sock")
    env = dict(os.environ, TS_SOCKET=sock, TMPDIR=wd, TS_MAXFINISHED="100000", TS_SLOTS="2")
    run = lambda *a: subprocess.run(["tsp", *a], env=env, capture_output=True, text=True)  # noqa: E731
    run("-S", "2")
    try:
        for _ in range(10):
            run("true")
        run("-w")
        run("-C")
        t0 = time.perf_counter()
        ids = [run("true").stdout.strip() for _ in range(n)]
        run("-w", ids[-1])
        while True:
            rows = [ln.split() for ln in run("-l").stdout.splitlines()[1:] if ln.strip()]
            st = {r[0]: r for r in rows}
            if all(i in st and st[i][1] == "finished" for i in ids):
                break
            time.sleep(0.005)
        dt = time.perf_counter() - t0
        assert all(st[i][3] == "0" for i in ids)
        return n / dt
    finally:
        run("-K")


def cpu_ticks(pid: int, tid: int | None = None) -> int:
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    with open(path, "rb") as fh:
        data = fh.read()
    f = data[data.rfind(b")") + 2 :].split()
    return int(f[11]) + int(f[12])  # utime + stime (fields 14, 15)


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:
        return []


def pyrexis(n: int, wd: str, bindir: str, tag: str) -> tuple[float, float, float, float]:
    sock = os.path.join(wd, f"{tag}.sock")
    db = os.path.join(wd, f"{tag}.db")
    log = open(os.path.join(wd, f"{tag}.log"), "w")
    proc = subprocess.Popen([os.path.join(bindir, "pyrexisd"), "--socket", sock, "--db", db, "--shell-slots", "2",
                             "--log-level", "WARNING"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                c = Conn(sock, timeout=120)
                c.call("hello", {"protocol": 1})
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        spec = {"task": "shell", "args": {"cmd": ["true"]}}

        def batch(count: int) -> None:
            ids: list[str] = []
            for lo in range(0, count, 256):
                jobs = c.call("submit_many", {"jobs": [spec] * min(256, count - lo)})
                ids += [j["job_id"] for j in jobs["jobs"]]
            rids = [c.request("wait", {"job_id": j, "timeout": 120}) for j in ids]
            for rid in rids:
                rec = c.response(rid)["result"]
                assert rec["status"] == "completed" and rec["result"]["exit_code"] == 0, rec

        batch(20)  # warm-up
        helpers = [p for p in children(proc.pid)]
        loop0, all0 = cpu_ticks(proc.pid, proc.pid), cpu_ticks(proc.pid)
        help0 = sum(cpu_ticks(h) for h in helpers if os.path.exists(f"/proc/{h}"))
        t0 = time.perf_counter()
        batch(n)
        dt = time.perf_counter() - t0
        loop1, all1 = cpu_ticks(proc.pid, proc.pid), cpu_ticks(proc.pid)
        help1 = sum(cpu_ticks(h) for h in helpers if os.path.exists(f"/proc/{h}"))
        c.close()
        per = 1000.0 / TICK / n
        return n / dt, (loop1 - loop0) * per, (all1 - all0) * per, (help1 - help0) * per
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--skip-tsp", action="store_true")
    ap.add_argument("daemons", nargs="*")
    a = ap.parse_args()
    daemons = [d.split("=", 1) for d in a.daemons]
    results: dict[str, list[float]] = {}
    cpu: dict[str, list[tuple[float, float, float]]] = {}
    for r in range(a.rounds):
        wd = tempfile.mkdtemp(prefix="sb", dir="/tmp")
        try:
            order = daemons if r % 2 == 0 else daemons[::-1]
            results.setdefault("bare-1t", []).append(bare(a.n, 1))
            results.setdefault("bare-2t", []).append(bare(a.n, 2))
            if not a.skip_tsp:
                results.setdefault("task-spooler", []).append(tsp(a.n, wd))
            for name, bindir in order:
                rate, loop_ms, all_ms, helper_ms = pyrexis(a.n, wd, bindir, f"{name}{r}")
                results.setdefault(name, []).append(rate)
                cpu.setdefault(name, []).append((loop_ms, all_ms, helper_ms))
        finally:
            shutil.rmtree(wd, ignore_errors=True)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in results.items()), flush=True)
    print()
    med = {k: sorted(v)[len(v) // 2] for k, v in results.items()}
    for k, v in results.items():
        line = f"{k:14s} median {med[k]:7.0f} jobs/s  rounds {' '.join(f'{x:.0f}' for x in v)}"
        line += f"   x bare-2t {med[k] / med['bare-2t']:.2f}"
        if "task-spooler" in med:
            line += f"   x tsp {med[k] / med['task-spooler']:.1f}"
        print(line)
        if k in cpu:
            c = cpu[k]
            print(f"{'':14s} per job: loop thread {sorted(x[0] for x in c)[len(c)//2]:.3f} ms, "
                  f"daemon all threads {sorted(x[1] for x in c)[len(c)//2]:.3f} ms, "
                  f"daemon children {sorted(x[2] for x in c)[len(c)//2]:.3f} ms")


if __name__ == "__main__":
    main()
