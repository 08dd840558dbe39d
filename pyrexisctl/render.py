"""What pyrexisctl shows people and scripts: compact tables, JSON/NDJSON, times, a progress line.

Pure formatting: functions take records (plain maps from the daemon) and return text, so
they are cheap to import and easy to test. Only :func:`echo_json`, :func:`echo_ndjson` and
:class:`ProgressLine` write.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TextIO

import click

from protocol import jsonl

JOB_HEADERS = ("ID", "TASK", "QUEUE", "PRI", "STATUS", "ATTEMPTS", "AGE", "ELAPSED", "OWNER")
_JOB_RIGHT = frozenset({3, 5, 6, 7})

MAX_VALUE_CHARS = 400
"""Characters of a result, args or error a human view shows (``--json`` shows all)."""

STATUS_COLOURS = {
    "completed": "green",
    "failed": "red",
    "cancelled": "yellow",
    "running": "cyan",
    "retrying": "magenta",
}


def use_colour(stream: TextIO | None = None) -> bool:
    """Colour only on a terminal, and never when ``NO_COLOR`` is set to anything
    (https://no-color.org) or the terminal is ``dumb``."""
    stream = sys.stdout if stream is None else stream
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def paint_status(status: str, text: str | None = None, colour: bool = False) -> str:
    """``text`` (the status itself by default) in its status's colour, when ``colour``."""
    text = status if text is None else text
    fg = STATUS_COLOURS.get(status)
    return click.style(text, fg=fg) if colour and fg else text


# --------------------------------------------------------------------------- JSON


def to_json(value: Any) -> str:
    """``value`` as one line of JSON (bytes become ``{"$base64": ...}``): the JSONL line
    format of :mod:`protocol.jsonl`."""
    return jsonl.dumps(value)


def echo_json(value: Any) -> None:
    """Print ``value`` as one line of JSON on stdout."""
    click.echo(to_json(value))


def echo_ndjson(values: Iterable[Any]) -> None:
    """Print each value as its own JSON line (NDJSON), as they come."""
    for value in values:
        click.echo(to_json(value))


def short_value(value: Any, limit: int = MAX_VALUE_CHARS) -> str:
    """A JSON rendering of ``value`` cut to ``limit`` characters for human views."""
    text = to_json(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} chars, see --json)"


# --------------------------------------------------------------------------- times


