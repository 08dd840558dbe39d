"""The daemon's own log lines, on stderr, in the form their reader wants.

* ``text``: a time, the level, the logger, the message (a terminal, a file).
* ``journal``: under journald, which stamps every line itself: no time, and a syslog
  priority prefix (``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>`` debug) so that
  ``journalctl -p warning`` filters by level. Every line of a multi-line message (a
  traceback) carries the prefix, since journald makes each line a record.
* ``json``: one JSON object a line, for log shippers.

``auto`` picks ``journal`` when ``JOURNAL_STREAM`` names the device and inode of our
stderr (systemd's documented test: a child that inherited the variable but writes
elsewhere must not use it), else ``text``.

A line about a job carries its id: in the message, and as ``job_id`` (give it with
``extra={"job_id": ...}``), which the JSON form writes as its own field.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import IO

JOURNAL_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (levels between two take the less severe)."""
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return JOURNAL_PRIORITY[level]
    return JOURNAL_PRIORITY[logging.DEBUG]


def under_journald(stream: IO[str] | None = None, env: Mapping[str, str] | None = None) -> bool:
    """Whether ``stream`` (stderr) is the journal stream systemd connected us to."""
    env = os.environ if env is None else env
    value = env.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


class JournalFormatter(logging.Formatter):
    """``<priority>logger: message``, no time (journald adds its own)."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        text = super().format(record)
        return "\n".join(prefix + line for line in text.splitlines() or [""])


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, job_id when given, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None)
        if job_id is not None:
            out["job_id"] = job_id
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def formatter(fmt: str, stream: IO[str] | None = None) -> logging.Formatter:
    """The formatter for ``fmt`` (``auto``, ``text``, ``journal`` or ``json``)."""
    if fmt == "auto":
        fmt = "journal" if under_journald(stream) else "text"
    if fmt == "journal":
        return JournalFormatter("%(name)s: %(message)s")
    if fmt == "json":
        return JsonFormatter()
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def setup(fmt: str, level: str, stream: IO[str] | None = None) -> None:
    """Send every log record to ``stream`` (stderr) in ``fmt``, from ``level`` up."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter(fmt, stream))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    set_level(level)


def set_level(level: str) -> None:
    """Change the level live (``reload``)."""
    value = getattr(logging, level.upper())
    logging.getLogger().setLevel(value)
    # aiosqlite logs two lines per statement at DEBUG: noise that would bury ours.
    logging.getLogger("aiosqlite").setLevel(max(value, logging.INFO))
