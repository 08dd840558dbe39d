"""``pyrexisctl pipeline run`` and ``pyrexisctl outputs``: pipelines from the command line.

A pipeline file (TOML or JSON) holds a pipeline spec (``input``, ``stages``, ``output``,
``on_item_error``) and, optionally, a ``job`` table of the job's own fields (``queue``,
``priority``, ``timeout``, ``labels``, ``job_id``, ``max_retries``). Relative paths in
the file are relative to the file's directory; ``--input`` and ``--output`` are
relative to the current directory. The daemon reads and writes those files itself, so
they are sent as absolute paths.
"""

from __future__ import annotations

import json
import os
import time
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

import click

from protocol.status import TERMINAL
from pyrexisctl import render
from pyrexisctl.cli import (
    EXIT_INTERRUPTED,
    EXIT_JOB_FAILED,
    _exit,
    _interruptible,
    _settings,
    json_option,
    main,
)
from pyrexisctl.client import Client, Record

LIVE_EVERY = 0.5  # seconds between two looks at a running pipeline
PLAIN_EVERY = 5.0  # seconds between two progress lines when stderr is not a terminal
JOB_FIELDS = frozenset({"job_id", "queue", "priority", "timeout", "max_retries", "labels", "depends_on",
                        "dependency_policy", "run_at", "delay", "on_interrupt"})  # fmt: skip


def load_pipeline_file(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pipeline spec and the job's fields from a TOML or JSON file; relative paths
    made absolute against the file's directory. ``click.UsageError`` if it cannot be read."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise click.UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        if path.endswith(".json"):
            data = json.loads(raw)
        else:
            data = tomllib.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise click.UsageError(f"{path} is not a valid {'JSON' if path.endswith('.json') else 'TOML'} pipeline file: {exc}") from None
    if not isinstance(data, dict):
        raise click.UsageError(f"{path}: a pipeline file holds a table (a JSON object)")
    job = data.pop("job", {})
    if not isinstance(job, dict):
        raise click.UsageError(f"{path}: 'job' must be a table of job fields")
    unknown = sorted(set(job) - JOB_FIELDS)
    if unknown:
        raise click.UsageError(f"{path}: unknown job field(s): {', '.join(unknown)}")
    base = os.path.dirname(os.path.abspath(path))
    source = data.get("input")
    if isinstance(source, dict) and isinstance(source.get("path"), str):
        source["path"] = os.path.join(base, source["path"])
    if isinstance(data.get("output"), str):
        data["output"] = os.path.join(base, data["output"])
    return data, job


@main.group()
def pipeline() -> None:
    """Run pipelines: items streamed through stages (see docs/pipelines.md)."""


@pipeline.command(name="run")
@click.argument("file", metavar="FILE.toml|json", type=click.Path(dir_okay=False))
@click.option("--input", "input_path", metavar="FILE.jsonl", help="Read the items from this JSONL file instead.")
@click.option("--output", "output_path", metavar="FILE.jsonl", help="Write the outputs to this JSONL file instead of storing them.")
@click.option("--wait", is_flag=True, help="Show each stage's figures live until the pipeline ends; exit 3 if it failed.")
@json_option
def pipeline_run(file: str, input_path: str | None, output_path: str | None, wait: bool) -> None:
    """Submit the pipeline in FILE; print its job id.

    With --wait, a live table of the stages (items in and out, errors, retries, queue,
    busy time, p50/p99 per item) on stderr, and the outputs as JSON lines on stdout when
    they are stored rather than written to a file (--json: the final record instead).
    Ctrl-C stops watching; the pipeline goes on.
    """
    spec, job = load_pipeline_file(file)
    if input_path is not None:
        spec["input"] = {"path": os.path.abspath(input_path)}
    if output_path is not None:
        spec["output"] = os.path.abspath(output_path)
    settings = _settings()
    with settings.client() as client:
        record = client.submit_pipeline(spec, **job)
        job_id = str(record["job_id"])
        if not wait:
            if settings.json:
                render.echo_json(record)
            else:
                click.echo(job_id)
            return
        final = _watch(client, job_id, print_outputs=spec.get("output") is None and not settings.json)
    if settings.json:
        render.echo_json(final)
    else:
        pipe = final.get("pipeline")
        if isinstance(pipe, Mapping):
            click.echo(render.pipeline_table(pipe), err=True)
            click.echo(f"{job_id} items: {render.pipeline_items(pipe)}", err=True)
        click.echo(render.job_outcome(final), err=True)
    if final.get("status") in ("failed", "cancelled"):
        _exit(EXIT_JOB_FAILED)


def _watch(client: Client, job_id: str, print_outputs: bool) -> Record:
    """Follow a pipeline until it ends: its figures live, its stored outputs printed."""
    _interruptible()
    live = render.LiveBlock()
    next_seq = 1
    last_plain = 0.0
    try:
        while True:
            record = client.get(job_id)
            if print_outputs:
                next_seq = _print_outputs(client, job_id, next_seq, live.clear)
            pipe = record.get("pipeline")
            status = str(record.get("status"))
            if isinstance(pipe, Mapping):
                text = f"{job_id} {status}  {render.pipeline_items(pipe)}\n{render.pipeline_table(pipe)}"
                if live.enabled:
                    live.update(text)
                elif time.monotonic() - last_plain >= PLAIN_EVERY:
                    last_plain = time.monotonic()
                    click.echo(f"{job_id} {status} {render.pipeline_items(pipe)}", err=True)
            if status in TERMINAL:
                live.clear()
                if print_outputs:
                    _print_outputs(client, job_id, next_seq, live.clear)
                return record
            time.sleep(LIVE_EVERY)
    except KeyboardInterrupt:
        live.clear()
        click.echo(f"{job_id}: stopped watching; the pipeline goes on", err=True)
        _exit(EXIT_INTERRUPTED)


def _print_outputs(client: Client, job_id: str, since: int, before: Callable[[], None]) -> int:
    """Print the stored outputs from ``since`` as JSON lines, as they are read; the next
    seq to ask for."""
    first = True
    for event in client.stream("outputs", {"job_id": job_id, "since": since}):
        if event.get("kind") != "output":
            continue
        if first:
            before()
            first = False
        click.echo(render.to_json(event.get("value")))
        seq = event.get("seq")
        if isinstance(seq, int):
            since = seq + 1
    return since


@main.command()
@click.argument("job_id", metavar="JOB")
@click.option("--since", type=click.IntRange(min=1), default=1, show_default=True, metavar="N", help="First output (seq) to show.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new outputs until the job ends (Ctrl-C detaches).")
@json_option
def outputs(job_id: str, since: int, follow: bool) -> None:
    """Print JOB's stored outputs (a generator's values, a pipeline's results), one JSON
    value a line (--json: the output events, with their "seq")."""
    settings = _settings()
    _interruptible()
    with settings.client() as client:
        try:
            stream = client.follow_outputs(job_id, since) if follow else client.stream("outputs", {"job_id": job_id, "since": since})
            for event in stream:
                if event.get("kind") == "output":
                    render.echo_json(event if settings.json else event.get("value"))
        except KeyboardInterrupt:
            return
