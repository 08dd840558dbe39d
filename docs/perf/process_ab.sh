#!/bin/bash
# Process mode beside thread mode, two checkouts alternated round by round (see
# docs/performance.md, PROCESS). usage: docs/perf/process_ab.sh BEFORE AFTER [ROUNDS]
# BEFORE and AFTER are checkouts, each with its own .venv. Each runs from its own
# directory: the forkserver's interpreter puts the working directory first on its path,
# so a daemon started elsewhere could give its workers another checkout's code.
set -u
before=$(realpath "$1") after=$(realpath "$2") rounds=${3:-2}
cpu=$(realpath "$(dirname "$0")")/cpu_per_job.py
# The wire client of ../shared/bench (SHARED_BENCH overrides where it is).
export PYTHONPATH=${SHARED_BENCH:-$(cd "$(dirname "$0")/../.." && pwd)/../shared/bench}
for round in $(seq 1 "$rounds"); do
  for tree in "$before" "$after"; do
    cd "$tree" || exit 1
    echo "=== round $round $tree $(date +%T)"
    .venv/bin/pyrexisctl bench --modes thread,process -n 3000 --serial-jobs 200 --sync full \
      --daemon-arg=--processes=2 --daemon-arg=--threads=2 2>&1 | grep '^pipelined'
    .venv/bin/python "$cpu" "$tree" pipelined:process 4000 --processes 2 </dev/null | tail -1
    .venv/bin/python "$cpu" "$tree" pipelined 4000 --processes 2 </dev/null | tail -1
  done
done