def format_duration(seconds: float | None) -> str:
    """Compact duration: ``0.42ms``, ``85ms``, ``3.4s``, ``2m05s``, ``1h02m``, ``3d04h``, ``-``."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)  # clocks of client and daemon may disagree a little
    if seconds < 0.01:
        return f"{seconds * 1000:.2f}ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    return _coarse(int(seconds))


def format_age(seconds: float | None) -> str:
    """A compact age in whole units: ``12s``, ``2m05s``, ``1h02m``, ``3d04h``; ``-`` for None."""
    if seconds is None:
        return "-"
    whole = int(max(0.0, seconds))
    if whole < 60:
        return f"{whole}s"
    return _coarse(whole)


def _coarse(whole: int) -> str:
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_time(timestamp: float | None, now: float | None = None) -> str:
    """A local wall-clock time with its distance from now: ``2024-05-01 12:00:03 (12s ago)``."""
    if timestamp is None:
        return "-"
    now = time.time() if now is None else now
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))
    delta = now - timestamp
    if delta >= 0:
        return f"{stamp} ({format_age(delta)} ago)"
    return f"{stamp} (in {format_age(-delta)})"


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def job_elapsed(job: Mapping[str, Any], now: float) -> float | None:
    """How long the job has run: until now while running, until it finished otherwise."""
    started = _num(job.get("started_at"))
    if started is None:
        return None
    finished = _num(job.get("finished_at"))
    if finished is not None and job.get("status") != "running":
        return finished - started
    if job.get("status") == "running":
        return now - started
    return None


# --------------------------------------------------------------------------- tables


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    right: Iterable[int] = (),
    paint: Callable[[int, str, str], str] | None = None,
) -> str:
    """A compact text table: columns two spaces apart, those in ``right`` right-aligned.
    ``paint(column, cell, padded)`` may style a padded cell (widths count the plain text)."""
    materialised = [list(row) for row in rows]
    widths = [len(header) for header in headers]
    for row in materialised:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))
    right_set = frozenset(right)
    last = len(headers) - 1

    def line(cells: Sequence[str], styled: bool) -> str:
        parts = []
        for index, cell in enumerate(cells):
            if index in right_set:
                padded = cell.rjust(widths[index])
            elif index == last:
                padded = cell  # no trailing padding
            else:
                padded = cell.ljust(widths[index])
            parts.append(paint(index, cell, padded) if styled and paint is not None else padded)
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers, False), *(line(row, True) for row in materialised)])


def key_values(pairs: Iterable[tuple[str, str]]) -> str:
    """``key  value`` lines with the values aligned."""
    materialised = list(pairs)
    width = max((len(key) for key, _ in materialised), default=0)
    return "\n".join(f"{key.ljust(width)}  {value}" for key, value in materialised)


def job_row(job: Mapping[str, Any], now: float) -> list[str]:
    """One row of the job table (see :data:`JOB_HEADERS`)."""
    attempts = job.get("attempts")
    created = _num(job.get("created_at"))
    return [
        str(job.get("job_id", "?")),
        str(job.get("task", "?")),
        str(job.get("queue", "?")),
        str(job.get("priority", "")),
        str(job.get("status", "?")),
        "-" if attempts is None else str(attempts),
        format_age(None if created is None else now - created),
        format_duration(job_elapsed(job, now)),
        format_owner(job.get("owner")),
    ]


def format_owner(owner: Any) -> str:
    """A job's ``owner`` uid as its user name when this machine knows it (the daemon is on
    the same machine: Unix sockets are local), else the number; ``-`` for none."""
    if not isinstance(owner, int) or isinstance(owner, bool):
        return "-"
    try:
        return pwd.getpwuid(owner).pw_name
    except (KeyError, OverflowError):
        return str(owner)


_STATUS_COLUMN = JOB_HEADERS.index("STATUS")


def jobs_table(jobs: Iterable[Mapping[str, Any]], now: float | None = None, colour: bool = False) -> str:
    """The job list as a table (statuses coloured when ``colour``)."""
    now = time.time() if now is None else now

    def paint(column: int, cell: str, padded: str) -> str:
        return paint_status(cell, padded, True) if column == _STATUS_COLUMN else padded

    return table(JOB_HEADERS, (job_row(job, now) for job in jobs), _JOB_RIGHT, paint if colour else None)


def format_error(error: Any) -> str:
    """A Job record's ``error`` map as ``type: message (retryable)``."""
    if not isinstance(error, Mapping):
        return short_value(error)
    text = f"{error.get('type', 'error')}: {error.get('message', '')}"
    return f"{text} (retryable)" if error.get("retryable") else text


def format_progress(progress: Any) -> str:
    """A ``progress`` map as ``45% message``."""
    if not isinstance(progress, Mapping):
        return "-"
    fraction = _num(progress.get("fraction"))
    parts = [] if fraction is None else [f"{fraction * 100:.0f}%"]
    if progress.get("message"):
        parts.append(str(progress["message"]))
    return " ".join(parts) or "-"


