"""The daemon's own log: syslog priority prefixes and no timestamps under journald (when
JOURNAL_STREAM names its stderr), JSON lines with --log-format json, a job's id on every
line about the job."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

from conftest import Daemon, wait_until

from pyrexisd import logs

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def _record(level: int, msg: str, job_id: str | None = None) -> logging.LogRecord:
    record = logging.LogRecord("pyrexisd.core", level, __file__, 1, msg, (), None)
    if job_id is not None:
        record.job_id = job_id
    return record


def test_journal_lines_start_with_the_syslog_priority_and_carry_no_time() -> None:
    fmt = logs.JournalFormatter("%(name)s: %(message)s")
    assert fmt.format(_record(logging.ERROR, "disk full")) == "<3>pyrexisd.core: disk full"
    assert fmt.format(_record(logging.WARNING, "w")).startswith("<4>")
    assert fmt.format(_record(logging.INFO, "i")).startswith("<6>")
    assert fmt.format(_record(logging.DEBUG, "d")).startswith("<7>")
    assert fmt.format(_record(logging.CRITICAL, "c")).startswith("<2>")
    # journald makes each line a record: every line of a traceback keeps the priority.
    assert fmt.format(_record(logging.ERROR, "one\ntwo")).splitlines() == ["<3>pyrexisd.core: one", "<3>two"]


def test_json_lines_hold_the_level_the_message_and_the_job_id() -> None:
    line = json.loads(logs.JsonFormatter().format(_record(logging.WARNING, "job j-1 failed", "j-1")))
    assert line["level"] == "warning" and line["message"] == "job j-1 failed" and line["job_id"] == "j-1"
    assert line["logger"] == "pyrexisd.core" and line["time"].endswith("Z")


def test_journald_is_detected_only_when_journal_stream_names_our_stderr(tmp_path: Path) -> None:
    with open(tmp_path / "err", "w") as stream:
        st = os.fstat(stream.fileno())
        assert logs.under_journald(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not logs.under_journald(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not logs.under_journald(stream, {"JOURNAL_STREAM": "garbage"})
        assert not logs.under_journald(stream, {})
        assert not logs.under_journald(io.StringIO(), {"JOURNAL_STREAM": "1:2"})


def _journal_env(d_dir: Path) -> dict[str, str]:
    """JOURNAL_STREAM naming the file the test daemon's stderr goes to (as journald's
    stream would be named)."""
    log_path = d_dir / "daemon.log"
    log_path.touch()
    st = os.stat(log_path)
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def test_a_daemon_under_journald_writes_priorities_without_times_and_job_lines_name_the_job(
    start_daemon: Callable[..., Daemon], workdir: str
) -> None:
    d = start_daemon("--tasks", "sample_tasks", env=_journal_env(Path(workdir)))
    with d.client() as c:
        job = c.submit("t.fail", {"message": "nope"})
        c.wait(job["job_id"])
    wait_until(lambda: job["job_id"] in d.log(), 30, 0.05, "the job's line")
    lines = [line for line in d.log().splitlines() if line]
    assert lines and all(re.match(r"^<[0-7]>", line) for line in lines), lines[:5]
    assert not any(TIMESTAMP.search(line) for line in lines), lines[:5]
    assert any(line.startswith("<6>pyrexisd: pyrexisd ready") for line in lines)
    assert any(line.startswith("<7>") and f"job {job['job_id']} failed" in line for line in lines)


def test_a_daemon_elsewhere_keeps_timestamps_and_json_format_gives_json_lines(
    start_daemon: Callable[..., Daemon], workdir: str
) -> None:
    plain = start_daemon(subdir="plain", env={"JOURNAL_STREAM": "1:1"})
    assert TIMESTAMP.search(plain.log()) and "<6>" not in plain.log()
    d = start_daemon("--log-format", "json", subdir="json")
    with d.client() as c:
        job = c.submit("echo", {"value": 1})
        c.wait(job["job_id"])
    wait_until(lambda: job["job_id"] in d.log(), 30, 0.05, "the job's line")
    records = [json.loads(line) for line in d.log().splitlines() if line]
    assert any(r["message"].startswith("pyrexisd ready") and r["level"] == "info" for r in records)
    ends = [r for r in records if r.get("job_id") == job["job_id"]]
    assert ends and ends[0]["message"] == f"job {job['job_id']} completed (attempt 1)"
