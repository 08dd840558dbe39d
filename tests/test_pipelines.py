"""Pipelines on a real daemon: stages in every mode, fan-out, batching, backpressure,
item errors, cancel and timeout, files in and out, bad specs.

Durability (kill -9 and restarts) and memory with a million items are in
test_pipeline_durability.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import ROOT, Daemon, RawClient, expect_error, require_alive, shared_daemon, wait_until
from e2e_helpers import metric_values, wait_terminal

ARGS = ("--tasks", "pipeline_tasks", "--kill-grace", "2")


@pytest.fixture(scope="module")
def shared() -> Iterator[Daemon]:
    yield from shared_daemon("pxpl", ARGS)


@pytest.fixture
def c(shared: Daemon) -> Iterator[RawClient]:
    require_alive(shared)
    with shared.client() as client:
        yield client


def run(c: RawClient, spec: dict[str, Any], **job: Any) -> dict[str, Any]:
    """Submit a pipeline (``job``: the job's own fields) and wait for its end; the final record."""
    record = c.submit("pipeline", spec, **job)
    assert record["mode"] == "pipeline"
    return c.wait(record["job_id"], timeout=60)


def stored_outputs(c: RawClient, job_id: str) -> list[Any]:
    events, final = c.stream("outputs", {"job_id": job_id})
    assert final["ok"], final
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1))
    assert final["result"] == {"next": len(seqs) + 1}
    return [e["value"] for e in events]


def stage(record: dict[str, Any], index: int) -> dict[str, Any]:
    return record["pipeline"]["stages"][index]  # type: ignore[no-any-return]


# -- modes, fan-out, batching -------------------------------------------------------------

def test_a_pipeline_runs_stages_in_all_four_modes(c: RawClient) -> None:
    items = list(range(1, 21))
    spec = {
        "input": {"items": items},
        "stages": [
            {"task": "double", "mode": "process", "concurrency": 2},
            {"task": "double", "mode": "thread", "concurrency": 3},
            {"task": "add_async", "args": {"n": 1}},
            # The item is one JSON line on stdin; each line it prints is one JSON result.
            {"task": "shell", "args": {"cmd": "read x; echo $((x * 10))"}, "concurrency": 2},
        ],
    }
    done = run(c, spec)
    assert done["status"] == "completed", done
    assert sorted(stored_outputs(c, done["job_id"])) == sorted((4 * x + 1) * 10 for x in items)
    assert done["result"] == {"items": 20, "done": 20, "errors": 0, "outputs": 20, "output": None}
    modes = [s["mode"] for s in done["pipeline"]["stages"]]
    assert modes == ["process", "thread", "async", "shell"]
    for s in done["pipeline"]["stages"]:
        assert (s["items_in"], s["items_out"], s["errors"], s["contiguous"]) == (20, 20, 0, 20), s
        assert s["calls"] == 20 and s["busy"] > 0 and s["p50"] is not None and s["p99"] >= s["p50"]
    assert done["progress"]["fraction"] == 1.0


def test_generators_fan_out_and_none_drops_an_item(c: RawClient) -> None:
    spec = {
        "input": {"items": [0, 1, 2, 3]},
        "stages": [
            {"task": "fan_out", "mode": "process"},  # x copies of x: 0 drops the item
            {"task": "keep_even"},  # None for odd values: dropped
            {"task": "fan_out_async"},  # two values per item
        ],
    }
    done = run(c, spec)
    assert done["status"] == "completed", done
    assert sorted(stored_outputs(c, done["job_id"])) == sorted(["2a", "2b"] * 2)
    first, second, third = done["pipeline"]["stages"]
    assert (first["items_in"], first["items_out"]) == (4, 6)  # 0 + 1 + 2 + 3
    assert (second["items_in"], second["items_out"]) == (6, 2)
    assert (third["items_in"], third["items_out"]) == (2, 4)
    assert done["pipeline"]["items"]["done"] == 4


def test_a_shell_stage_fans_out_one_json_line_per_output_and_batches(c: RawClient) -> None:
    spec = {
        "input": {"items": [{"n": 1}, {"n": 2}, {"n": 3}]},
        "stages": [
            # One item on stdin as a JSON line; one result per line written.
            {"task": "shell", "args": {"cmd": "sed 's/.*\"n\": *\\([0-9]*\\).*/\\1/' | while read n; do echo $n; echo \"\\\"x$n\\\"\"; done"}},
            # A batch: its items as JSON lines on stdin, one result line each.
            {"task": "shell", "args": {"cmd": "while read v; do echo \"[$v]\"; done"}, "batch": 4},
        ],
    }
    done = run(c, spec)
    assert done["status"] == "completed", done
    assert sorted(map(json.dumps, stored_outputs(c, done["job_id"]))) == sorted(
        json.dumps([v]) for v in (1, 2, 3, "x1", "x2", "x3")
    )
    assert stage(done, 1)["calls"] == 2  # 6 items in batches of 4: 4 + 2