def job_detail(job: Mapping[str, Any], now: float | None = None) -> str:
    """Everything about one job, one field per line (``status`` command)."""
    now = time.time() if now is None else now
    created = _num(job.get("created_at"))
    started = _num(job.get("started_at"))
    max_retries = job.get("max_retries")
    attempts = f"{job.get('attempts', 0)}"
    if isinstance(max_retries, int):
        attempts += f" (max_retries {max_retries})"
    pairs: list[tuple[str, str]] = [
        ("job", str(job.get("job_id", "?"))),
        ("task", f"{job.get('task', '?')} ({job.get('mode') or 'default mode'})"),
        ("status", str(job.get("status", "?"))),
        ("queue", f"{job.get('queue', '?')}, priority {job.get('priority', 0)}"),
        ("owner", format_owner(job.get("owner"))),
        ("attempts", attempts),
        ("created", format_time(created, now)),
    ]
    if job.get("run_at") is not None:
        pairs.append(("run at", format_time(_num(job.get("run_at")), now)))
    if started is not None:
        wait = "" if created is None else f", {format_duration(started - created)} after submit"
        pairs.append(("started", format_time(started, now) + wait))
    if job.get("finished_at") is not None:
        pairs.append(("finished", format_time(_num(job.get("finished_at")), now)))
    if started is not None:
        pairs.append(("elapsed", format_duration(job_elapsed(job, now))))
    if job.get("progress"):
        pairs.append(("progress", format_progress(job.get("progress"))))
    pairs.append(("args", short_value(job.get("args"))))
    if job.get("status") == "completed":
        pairs.append(("result", short_value(job.get("result"))))
    if job.get("cached_from") is not None:
        pairs.append(("cached", f"yes: the result of job {job['cached_from']} (it did not run)"))
    if job.get("error"):
        pairs.append(("error", format_error(job.get("error"))))
    if job.get("depends_on"):
        depends = ", ".join(str(dep) for dep in job["depends_on"])
        pairs.append(("depends on", f"{depends} ({job.get('dependency_policy')})"))
    labels = job.get("labels")
    if isinstance(labels, Mapping) and labels:
        pairs.append(("labels", " ".join(f"{key}={value}" for key, value in labels.items())))
    if job.get("timeout") is not None:
        pairs.append(("timeout", format_duration(_num(job.get("timeout")))))
    if job.get("on_interrupt"):
        pairs.append(("on interrupt", str(job["on_interrupt"])))
    pipeline = job.get("pipeline")
    if isinstance(pipeline, Mapping):
        pairs.append(("items", pipeline_items(pipeline)))
        if pipeline.get("output"):
            pairs.append(("output", str(pipeline["output"])))
        for error in pipeline.get("errors") or []:
            if isinstance(error, Mapping):
                stage = "input" if error.get("stage") is None else f"stage {error.get('stage')}"
                pairs.append(("item error", f"item {error.get('index')} at {stage}: {error.get('message')}"))
        return key_values(pairs) + "\n\n" + pipeline_table(pipeline)
    return key_values(pairs)


def pipeline_items(pipeline: Mapping[str, Any]) -> str:
    """``done/known items, N errors, M outputs`` of a pipeline's record."""
    items = pipeline.get("items") or {}
    known = items.get("known")
    text = f"{_plain(items.get('done'))}/{'?' if known is None else _plain(known)} done"
    text += f", {_plain(items.get('read'))} read, {_plain(items.get('errors'))} errors"
    return text + f", {_plain(pipeline.get('outputs'))} outputs"


PIPELINE_HEADERS = ("STAGE", "MODE", "CONC", "IN", "OUT", "ERR", "RETRY", "QUEUE", "BUSY", "P50", "P99", "DONE")


def pipeline_table(pipeline: Mapping[str, Any]) -> str:
    """A pipeline's figures, one stage a row: items in and out, errors, retries, the queue
    in front of it (now / its bound), busy time, p50 and p99 per item, and how many input
    items from the start are done with it."""
    rows = []
    for stage in pipeline.get("stages") or []:
        if not isinstance(stage, Mapping):
            continue
        rows.append([
            str(stage.get("name", "?")), str(stage.get("mode", "?")), _plain(stage.get("concurrency")),
            _plain(stage.get("items_in")), _plain(stage.get("items_out")), _plain(stage.get("errors")),
            _plain(stage.get("retries")), f"{_plain(stage.get('queue'))}/{_plain(stage.get('buffer'))}",
            format_duration(_num(stage.get("busy"))), format_duration(_num(stage.get("p50"))),
            format_duration(_num(stage.get("p99"))), _plain(stage.get("contiguous")),
        ])  # fmt: skip
    return table(PIPELINE_HEADERS, rows, right=set(range(2, 12)))


