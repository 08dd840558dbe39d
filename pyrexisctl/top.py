"""``pyrexisctl top``: a live view of the daemon, redrawn every second.

A frame is made of three answers — ``stats``, ``queues`` and the running jobs (``list``)
— and :func:`frame` turns them into lines (pure, tested without a terminal). On a
terminal, :class:`Screen` shows the frames full-screen (the alternate screen, no cursor,
keys read one at a time without echo) and gives the terminal back as it found it on
``q``, Ctrl-C or an error. Elsewhere (a pipe, a file) the frames are printed one after
the other as plain text.
"""

from __future__ import annotations

import os
import select
import shutil
import sys
import termios
import time
import tty
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

import click

from pyrexisctl import render

ALT_SCREEN_ON = "\x1b[?1049h"
ALT_SCREEN_OFF = "\x1b[?1049l"
CURSOR_OFF = "\x1b[?25l"
CURSOR_ON = "\x1b[?25h"
HOME_CLEAR = "\x1b[H\x1b[2J"
QUIT_KEYS = frozenset("qQ\x03")  # q, or Ctrl-C arriving as a key in cbreak mode
RUNNING_SHOWN = 200  # running jobs asked for; the screen shows what fits


def _ms(value: Any) -> str:
    number = render._num(value)  # noqa: SLF001 - render's own number reader
    return "-" if number is None else f"{number:.2f} ms"


def frame(
    stats: Mapping[str, Any],
    queues: Sequence[Mapping[str, Any]],
    running: Sequence[Mapping[str, Any]],
    now: float,
    server: str = "pyrexisd",
    colour: bool = False,
) -> list[str]:
    """The lines of one frame (the caller cuts them to the screen)."""
    slots: Mapping[str, Any] = stats.get("slots") or {}
    busy: Mapping[str, Any] = stats.get("running_by_mode") or {}
    title = f"{server}  up {render.format_duration(render._num(stats.get('uptime')))}  {time.strftime('%H:%M:%S', time.localtime(now))}"  # noqa: SLF001
    lines = [click.style(title, bold=True) if colour else title]
    lines.append("slots     " + "  ".join(f"{mode} {busy.get(mode, 0)}/{n}" for mode, n in slots.items()))
    by_status: Mapping[str, Any] = stats.get("by_status") or {}
    lines.append("jobs      " + ("  ".join(f"{s} {n}" for s, n in sorted(by_status.items())) or "none"))
    lines.append("")
    rates: Mapping[str, Any] = stats.get("completed_per_s_by_queue") or {}
    queue_rows = [
        [
            str(q.get("queue")),
            str(q.get("waiting", 0)),
            str(q.get("running", 0)),
            f"{render._num(rates.get(str(q.get('queue')))) or 0.0:.1f}",  # noqa: SLF001
            f"{q.get('weight', 1)}",
            "-" if q.get("max_concurrency") is None else str(q.get("max_concurrency")),
            "paused" if q.get("paused") else "",
        ]
        for q in queues
    ]
    lines += render.table(("QUEUE", "WAITING", "RUNNING", "DONE/S", "WEIGHT", "CAP", ""), queue_rows, (1, 2, 3, 4, 5)).splitlines()
    lines.append("")
    job_rows = [
        [
            str(job.get("job_id")),
            str(job.get("task")),
            str(job.get("queue")),
            str(job.get("mode", "")),
            render.format_progress(job.get("progress")) or "-",
            render.format_duration(render.job_elapsed(job, now)),
        ]
        for job in running
    ]
    lines += render.table(("RUNNING", "TASK", "QUEUE", "MODE", "PROGRESS", "ELAPSED"), job_rows, (5,)).splitlines()
    if not job_rows:
        lines.append("(no job is running)")
    lines.append("")
    lines += _daemon_lines(stats)
    return lines


def _daemon_lines(stats: Mapping[str, Any]) -> list[str]:
    latency: Mapping[str, Any] = stats.get("submit_to_start_ms") or {}
    lag: Mapping[str, Any] = stats.get("loop_lag_ms") or {}
    store: Mapping[str, Any] = stats.get("store") or {}
    events: Mapping[str, Any] = stats.get("events") or {}
    retention: Mapping[str, Any] = stats.get("retention") or {}
    per = render._num(store.get("writes_per_commit"))  # noqa: SLF001
    rate = render._num(stats.get("completed_per_s"))  # noqa: SLF001
    pairs = [
        ("completed/s", "-" if rate is None else f"{rate:.1f} (last 60 s)"),
        ("submit->start", f"p50 {_ms(latency.get('p50'))}  p99 {_ms(latency.get('p99'))}"),
        ("commit", f"{_ms(store.get('commit_ms'))} each, {'-' if per is None else f'{per:.1f}'} writes a batch, "
                   f"{store.get('commits', '-')} commits ({store.get('sync', '?')})"),
        ("loop lag", f"p50 {_ms(lag.get('p50'))}  p99 {_ms(lag.get('p99'))}  max {_ms(lag.get('max'))}"),
        ("events", f"{events.get('streams', '-')} streams open, {events.get('overflowed', 0)} fell behind, "
                   f"{events.get('dropped', 0)} events dropped"),
        ("database", f"{render.format_bytes(store.get('file_bytes'))}, {retention.get('finished', '-')} finished jobs kept, "
                     f"{retention.get('pruned', 0)} pruned"),
    ]
    return render.key_values(pairs).splitlines()


Fetch = Callable[[], tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]]


class Screen:
    """The terminal in full-screen mode for the ``with`` block: alternate screen, hidden
    cursor, keys unbuffered and not echoed; all of it undone on leaving, whatever happens."""

    def __init__(self, out: TextIO, keys: int) -> None:
        self.out = out
        self.keys = keys
        self._saved: list[Any] | None = None

    def __enter__(self) -> Screen:
        self._saved = termios.tcgetattr(self.keys)
        tty.setcbreak(self.keys)
        self.out.write(ALT_SCREEN_ON + CURSOR_OFF)
        self.out.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        self.out.write(CURSOR_ON + ALT_SCREEN_OFF)
        self.out.flush()
        if self._saved is not None:
            termios.tcsetattr(self.keys, termios.TCSADRAIN, self._saved)

    def draw(self, lines: list[str]) -> None:
        size = shutil.get_terminal_size((100, 30))
        shown = [line[: size.columns] if "\x1b" not in line else line for line in lines[: size.lines - 1]]
        self.out.write(HOME_CLEAR + "\r\n".join(shown))
        self.out.flush()

    def quit_pressed(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for a key; True if it asks to quit."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.keys], [], [], left)
            if not ready:
                return False
            data = os.read(self.keys, 32).decode(errors="replace")
            if not data or any(c in QUIT_KEYS for c in data):
                return True
        return False


def run(fetch: Fetch, interval: float, server: str, out: TextIO | None = None) -> None:
    """Show frames until ``q`` (a terminal) or Ctrl-C (plain text elsewhere)."""
    out = out or sys.stdout
    colour = render.use_colour(out)
    if out.isatty() and sys.stdin.isatty():
        with Screen(out, sys.stdin.fileno()) as screen:
            while True:
                stats, queues, running = fetch()
                screen.draw(frame(stats, queues, running, time.time(), server, colour))
                if screen.quit_pressed(interval):
                    return
    while True:
        stats, queues, running = fetch()
        click.echo("\n".join(frame(stats, queues, running, time.time(), server)) + "\n", file=out)
        time.sleep(interval)
