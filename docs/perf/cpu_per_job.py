"""A pyrexisd's throughput and per-thread CPU per job under one workload.

usage: python docs/perf/cpu_per_job.py VENV_PARENT serial|pipelined|pipelined:MODE N [daemon args...]

VENV_PARENT holds ``.venv/bin/pyrexisd`` (a checkout); the daemon runs with
``--threads 2`` on a fresh database. ``serial``: N submits one at a time, then N waits;
``pipelined``: ``submit_many`` of 256, then waits 256 in flight; ``queued``: ``submit_many``
of 5,000 into a paused queue (submit/s is the figure). Prints jobs/s, commits per
job (from ``stats``) and the CPU of the loop thread and of the others, from
``/proc/PID/task/TID/stat`` read around the timed part.
"""
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "shared" / "bench"))  # ../shared/bench
from wire import Conn  # noqa: E402


def threads(pid):
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            st = open(f"/proc/{pid}/task/{tid}/stat").read()
            name = open(f"/proc/{pid}/task/{tid}/comm").read().strip()
        except OSError:
            continue
        f = st.rsplit(")", 1)[1].split()
        out[int(tid)] = (name, (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK"))
    return out

d, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
extra = sys.argv[4:]
t = tempfile.mkdtemp(prefix="cpu", dir="/tmp")
sock = f"{t}/s.sock"
p = subprocess.Popen([f"{d}/.venv/bin/pyrexisd", "--socket", sock, "--db", f"{t}/d.db", "--threads", "2", *extra],
                     stderr=open(f"{t}/log", "w"))
for _ in range(200):
    if os.path.exists(sock):
        break
    time.sleep(0.05)
time.sleep(0.3)
c = Conn(sock, timeout=60)


def spec(i: int, m: str = "thread") -> dict[str, object]:
    return {"task": "echo", "args": {"value": i}, "mode": m}



# warm up
for i in range(200):
    c.call("wait", {"job_id": c.call("submit", spec(i))["job_id"]})
s0 = c.call("stats", {})["store"]
before = threads(p.pid)
t0 = time.perf_counter()
if mode == "serial":
    ids = [c.call("submit", spec(i))["job_id"] for i in range(n)]
    t_sub = time.perf_counter()
    mid = threads(p.pid)
    for j in ids:
        assert c.call("wait", {"job_id": j})["status"] == "completed"
elif mode == "queued":
    # Into a paused queue in batches of 5,000: admission and commit alone, nothing runs.
    mid = None
    c.call("pause", {"queue": "q"})
    t0 = time.perf_counter()
    for lo in range(0, n, 5000):
        c.call("submit_many", {"jobs": [{"task": "echo", "args": {"value": i}, "queue": "q"} for i in range(lo, min(n, lo + 5000))]})
    t_sub = time.perf_counter()
else:
    mid = None
    m = mode.split(":")[1] if ":" in mode else "thread"
    ids = []
    for lo in range(0, n, 256):
        ids += [j["job_id"] for j in c.call("submit_many", {"jobs": [spec(i, m) for i in range(lo, min(n, lo + 256))]})["jobs"]]
    t_sub = time.perf_counter()
    for lo in range(0, n, 256):
        rids = [c.request("wait", {"job_id": j}) for j in ids[lo:lo + 256]]
        for r in rids:
            assert c.response(r)["result"]["status"] == "completed"
t1 = time.perf_counter()
after = threads(p.pid)
s1 = c.call("stats", {})["store"]
commits = s1["commits"] - s0["commits"]
main = [tid for tid in after if tid == p.pid][0]
cpu = {}
for tid, (name, v) in after.items():
    b = before.get(tid, (name, 0.0))[1]
    key = "main" if tid == p.pid else name
    cpu[key] = cpu.get(key, 0.0) + (v - b)
c.close()
p.terminate()
p.wait()
tot = sum(cpu.values())
if mid:
    sub_main = mid[p.pid][1] - before[p.pid][1]
    sub_all = sum(v for _, v in mid.values()) - sum(v for _, v in before.values())
    extra = f" submit-phase main={1e6*sub_main/n:.0f} all={1e6*sub_all/n:.0f}"
else:
    extra = ""
print(f"{mode:10s} n={n} e2e/s={n/(t1-t0):7.0f} submit/s={n/(t_sub-t0):7.0f} commits/job={commits/n:.2f} "
      f"commit_ms={s1['commit_ms']:.2f} cpu_us/job main={1e6*cpu['main']/n:.0f} total={1e6*tot/n:.0f} "
      + " ".join(f"{k}={1e6*v/n:.0f}" for k, v in sorted(cpu.items()) if k != "main" and v > 0) + extra)