def job_outcome(job: Mapping[str, Any]) -> str:
    """How a terminal job ended: ``ID completed in 12ms`` / ``ID failed after 3 attempts: ...``."""
    job_id = job.get("job_id", "?")
    status = job.get("status", "?")
    elapsed = job_elapsed(job, time.time())
    if status == "completed":
        return f"{job_id} completed in {format_duration(elapsed)}"
    attempts = job.get("attempts")
    after = f" after {attempts} attempt{'s' if attempts != 1 else ''}" if attempts else ""
    error = f": {format_error(job['error'])}" if job.get("error") else ""
    return f"{job_id} {status}{after}{error}"


def queues_table(queues: Iterable[Mapping[str, Any]]) -> str:
    """Queue rows as a table."""
    rows = [
        [
            str(row.get("queue", "?")),
            "yes" if row.get("paused") else "no",
            _plain(row.get("weight")),
            _plain(row.get("max_concurrency")),
            _plain(row.get("aging")),
            _plain(row.get("waiting")),
            _plain(row.get("running")),
        ]
        for row in queues
    ]
    headers = ("QUEUE", "PAUSED", "WEIGHT", "MAX", "AGING", "WAITING", "RUNNING")
    return table(headers, rows, right={2, 3, 4, 5, 6})


def tasks_table(tasks: Iterable[Mapping[str, Any]]) -> str:
    """Registered tasks as a table."""
    rows = []
    for task in tasks:
        modes = task.get("modes") or []
        description = str(task.get("description") or "").strip().splitlines()
        rows.append(
            [
                str(task.get("name", "?")),
                ",".join(str(mode) for mode in modes),
                str(task.get("default_mode") or "-"),
                description[0] if description else "",
            ]
        )
    return table(("TASK", "MODES", "DEFAULT", "DESCRIPTION"), rows)


