"""The dashboard in a real browser: the distribution's headless Chromium, driven over the
DevTools protocol (tests/cdp.py), against a real daemon's HTTP listener."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cdp import Browser, Page, find_browser
from conftest import Daemon, wait_until
from http_helpers import HTTP_TASKS, http_url

BROWSER = find_browser()
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="no Chromium installed (apt-get install chromium, or set PYREXIS_CHROMIUM)"
)


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    assert BROWSER is not None
    browser = Browser(BROWSER, str(tmp_path / "profile"))
    try:
        yield browser.new_page()
    finally:
        browser.close()


def fraction(page: Page) -> float:
    raw = page.evaluate("document.querySelector('#job-progress').dataset.fraction || ''")
    return float(raw) if raw else 0.0


def test_submit_watch_progress_see_the_result_and_cancel(
    start_daemon: Callable[..., Daemon], page: Page, tmp_path: Path
) -> None:
    daemon = start_daemon(*HTTP_TASKS, "--http", "127.0.0.1:0")
    url = http_url(daemon)
    page.goto(url + "/")
    page.wait_for("document.querySelectorAll('#submit-task option').length > 0", what="the task list")
    page.wait_for("document.querySelector('#live').textContent === 'live'", what="the live stream")

    # Submit through the form generated from the task's schema.
    page.select("#submit-task", "t.steps")
    page.wait_for("!!document.querySelector('#arg-steps') && !!document.querySelector('#arg-delay')", what="the args fields")
    page.type("#arg-steps", "8")
    page.type("#arg-delay", "0.4")
    page.type("#submit-queue", "browser")
    page.click("#submit-button")
    job_id = page.wait_for("location.hash.startsWith('#/job/') && decodeURIComponent(location.hash.slice(6))", what="the job's page")
    page.wait_for(f"document.querySelector('#job-id').textContent === {json.dumps(job_id)}")

    # The progress bar moves, then the result appears.
    first = wait_until(lambda: 0.0 < fraction(page) < 1.0 and fraction(page), 60, 0.05, "the progress bar to start")
    wait_until(lambda: fraction(page) > first, 60, 0.05, "the progress bar to move on")
    width = page.evaluate("document.querySelector('#job-progress .bar').style.width")
    assert width.endswith("%") and float(width[:-1]) > 0
    page.screenshot(str(tmp_path / "job-running.png"))
    page.wait_for("document.querySelector('#job-result').textContent.includes('finished 8 steps')", what="the result")
    assert page.evaluate("document.querySelector('#job-status').textContent") == "completed"
    page.wait_for("document.querySelector('#job-log').textContent.includes('step 8')", what="the log tail")
    with httpx.Client(base_url=url, timeout=60) as api:
        record = api.get(f"/jobs/{job_id}").json()
        assert record["queue"] == "browser" and record["args"] == {"steps": 8, "delay": 0.4}

        # Cancel a running job from the overview's running list.
        long = api.post("/jobs", json={"task": "t.steps", "args": {"steps": 200, "delay": 0.5}}).json()
        page.evaluate("location.hash = '#/'")
        row = f"#running .row[data-id={json.dumps(long['job_id'])}]"
        page.wait_for(f"!!document.querySelector({json.dumps(row)})", what="the job in the running list")
        page.wait_for(f"document.querySelector({json.dumps(row + ' .task')}).textContent === 't.steps'", what="its task")
        page.wait_for(f"parseFloat(document.querySelector({json.dumps(row + ' .progress')}).dataset.fraction || '0') > 0",
                      what="its progress bar")  # fmt: skip
        page.screenshot(str(tmp_path / "overview.png"))
        page.click(f"{row} button")
        wait_until(lambda: api.get(f"/jobs/{long['job_id']}").json()["status"] == "cancelled", 60, 0.05, "the cancel")
        page.wait_for(f"!document.querySelector({json.dumps(row)})", what="the row to leave the running list")
        # Pause and resume a queue from its row.
        pause = "#queues button[data-queue='browser']"
        page.wait_for(f"document.querySelector({json.dumps(pause)})?.textContent === 'Pause'", what="the queue's Pause button")
        page.click(pause)
        wait_until(lambda: {q["queue"]: q for q in api.get("/queues").json()["queues"]}["browser"]["paused"], 60, 0.05, "the pause")
        page.wait_for(f"document.querySelector({json.dumps(pause)})?.textContent === 'Resume'", what="the Resume button")
        page.click(pause)
        wait_until(lambda: not {q["queue"]: q for q in api.get("/queues").json()["queues"]}["browser"]["paused"], 60, 0.05,
                   "the resume")  # fmt: skip

    for name in ("job-running.png", "overview.png"):
        shot = tmp_path / name
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and os.path.getsize(shot) > 10_000
    assert page.errors() == []


def test_a_thousand_running_jobs_draw_a_capped_list_that_stays_live(
    start_daemon: Callable[..., Daemon], page: Page, tmp_path: Path
) -> None:
    daemon = start_daemon(*HTTP_TASKS, "--http", "127.0.0.1:0", "--async-slots", "1000")
    url = http_url(daemon)
    with httpx.Client(base_url=url, timeout=60) as api:
        batch = api.post("/jobs", json=[{"task": "t.steps", "args": {"steps": 60, "delay": 0.5}} for _ in range(1000)])
        assert batch.status_code == 201, batch.text
        page.goto(url + "/")
        page.wait_for("document.querySelector('#running-count').textContent === '(1000)'", what="1,000 running jobs")
        assert page.evaluate("document.querySelectorAll('#running .row').length") == 100
        assert "900 more" in page.evaluate("document.querySelector('#running-more').textContent")
        # Live: the drawn bars keep moving while every job reports progress.
        first = page.evaluate("[...document.querySelectorAll('#running .progress')].map(p => parseFloat(p.dataset.fraction || '0'))")
        page.wait_for(f"(() => {{ const now = [...document.querySelectorAll('#running .progress')]"
                      f".map(p => parseFloat(p.dataset.fraction || '0')); const before = {json.dumps(first)};"
                      " return now.filter((f, i) => f > before[i]).length >= 50; })()",
                      what="the drawn progress bars to move")  # fmt: skip
        page.screenshot(str(tmp_path / "thousand.png"))
        assert page.evaluate("document.querySelector('#live').textContent") == "live"
    assert page.errors() == []
