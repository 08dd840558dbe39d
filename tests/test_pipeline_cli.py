"""``pyrexisctl pipeline run``, ``pyrexisctl outputs`` and the client library's pipeline ops."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, Daemon, require_alive, shared_daemon
from test_cli import ENV

from protocol.errors import InvalidRequest
from pyrexisctl.aio import AsyncClient
from pyrexisctl.client import Client


@pytest.fixture(scope="module")
def shared() -> Iterator[Daemon]:
    yield from shared_daemon("pxpc", ("--tasks", "pipeline_tasks", "--kill-grace", "2"))


def ctl(daemon: Daemon, *args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    require_alive(daemon)
    return subprocess.run(
        [sys.executable, "-m", "pyrexisctl", "--socket", daemon.socket, *args],
        capture_output=True, text=True, env=ENV, timeout=60, cwd=cwd or ROOT, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_pipeline_run_reads_a_toml_file_and_shows_each_stage(shared: Daemon, tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text("".join(f"{i}\n" for i in range(6)))
    (tmp_path / "p.toml").write_text(
        'on_item_error = "skip"\n'
        '[input]\npath = "in.jsonl"\n'  # relative to the file's directory
        '[[stages]]\ntask = "double"\nmode = "process"\n'
        '[[stages]]\ntask = "fail_on"\nargs = { bad = [4] }\n'
        '[job]\nqueue = "pipes"\nlabels = { kind = "test" }\n'
    )
    proc = ctl(shared, "pipeline", "run", str(tmp_path / "p.toml"), "--wait")
    assert proc.returncode == 0, proc.stderr
    # Stored outputs go to stdout, one JSON value a line; the figures to stderr.
    assert sorted(json.loads(line) for line in proc.stdout.splitlines()) == [0, 2, 6, 8, 10]
    assert "STAGE" in proc.stderr and "fail_on" in proc.stderr and "1 errors" in proc.stderr
    job_id = proc.stderr.strip().splitlines()[-1].split()[0]
    record = json.loads(ctl(shared, "--json", "status", job_id).stdout)
    assert record["queue"] == "pipes" and record["labels"] == {"kind": "test"}
    assert record["args"]["input"]["path"] == str(tmp_path / "in.jsonl")
    shown = ctl(shared, "outputs", job_id)
    assert sorted(json.loads(line) for line in shown.stdout.splitlines()) == [0, 2, 6, 8, 10]
    events = [json.loads(line) for line in ctl(shared, "--json", "outputs", job_id, "--since", "3").stdout.splitlines()]
    assert [e["seq"] for e in events] == [3, 4, 5]


def test_pipeline_run_input_and_output_options_and_a_failed_pipeline(shared: Daemon, tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps({"input": {"items": [1]}, "stages": [{"task": "fail_on", "args": {"bad": [3]}}]}))
    (tmp_path / "other.jsonl").write_text("1\n2\n")
    proc = ctl(shared, "pipeline", "run", "p.json", "--input", "other.jsonl", "--output", "out.jsonl", "--wait", cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # the outputs went to the file
    assert (tmp_path / "out.jsonl").read_text().splitlines() == ["1", "2"]
    (tmp_path / "other.jsonl").write_text("1\n3\n")
    failed = ctl(shared, "pipeline", "run", "p.json", "--input", "other.jsonl", "--wait", cwd=str(tmp_path))
    assert failed.returncode == 3
    assert "item 1 failed in stage 0 (fail_on)" in failed.stderr


def test_pipeline_run_refuses_bad_files_and_specs_clearly(shared: Daemon, tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("stages = [\n")
    proc = ctl(shared, "pipeline", "run", str(tmp_path / "bad.toml"))
    assert proc.returncode == 2 and "not a valid TOML pipeline file" in proc.stderr
    proc = ctl(shared, "pipeline", "run", str(tmp_path / "missing.toml"))
    assert proc.returncode == 2 and "cannot read" in proc.stderr
    (tmp_path / "typo.toml").write_text('[input]\nitems = [1]\n[[stages]]\ntask = "double"\nconcurency = 2\n')
    proc = ctl(shared, "pipeline", "run", str(tmp_path / "typo.toml"))
    assert proc.returncode != 0 and "concurency" in proc.stderr


def test_the_client_library_submits_pipelines_and_reads_outputs(shared: Daemon) -> None:
    require_alive(shared)
    with Client(shared.socket) as client:
        assert "outputs" in client.hello()["ops"]
        record = client.submit_pipeline({"input": {"items": [1, 2, 3]}, "stages": [{"task": "double"}]}, queue="lib")
        assert record["queue"] == "lib" and record["task"] == "pipeline"
        done = client.wait(record["job_id"], timeout=60)
        assert done["status"] == "completed"
        page = client.outputs(record["job_id"])
        assert sorted(e["value"] for e in page["outputs"]) == [2, 4, 6] and page["next"] == 4
        assert [e["seq"] for e in client.follow_outputs(record["job_id"], since=2)] == [2, 3]
        with pytest.raises(InvalidRequest):
            client.submit_pipeline({"input": {"items": [1]}, "stages": []})

    async def follow() -> list[int]:
        async with AsyncClient(shared.socket) as aclient:
            job = await aclient.submit_pipeline({"input": {"items": [5, 6]}, "stages": [{"task": "slow_async", "args": {"seconds": 0.2}}]})
            stream = await aclient.follow_outputs(job["job_id"])
            return sorted([event["value"] async for event in stream])

    # Followed live: the outputs as they are committed, then the stream ends with the job.
    assert asyncio.run(follow()) == [5, 6]
    assert os.path.exists(shared.db)
