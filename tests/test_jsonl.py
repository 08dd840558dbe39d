"""JSONL in and out: ``pyrexisctl submit --jsonl`` and ``pyrexisctl export``, as
subprocesses against a real daemon; the line format of ``protocol/jsonl.py``.

A file of job specs goes in chunk by chunk (each one atomic ``submit_many``); a bad line
is reported by its number and field, with nothing of its chunk accepted and exit 1;
``export`` streams the records back page by page, with the same specs in them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Daemon, RawClient, shared_daemon
from test_cli import ctl, ndjson, ok

from protocol import jsonl

SPEC_KEYS = (
    "task", "args", "job_id", "priority", "queue", "mode", "timeout", "max_retries",
    "dependency_policy", "labels", "on_interrupt", "depends_on",
)  # fmt: skip


@pytest.fixture(scope="module")
def shared() -> Iterator[Daemon]:
    yield from shared_daemon("pxjl", ("--tasks", "sample_tasks"))


@pytest.fixture
def c(shared: Daemon) -> Iterator[RawClient]:
    with shared.client() as client:
        yield client


def write_lines(workdir: str, name: str, lines: list[str]) -> str:
    path = os.path.join(workdir, name)
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def specs_for(batch: str, n: int) -> list[dict[str, Any]]:
    """``n`` varied specs into a paused queue (so nothing runs and they stay as sent)."""
    out: list[dict[str, Any]] = []
    for i in range(n):
        spec: dict[str, Any] = {
            "task": "echo",
            "args": {"value": {"i": i, "text": f"line {i}", "nested": [i, None, True]}},
            "job_id": f"{batch}-{i}",
            "queue": f"{batch}-q",
            "labels": {"batch": batch},
        }
        if i % 3 == 0:
            spec.update(priority=i, max_retries=2, timeout=30.0)
        if i % 4 == 1:
            spec.update(mode="process", on_interrupt="fail")
        if i % 5 == 2 and i > 0:
            spec.update(depends_on=[f"{batch}-{i - 1}"], dependency_policy="all_terminal")
        out.append(spec)
    return out


def test_a_file_of_specs_round_trips_through_submit_and_export(shared: Daemon, c: RawClient, workdir: str) -> None:
    """Given 25 job specs in a JSONL file, when it is submitted in chunks of 10, then one
    job id per line comes out in the file's order, and ``export`` of that queue gives 25
    records, in the same order, each holding the spec's fields as sent."""
    c.request("pause", {"queue": "rt-q"})
    specs = specs_for("rt", 25)
    path = write_lines(workdir, "jobs.jsonl", [jsonl.dumps(s) for s in specs])

    ids = ok(shared.socket, "submit", "--jsonl", path, "--chunk", "10").stdout.split()
    exported = ndjson(ok(shared.socket, "export", "--jsonl", "--queue", "rt-q", "--page", "4").stdout)

    assert ids == [s["job_id"] for s in specs]
    assert [r["job_id"] for r in exported] == ids
    for spec, record in zip(specs, exported, strict=True):
        assert {k: record[k] for k in spec} == spec
        assert record["status"] in ("pending", "blocked")
    # The export's lines are specs again: submitting them is an idempotent resubmit...
    again = ok(shared.socket, "submit", "--jsonl", path, "--json").stdout
    assert [r["job_id"] for r in ndjson(again)] == ids


def test_specs_from_stdin_skip_blank_lines_and_print_ndjson_with_json(shared: Daemon, c: RawClient) -> None:
    """Given specs on stdin with blank lines between them, when ``submit --jsonl -
    --json`` reads them, then each job's record is printed as one JSON line."""
    text = "\n".join(['{"task": "echo", "args": {"value": 1}}', "", "   ", '{"task": "echo", "args": {"value": "two"}}'])
    records = ndjson(ok(shared.socket, "submit", "--jsonl", "-", "--json", input=text + "\n").stdout)

    assert [r["args"]["value"] for r in records] == [1, "two"]
    for record in records:
        assert c.wait(record["job_id"])["status"] == "completed"


def count_batch(c: RawClient, batch: str) -> int:
    return sum(1 for _ in iter_all(c, {"queue": f"{batch}-q"}))


def iter_all(c: RawClient, args: dict[str, Any]) -> Iterator[dict[str, Any]]:
    after = None
    while True:
        page = c.request("list", {**args, "limit": 1000, **({"after": after} if after else {})})
        yield from page["jobs"]
        after = page["next"]
        if after is None:
            return