def test_batches_take_batch_items_or_what_arrived_within_the_window(c: RawClient) -> None:
    by_size = run(c, {"input": {"items": list(range(10))}, "stages": [{"task": "batch_sum", "batch": 4}]})
    assert by_size["status"] == "completed", by_size
    # batch_sum gives i * 1000 + the size of its batch.
    sizes = Counter(v % 1000 for v in stored_outputs(c, by_size["job_id"]))
    assert sizes == Counter({4: 8, 2: 2})
    assert stage(by_size, 0)["calls"] == 3
    # Items trickle in (one every 50 ms): a window of 0.3 s closes batches long before 100.
    by_window = run(c, {
        "input": {"items": list(range(12))},
        "stages": [{"task": "slow_async", "args": {"seconds": 0.05}},
                   {"task": "batch_sum", "batch": 100, "window": 0.3}],
    })  # fmt: skip
    assert by_window["status"] == "completed", by_window
    values = stored_outputs(c, by_window["job_id"])
    assert sorted(v // 1000 for v in values) == list(range(12))
    assert max(v % 1000 for v in values) < 12
    assert stage(by_window, 1)["calls"] >= 2


# -- backpressure, cancel, timeout, stats --------------------------------------------------

def test_a_slow_last_stage_keeps_every_queue_at_its_bound_until_cancelled(c: RawClient, shared: Daemon) -> None:
    marks = os.path.join(shared.workdir, "slow-side-effects")
    spec = {
        "input": {"items": list(range(5000))},
        "stages": [
            {"task": "double", "buffer": 7},
            {"task": "add_async", "buffer": 5},
            {"task": "record", "args": {"path": marks, "seconds": 0.05}, "buffer": 3},
        ],
    }
    job = c.submit("pipeline", spec)

    def full() -> dict[str, Any] | None:
        record = c.get(job["job_id"])
        stages = (record["pipeline"] or {}).get("stages") or []
        if stages and all(s["queue"] == s["buffer"] for s in stages):
            return record
        return None

    record = wait_until(full, 60, 0.05, "every queue at its bound")
    first = stage(record, 0)
    # The reader ran only as far as the bounds let it: nowhere near the 5000 items.
    in_memory = sum(s["buffer"] + s["concurrency"] for s in record["pipeline"]["stages"])
    assert first["items_in"] <= record["pipeline"]["items"]["done"] + in_memory + 2, record["pipeline"]
    assert record["pipeline"]["items"]["read"] < 200
    # stats shows the running pipeline's stages; pyrexisctl status shows its table.
    running = c.request("stats")["pipelines"]
    assert [s["name"] for s in running[job["job_id"]]["stages"]] == ["double", "add_async", "record"]
    # So do the metrics, summed by stage task (no job id as a label).
    metrics = metric_values(c.request("metrics")["text"])
    assert metrics["pyrexis_pipelines_running"] == [({}, 1.0)]
    assert ({"task": "record"}, 3.0) in metrics["pyrexis_pipeline_stage_queued"]
    shown = subprocess.run(
        [sys.executable, "-m", "pyrexisctl", "--socket", shared.socket, "status", job["job_id"]],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "STAGE" in shown.stdout and "record" in shown.stdout and "3/3" in shown.stdout

    cancelled = c.request("cancel", {"job_id": job["job_id"]})
    assert cancelled["status"] == "cancelled"
    # Every stage stopped: the side effects stop growing (one call may be finishing).
    def lines() -> int:
        with open(marks) as fh:
            return sum(1 for _ in fh)

    def settled() -> int | None:
        before = lines()
        wait_until(lambda: True, 0.3, 0.3)
        return before if lines() == before else None

    stopped_at = wait_until(settled, 30, 0.1, "the last stage to stop")
    assert stopped_at < 5000
    final = c.get(job["job_id"])
    assert final["status"] == "cancelled" and final["error"]["type"] == "cancelled"
    assert job["job_id"] not in c.request("stats")["pipelines"]


def test_a_timeout_stops_every_stage(c: RawClient) -> None:
    spec = {"input": {"items": list(range(1000))}, "stages": [{"task": "slow_async", "args": {"seconds": 0.05}}]}
    done = run(c, spec, timeout=1.0)
    assert done["status"] == "failed", done
    assert done["error"]["type"] == "timeout"
    assert done["pipeline"]["items"]["done"] < 1000


# -- item errors ---------------------------------------------------------------------------

def test_item_errors_are_skipped_and_counted_with_their_input_index(c: RawClient) -> None:
    spec = {
        "input": {"items": list(range(10))},
        "stages": [{"task": "double"}, {"task": "fail_on", "args": {"bad": [6, 14]}}],
        "on_item_error": "skip",
    }
    done = run(c, spec)
    assert done["status"] == "completed", done
    assert sorted(stored_outputs(c, done["job_id"])) == [0, 2, 4, 8, 10, 12, 16, 18]
    errors = done["pipeline"]["errors"]
    assert [(e["index"], e["stage"]) for e in errors] == [(3, 1), (7, 1)]
    assert "bad item 6" in errors[0]["message"]
    assert done["result"]["errors"] == 2 and done["pipeline"]["items"]["done"] == 10
    assert stage(done, 1)["errors"] == 2
    events, _ = c.stream("logs", {"job_id": done["job_id"]})
    assert any("item 3 failed in stage 1 (fail_on)" in e["line"] for e in events)


def test_a_failed_item_fails_the_pipeline_by_default_after_its_retries(c: RawClient, shared: Daemon) -> None:
    spec = {"input": {"items": list(range(5))}, "stages": [{"task": "fail_on", "args": {"bad": [3]}, "retries": 2, "retry_delay": 0.01}]}
    done = run(c, spec)
    assert done["status"] == "failed", done
    assert done["error"]["type"] == "exception" and not done["error"]["retryable"]
    assert "item 3 failed in stage 0 (fail_on)" in done["error"]["message"]
    assert stage(done, 0)["retries"] == 2
    assert [e["index"] for e in done["pipeline"]["errors"]] == [3]
    # A stage's retries make a flaky item succeed.
    marks = os.path.join(shared.workdir, "flaky-marks")
    os.makedirs(marks, exist_ok=True)
    flaky = run(c, {"input": {"items": [1, 2, 3]}, "stages": [{"task": "flaky", "args": {"marks": marks}, "retries": 1, "retry_delay": 0}]})
    assert flaky["status"] == "completed", flaky
    assert sorted(stored_outputs(c, flaky["job_id"])) == [1, 2, 3]
    assert stage(flaky, 0)["retries"] == 3


def test_shell_stage_failures_are_item_errors(c: RawClient) -> None:
    spec = {
        "input": {"items": [1, 2, 3]},
        "stages": [{"task": "shell", "args": {"cmd": "read x; if [ $x = 2 ]; then exit 4; fi; if [ $x = 3 ]; then echo 'not json'; else echo $x; fi"}}],
        "on_item_error": "skip",
    }
    done = run(c, spec)
    assert done["status"] == "completed", done
    assert stored_outputs(c, done["job_id"]) == [1]
    messages = {e["index"]: e["message"] for e in done["pipeline"]["errors"]}
    assert "exited with code 4" in messages[1]
    assert "not one JSON value" in messages[2]


# -- files and other jobs ------------------------------------------------------------------

def test_jsonl_in_and_out_with_a_bad_line(c: RawClient, shared: Daemon) -> None:
    source = os.path.join(shared.workdir, "in.jsonl")
    target = os.path.join(shared.workdir, "out.jsonl")
    with open(source, "w") as fh:
        fh.write('1\n2\n\n{"not json"\n3\n4\n')
    spec = {"input": {"path": source}, "output": target, "stages": [{"task": "double"}], "on_item_error": "skip"}
    done = run(c, spec)
    assert done["status"] == "completed", done
    with open(target) as fh:
        assert sorted(json.loads(line) for line in fh) == [2, 4, 6, 8]
    assert done["result"] == {"items": 5, "done": 5, "errors": 1, "outputs": 4, "output": target}
    assert [(e["index"], e["stage"]) for e in done["pipeline"]["errors"]] == [(2, None)]
    assert stored_outputs(c, done["job_id"]) == []  # written to the file, not stored
    # A missing input fails the pipeline with a clear error.
    missing = run(c, {"input": {"path": source + ".gone"}, "stages": [{"task": "double"}]})
    assert missing["status"] == "failed" and "cannot open the input" in missing["error"]["message"]


def test_a_pipeline_reads_another_jobs_outputs_once_it_completed(c: RawClient) -> None:
    first = c.submit("pipeline", {"input": {"items": [1, 2, 3]}, "stages": [{"task": "slow_async", "args": {"seconds": 0.2}}]})
    second = c.submit("pipeline", {"input": {"job": first["job_id"]}, "stages": [{"task": "double"}]})
    assert second["depends_on"] == [first["job_id"]]
    done = c.wait(second["job_id"], timeout=60)
    assert done["status"] == "completed", done
    assert sorted(stored_outputs(c, second["job_id"])) == [2, 4, 6]
    assert wait_terminal(c, first["job_id"])["status"] == "completed"


# -- bad specs -----------------------------------------------------------------------------

BAD_SPECS: list[tuple[dict[str, Any], list[Any]]] = [
    ({"stages": [{"task": "double"}]}, ["args", "input"]),
    ({"input": {"items": [1]}, "stages": []}, ["args", "stages"]),
    ({"input": {"items": [1], "path": "/x"}, "stages": [{"task": "double"}]}, ["args", "input"]),
    ({"input": {"path": "in.jsonl"}, "stages": [{"task": "double"}]}, ["args"]),
    ({"input": {"items": [1]}, "stages": [{"task": "double", "concurency": 2}]}, ["args", "stages", 0, "concurency"]),
    ({"input": {"items": [1]}, "stages": [{"task": "double", "concurrency": 0}]}, ["args", "stages", 0, "concurrency"]),
    ({"input": {"items": [1]}, "stages": [{"task": "add_async", "mode": "thread"}]}, ["args", "stages", 0, "mode"]),
    ({"input": {"items": [1]}, "stages": [{"task": "fan_out", "batch": 2}]}, ["args", "stages", 0, "batch"]),
    ({"input": {"items": [1]}, "stages": [{"task": "batch_sum", "batch": 10, "buffer": 5}]}, ["args", "stages", 0, "buffer"]),
    ({"input": {"items": [1]}, "stages": [{"task": "record", "item": "x"}]}, ["args", "stages", 0, "args", "path"]),
    ({"input": {"items": [1]}, "stages": [{"task": "fail_on", "args": {"bad": "x"}}]}, ["args", "stages", 0, "args", "bad"]),
    ({"input": {"items": [1]}, "stages": [{"task": "double", "item": "y"}]}, ["args", "stages", 0, "item"]),
    ({"input": {"items": [1]}, "stages": [{"task": "shell", "args": {"cmd": ""}}]}, ["args", "stages", 0, "args", "cmd"]),
    ({"input": {"items": [1]}, "stages": [{"task": "double"}], "on_item_error": "ignore"}, ["args", "on_item_error"]),
]


@pytest.mark.parametrize(("spec", "loc"), BAD_SPECS)
def test_a_bad_pipeline_spec_is_refused_naming_the_field(c: RawClient, spec: dict[str, Any], loc: list[Any]) -> None:
    error = expect_error("invalid_request", lambda: c.submit("pipeline", spec))
    locs = [e["loc"] for e in error.details["errors"]]
    assert any(found[: len(loc)] == loc for found in locs), (locs, error.message)


def test_an_unknown_stage_task_is_unknown_task_and_nothing_is_accepted(c: RawClient) -> None:
    before = c.request("list", {"task": "pipeline", "limit": 10_000})["jobs"]
    error = expect_error("unknown_task", lambda: c.submit("pipeline", {"input": {"items": [1]}, "stages": [{"task": "nope"}]}))
    assert error.details["task"] == "nope"
    assert len(c.request("list", {"task": "pipeline", "limit": 10_000})["jobs"]) == len(before)


# -- the result cache, per item -------------------------------------------------------------

def test_a_cached_stage_task_runs_each_item_once_across_pipelines(c: RawClient, tmp_path: Any) -> None:
    """A stage whose task is declared ``cache=True`` asks the daemon's result cache per
    item: a second pipeline over the same items runs none of them again."""
    noted = tmp_path / "calls"
    spec = {"input": {"items": [1, 2, 3, 4]}, "stages": [{"task": "square_noted", "args": {"path": str(noted)}}]}
    first = run(c, spec)
    assert first["status"] == "completed", first
    assert sorted(noted.read_text().split()) == ["1", "2", "3", "4"]
    assert stage(first, 0)["cached"] == 0

    second = run(c, {**spec, "input": {"items": [3, 4, 5]}})
    assert second["status"] == "completed", second
    assert sorted(stored_outputs(c, second["job_id"])) == [9, 16, 25]
    assert sorted(noted.read_text().split()) == ["1", "2", "3", "4", "5"]  # only 5 ran
    assert stage(second, 0)["cached"] == 2
    (row,) = c.request("cache_stats", {"task": "square_noted"})["tasks"]
    assert row["hits"] == 2 and row["entries"] == 5, row
    metrics = metric_values(c.request("metrics")["text"])
    assert ({"task": "square_noted"}, 2.0) in metrics["pyrexis_cache_hits_total"]
    assert ({"task": "square_noted"}, 5.0) in metrics["pyrexis_cache_entries"]
