"""Time and peak memory of ``pyrexisctl submit --jsonl`` and ``pyrexisctl export`` over N jobs.

usage: python docs/perf/jsonl_memory.py VENV_PARENT N [N ...]

VENV_PARENT holds ``.venv/bin/pyrexisd`` and ``.venv/bin/pyrexisctl`` (a checkout). For
each N, a fresh daemon (``--sync normal``: the disk is not what is measured) gets a file
of N echo specs into a paused queue through ``submit --jsonl``, then ``export`` prints
them all to /dev/null. Prints each command's wall time and the peak RSS of the
``pyrexisctl`` process (``ru_maxrss`` of the child), and the daemon's RSS after each.
Flat client memory across N is the point: both commands hold one chunk or page at a time.
"""

import json
import os
import subprocess
import sys
import tempfile
import time


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def timed(cmd: list[str], stdin: str | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one child process run to its end."""
    start = time.perf_counter()
    with open(stdin or os.devnull, "rb") as src, open(os.devnull, "wb") as out:
        proc = subprocess.Popen(cmd, stdin=src, stdout=out, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{cmd[3:5]} failed")
    return elapsed, usage.ru_maxrss


def main() -> None:
    checkout, sizes = sys.argv[1], [int(n) for n in sys.argv[2:]]
    bin_dir = os.path.join(checkout, ".venv", "bin")
    for n in sizes:
        work = tempfile.mkdtemp(prefix="jsonl", dir="/tmp")
        sock = os.path.join(work, "s.sock")
        daemon = subprocess.Popen(
            [os.path.join(bin_dir, "pyrexisd"), "--socket", sock, "--db", os.path.join(work, "d.db"), "--sync", "normal"],
            stderr=open(os.path.join(work, "log"), "w"),
        )
        try:
            for _ in range(400):
                if os.path.exists(sock):
                    break
                time.sleep(0.05)
            ctl = [os.path.join(bin_dir, "pyrexisctl"), "--socket", sock]
            subprocess.run([*ctl, "pause", "q"], check=True, stdout=subprocess.DEVNULL)
            path = os.path.join(work, "jobs.jsonl")
            with open(path, "w") as fh:
                for i in range(n):
                    fh.write(json.dumps({"task": "echo", "args": {"value": i}, "queue": "q"}) + "\n")
            sub_s, sub_kib = timed([*ctl, "submit", "--jsonl", "-"], stdin=path)
            daemon_kib = rss_kib(daemon.pid)
            exp_s, exp_kib = timed([*ctl, "export", "--queue", "q"])
            print(
                f"n={n:>9,} submit --jsonl {sub_s:6.1f} s ({n / sub_s:7.0f}/s) peak {sub_kib / 1024:5.1f} MiB | "
                f"export {exp_s:6.1f} s ({n / exp_s:7.0f}/s) peak {exp_kib / 1024:5.1f} MiB | "
                f"daemon RSS {daemon_kib / 1024:6.1f} MiB",
                flush=True,
            )
        finally:
            daemon.terminate()
            daemon.wait(60)
            subprocess.run(["rm", "-rf", work], check=False)


if __name__ == "__main__":
    main()
