#!/bin/bash
# submit_many of 5,000 into a paused queue, two checkouts alternated round by round (see
# docs/performance.md, QUEUED). usage: docs/perf/queued_ab.sh BEFORE AFTER [ROUNDS] [N]
# BEFORE and AFTER are checkouts, each with its own .venv. Prints, per run, submit/s and
# the daemon's CPU per job by thread (main: the event loop; pyrexisd: aiosqlite's
# writer, which carries the inserts and the commit), then the medians per checkout.
set -u
before=$(realpath "$1") after=$(realpath "$2") rounds=${3:-3} n=${4:-50000}
cpu=$(realpath "$(dirname "$0")")/cpu_per_job.py
# The wire client of ../shared/bench (SHARED_BENCH overrides where it is).
export PYTHONPATH=${SHARED_BENCH:-$(cd "$(dirname "$0")/../.." && pwd)/../shared/bench}
out=$(mktemp)
for round in $(seq 1 "$rounds"); do
  for tree in "$before" "$after"; do
    cd "$tree" || exit 1
    line=$(.venv/bin/python "$cpu" "$tree" queued "$n" </dev/null | tail -1)
    echo "round $round $tree $line" | tee -a "$out"
  done
done
python3 - "$out" "$before" "$after" <<'PY'
import re, statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
for tree in sys.argv[2:]:
    runs = [dict(re.findall(r"(\S+)=\s*(\S+)", " ".join(r[3:]))) for r in rows if r[2] == tree]
    med = {k: statistics.median(float(r[k]) for r in runs) for k in ("submit/s", "main", "total")}
    print(f"median {tree}: submit/s={med['submit/s']:.0f} cpu_us/job main={med['main']:.0f} total={med['total']:.0f}")
PY
rm -f "$out"