@pytest.mark.parametrize(
    ("bad", "where", "code"),
    [
        ('{"task": "echo", "args": {}}', "args.value", "invalid_request"),
        ('{"task": "no_such_task"}', "task", "unknown_task"),
        ('{"task": "echo", "args": {"value": 1}, "priority": "high"}', "priority", "invalid_request"),
        ('{"task": "echo", "args": {"value": 1}', None, None),  # not JSON: found before sending
        ('["echo"]', None, None),
        ('{"args": {"value": 1}}', "task", None),
    ],
)
def test_a_bad_line_is_reported_by_number_and_field_and_its_chunk_is_not_accepted(
    shared: Daemon, c: RawClient, workdir: str, bad: str, where: str | None, code: str | None
) -> None:
    """Given 12 good specs, a blank line and then a bad one (line 14), submitted in chunks
    of 5, then the run ends with exit 1 naming line 14 (and the field at fault), the jobs
    of the first two chunks (lines 1..10) are accepted and printed, and nothing of the
    third chunk (lines 11..14) is."""
    batch = f"bad{abs(hash(bad)) % 10**8}"
    c.request("pause", {"queue": f"{batch}-q"})
    good = [jsonl.dumps(s) for s in specs_for(batch, 12)]
    path = write_lines(workdir, f"{batch}.jsonl", [*good, "", bad, good[0]])

    proc = ctl(shared.socket, "submit", "--jsonl", path, "--chunk", "5")

    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    first_line = proc.stderr.splitlines()[0]
    assert "line 14" in first_line, proc.stderr
    if where is not None:
        assert f"line 14, {where}:" in first_line, proc.stderr
    if code is not None:
        assert first_line.startswith(f"error: {code}: "), proc.stderr
    assert proc.stdout.split() == [f"{batch}-{i}" for i in range(10)]
    assert count_batch(c, batch) == 10


def test_a_chunk_refused_by_a_duplicate_id_names_the_later_line(shared: Daemon, c: RawClient, workdir: str) -> None:
    """Given a file where line 3 repeats line 1's job_id with another spec in the same
    chunk, then line 3 and ``job_id`` are named and no job of the file exists."""
    lines = [
        '{"task": "echo", "args": {"value": 1}, "job_id": "dup-1", "queue": "dup-q"}',
        '{"task": "echo", "args": {"value": 2}, "job_id": "dup-2", "queue": "dup-q"}',
        '{"task": "echo", "args": {"value": 3}, "job_id": "dup-1", "queue": "dup-q"}',
    ]
    proc = ctl(shared.socket, "submit", "--jsonl", write_lines(workdir, "dup.jsonl", lines))
    assert proc.returncode == 1
    assert "line 3, job_id:" in proc.stderr, proc.stderr
    assert count_batch(c, "dup") == 0


def test_a_line_that_is_not_utf8_is_named(shared: Daemon, workdir: str) -> None:
    """Given a line of bytes that are not UTF-8, then its number is in the error."""
    path = os.path.join(workdir, "latin.jsonl")
    with open(path, "wb") as fh:
        fh.write(b'{"task": "echo", "args": {"value": 1}, "queue": "latin-q"}\n{"task": "echo", "args": {"value": "\xe9"}}\n')
    proc = ctl(shared.socket, "submit", "--jsonl", path)
    assert proc.returncode == 1 and "line 2: not UTF-8" in proc.stderr, proc.stderr


def test_export_filters_by_status_and_since(shared: Daemon, c: RawClient) -> None:
    """Given jobs submitted before and after a moment, then ``export --since`` that moment
    gives only the later ones, ``--status`` only those in that status, and the ``list``
    op's ``since`` does the same filtering in the daemon."""
    c.request("pause", {"queue": "since-q"})
    before = [c.submit("echo", {"value": i}, queue="since-q")["job_id"] for i in range(3)]
    time.sleep(0.05)  # created_at must differ from the moment on both sides
    moment = time.time()
    time.sleep(0.05)
    after = [c.submit("echo", {"value": i}, queue="since-q")["job_id"] for i in range(4)]
    held = c.request("hold", {"job_id": after[0]})
    assert held["status"] == "held"

    newer = ndjson(ok(shared.socket, "export", "--queue", "since-q", "--since", repr(moment), "--page", "2").stdout)
    assert [r["job_id"] for r in newer] == after
    only_held = ndjson(ok(shared.socket, "export", "--queue", "since-q", "--status", "held").stdout)
    assert [r["job_id"] for r in only_held] == [after[0]]
    everything = ndjson(ok(shared.socket, "export", "--queue", "since-q", "--since", "1h").stdout)
    assert [r["job_id"] for r in everything] == before + after
    page = c.request("list", {"queue": "since-q", "since": moment})
    assert [r["job_id"] for r in page["jobs"]] == after
    assert ctl(shared.socket, "export", "--since", "yesterday-ish").returncode == 2


def test_the_line_format_keeps_bytes_and_names_bad_lines() -> None:
    """Given values with bytes, then a line written and read back is the same value; a
    blank line is skipped but counted; a broken one raises with its number."""
    value = {"blob": b"\x00\xff", "n": [1, 2.5, None], "s": "ünï"}
    line = jsonl.dumps(value)
    assert "\n" not in line and json.loads(line)["blob"] == {"$base64": "AP8="}
    assert list(jsonl.read([line, "", b" \n", line.encode()])) == [
        (1, value, len(line.encode())), (4, value, len(line.encode())),
    ]  # fmt: skip
    with pytest.raises(jsonl.JsonlError) as info:
        list(jsonl.read(["1", "{"]))
    assert info.value.line == 2 and "line 2" in info.value.message