def _plain(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _counts(counts: Any) -> str:
    if not isinstance(counts, Mapping) or not counts:
        return "-"
    return "  ".join(f"{key} {value}" for key, value in counts.items())


def format_bytes(n: Any) -> str:
    """A byte count for people: ``512 B``, ``3.4 KiB``, ``12.0 MiB``."""
    value = _num(n)
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return "-"  # not reached


def cache_text(stats: Mapping[str, Any]) -> str:
    """The ``cache_stats`` answer for people: a table per task, then the totals."""
    rows = [
        [
            str(t.get("task", "?")),
            str(t.get("entries", 0)),
            format_bytes(t.get("bytes")),
            str(t.get("hits", 0)),
            str(t.get("misses", 0)),
            str(t.get("evictions", 0)),
        ]
        for t in stats.get("tasks") or []
    ]
    totals = (
        f"{stats.get('entries', 0)} entries of at most {stats.get('max_entries', '-')}, "
        f"{format_bytes(stats.get('bytes'))} of at most {format_bytes(stats.get('max_bytes'))}"
    )
    if not rows:
        return f"no cached results\n{totals}"
    headers = ("TASK", "ENTRIES", "BYTES", "HITS", "MISSES", "EVICTIONS")
    return table(headers, rows, right=(1, 2, 3, 4, 5)) + "\n" + totals


def stats_text(stats: Mapping[str, Any]) -> str:
    """The ``stats`` answer for people."""
    latency = stats.get("submit_to_start_ms")
    if isinstance(latency, Mapping):
        p50, p99 = _num(latency.get("p50")), _num(latency.get("p99"))
        latency_text = "p50 {}  p99 {}".format(
            "-" if p50 is None else format_duration(p50 / 1000),
            "-" if p99 is None else format_duration(p99 / 1000),
        )
    else:
        latency_text = "-"
    rate = _num(stats.get("completed_per_s"))
    pairs = [
        ("uptime", format_duration(_num(stats.get("uptime")))),
        ("jobs", _counts(stats.get("by_status"))),
        ("running", _counts(stats.get("running_by_mode"))),
        ("slots", _counts(stats.get("slots"))),
        ("completed/s", "-" if rate is None else f"{rate:.1f} (last 60 s)"),
        ("submit->start", latency_text),
    ]
    dask = stats.get("dask")
    if isinstance(dask, Mapping):
        text = f"{dask.get('status', '?')} {dask.get('scheduler') or ''}, {dask.get('workers', 0)} workers, {dask.get('threads', 0)} threads"
        if dask.get("abandoned"):
            text += f", {dask['abandoned']} abandoned"
        if dask.get("error"):
            text += f" ({dask['error']})"
        pairs.append(("dask", text))
    lag = stats.get("loop_lag_ms")
    if isinstance(lag, Mapping):
        pairs.append(("loop lag", _millis(lag, ("p50", "p99", "max"))))
    store = stats.get("store")
    if isinstance(store, Mapping):
        commit_ms, per = _num(store.get("commit_ms")), _num(store.get("writes_per_commit"))
        pairs.append((
            "commits",
            f"{store.get('commits', '-')} ({store.get('sync', '?')}), "
            f"{'-' if per is None else f'{per:.1f}'} writes each, "
            f"{'-' if commit_ms is None else f'{commit_ms:.2f} ms'} each",
        ))
        split = store.get("commit_split_ms")
        if isinstance(split, Mapping):
            pairs.append(("commit split", _millis(split, tuple(split))))
    by_queue = stats.get("by_queue")
    if isinstance(by_queue, Mapping):
        for queue, counts in by_queue.items():
            pairs.append((f"queue {queue}", _counts(counts)))
    return key_values(pairs)


def _millis(values: Mapping[str, Any], keys: tuple[str, ...]) -> str:
    """``name 0.12 ms`` pairs, in the given order, skipping what is missing."""
    parts = []
    for key in keys:
        value = _num(values.get(key))
        if value is not None:
            parts.append(f"{key} {value:.2f} ms")
    return "  ".join(parts) or "-"


# --------------------------------------------------------------------------- events


def event_text(event: Mapping[str, Any]) -> str:
    """What an event says, without its kind and job id.

    ``running (attempt 1)``, ``failed (attempt 2): exception: boom``, ``45% step 2``,
    ``stdout: a line``, a partial result as JSON; unknown kinds as their JSON fields.
    """
    kind = event.get("kind")
    if kind == "state":
        text = str(event.get("status", "?"))
        attempt = event.get("attempt")
        if isinstance(attempt, int) and attempt > 0:
            text += f" (attempt {attempt})"
        if event.get("error"):
            text += f": {format_error(event.get('error'))}"
        return text
    if kind == "progress":
        return format_progress(event)
    if kind == "log":
        return f"{event.get('stream', 'log')}: {event.get('line', '')}"
    if kind == "output":
        return short_value(event.get("value"))
    return short_value({k: v for k, v in event.items() if k not in ("kind", "job_id", "time")})


def clock_time(timestamp: float | None) -> str:
    """A local time of day with milliseconds: ``12:00:03.123``."""
    if timestamp is None:
        timestamp = time.time()
    whole = int(timestamp)
    millis = int((timestamp - whole) * 1000)
    return f"{time.strftime('%H:%M:%S', time.localtime(whole))}.{millis:03d}"


def event_line(event: Mapping[str, Any]) -> str:
    """One event as a line of ``watch``: ``12:00:03.123  JOB  state     running (attempt 1)``."""
    return "  ".join(
        [
            clock_time(_num(event.get("time"))),
            str(event.get("job_id", "-")),
            str(event.get("kind", "?")).ljust(8),
            event_text(event),
        ]
    )


# --------------------------------------------------------------------------- schedules


def schedule_when(schedule: Mapping[str, Any]) -> str:
    """``cron */5 * * * *`` or ``every 5m00s``."""
    if schedule.get("cron"):
        return f"cron {schedule['cron']}"
    return f"every {format_duration(_num(schedule.get('every')))}"


def _job_summary(job: Any) -> str:
    if not isinstance(job, Mapping):
        return short_value(job)
    text = str(job.get("task", "?"))
    if job.get("args"):
        text += " " + short_value(job.get("args"), 80)
    return text


def schedules_table(schedules: Iterable[Mapping[str, Any]], now: float | None = None) -> str:
    """Schedule records as a table."""
    now = time.time() if now is None else now
    rows = []
    for schedule in schedules:
        job = schedule.get("job")
        queue = job.get("queue") if isinstance(job, Mapping) else None
        rows.append(
            [
                str(schedule.get("name", "?")),
                schedule_when(schedule),
                _job_summary(job),
                str(queue or "default"),
                format_time(_num(schedule.get("next_run")), now),
                format_time(_num(schedule.get("last_run")), now),
                str(schedule.get("last_job_id") or "-"),
            ]
        )
    headers = ("NAME", "WHEN", "JOB", "QUEUE", "NEXT RUN", "LAST RUN", "LAST JOB")
    return table(headers, rows)


def schedule_detail(schedule: Mapping[str, Any], now: float | None = None) -> str:
    """One schedule record, one field per line."""
    now = time.time() if now is None else now
    job = schedule.get("job")
    pairs = [
        ("schedule", str(schedule.get("name", "?"))),
        ("when", schedule_when(schedule)),
        ("job", _job_summary(job)),
    ]
    if isinstance(job, Mapping):
        extra = {k: v for k, v in job.items() if k not in ("task", "args")}
        if extra:
            pairs.append(("options", " ".join(f"{k}={to_json(v)}" for k, v in extra.items())))
    pairs += [
        ("next run", format_time(_num(schedule.get("next_run")), now)),
        ("last run", format_time(_num(schedule.get("last_run")), now)),
        ("last job", str(schedule.get("last_job_id") or "-")),
    ]
    return key_values(pairs)


# --------------------------------------------------------------------------- progress


class LiveBlock:
    """A block of lines redrawn in place on a terminal (silent when not a terminal)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = sys.stderr if stream is None else stream
        self.enabled = self._stream.isatty()
        self._lines = 0

    def update(self, text: str) -> None:
        if not self.enabled:
            return
        self.clear()
        width = shutil.get_terminal_size((80, 24)).columns - 1
        lines = [line[:width] for line in text.splitlines()]
        self._stream.write("\n".join(lines) + "\n")
        self._stream.flush()
        self._lines = len(lines)

    def clear(self) -> None:
        """Erase the block (cursor up over each line, erase to the end of the screen)."""
        if self._lines:
            self._stream.write(f"\x1b[{self._lines}F\x1b[J")
            self._stream.flush()
            self._lines = 0


class ProgressLine:
    """A single status line redrawn in place on a terminal (silent when not a terminal).

    ``update`` redraws it; ``clear`` erases it so normal output can follow. Writing to
    stderr keeps stdout clean for the result.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = sys.stderr if stream is None else stream
        self.enabled = self._stream.isatty()
        self._shown = False
        self._started = time.monotonic()

    def render(
        self, label: str, status: str, fraction: float | None = None, message: str | None = None
    ) -> str:
        """The text of the line, fitted to the terminal's width."""
        parts = [label, status.ljust(9)]
        if fraction is not None:
            fraction = min(1.0, max(0.0, fraction))
            filled = round(fraction * 20)
            parts.append(f"[{'#' * filled}{'.' * (20 - filled)}] {fraction * 100:3.0f}%")
        parts.append(format_age(time.monotonic() - self._started))
        if message:
            parts.append(message)
        text = "  ".join(parts)
        width = shutil.get_terminal_size((80, 24)).columns - 1
        return text if len(text) <= width else text[: max(0, width - 3)] + "..."

    def update(
        self, label: str, status: str, fraction: float | None = None, message: str | None = None
    ) -> None:
        """Redraw the line."""
        if not self.enabled:
            return
        # \r goes back to the line start, ESC[K erases what a longer previous line left.
        self._stream.write("\r\x1b[K" + self.render(label, status, fraction, message))
        self._stream.flush()
        self._shown = True

    def clear(self) -> None:
        """Erase the line, if one is shown."""
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._shown = False
