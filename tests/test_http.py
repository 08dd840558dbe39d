"""The HTTP listener against a real daemon: every endpoint, the error table, Server-Sent
Events, the limits and the token. Ports are always ephemeral (``--http 127.0.0.1:0``)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from conftest import ROOT, Daemon, require_alive, shared_daemon, wait_until
from e2e_helpers import metric_values
from http_helpers import HTTP_TASKS, http_url, read_until_end, sse_events

from protocol.errors import ERROR_CODES
from pyrexisd.http.errors import STATUS
from pyrexisd.http.guard import RateLimiter, is_loopback_host

TIMEOUT = httpx.Timeout(60.0)


@pytest.fixture(scope="module")
def shared() -> Iterator[Daemon]:
    yield from shared_daemon("pxh", (*HTTP_TASKS, "--http", "127.0.0.1:0", "--kill-grace", "1"))


@pytest.fixture
def api(shared: Daemon) -> Iterator[httpx.Client]:
    require_alive(shared)
    with httpx.Client(base_url=http_url(shared), timeout=TIMEOUT) as client:
        yield client


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert error["code"] == code, error
    return error  # type: ignore[no-any-return]


def submit(api: httpx.Client, task: str, args: dict[str, Any], **spec: Any) -> dict[str, Any]:
    response = api.post("/jobs", json={"task": task, "args": args, **spec})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def wait_done(api: httpx.Client, job_id: str) -> dict[str, Any]:
    response = api.get(f"/jobs/{job_id}/wait", params={"timeout": 30})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


# -- pure parts --------------------------------------------------------------------------
def test_every_error_code_of_the_contract_has_one_status() -> None:
    assert set(STATUS) == set(ERROR_CODES)
    assert (STATUS["not_found"], STATUS["invalid_request"], STATUS["conflict"], STATUS["invalid_state"]) == (404, 422, 409, 409)
    assert (STATUS["overloaded"], STATUS["unauthorized"], STATUS["storage_error"], STATUS["shutting_down"]) == (429, 403, 503, 503)
    assert STATUS["internal"] == 500


def test_rate_limiter_spends_and_refills_tokens() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=4.0, clock=lambda: now[0], max_clients=2)
    assert [limiter.take("a") for _ in range(4)] == [0.0] * 4
    assert limiter.take("a") == pytest.approx(0.5)  # one token comes every 0.5 s
    now[0] += 0.5
    assert limiter.take("a") == 0.0
    assert limiter.take("b") == 0.0 and limiter.take("c") == 0.0  # "a" is forgotten: a fresh bucket
    assert [limiter.take("a") for _ in range(4)] == [0.0] * 4


def test_host_check_admits_only_loopback_names() -> None:
    for host in ("localhost", "localhost:8765", "127.0.0.1:1", "127.0.0.2", "[::1]:8765", "[::1]"):
        assert is_loopback_host(host), host
    for host in ("evil.example", "evil.example:8765", "10.0.0.1:80", "", "[2001:db8::1]:80"):
        assert not is_loopback_host(host), host


# -- jobs --------------------------------------------------------------------------------
def test_submit_get_wait_and_list_with_cursor_paging(api: httpx.Client) -> None:
    job = submit(api, "echo", {"value": {"n": 1}}, queue="h-list", labels={"k": "v"})
    assert job["status"] in ("pending", "running") and job["queue"] == "h-list"
    assert api.get(f"/jobs/{job['job_id']}").json()["job_id"] == job["job_id"]
    done = wait_done(api, job["job_id"])
    assert done["status"] == "completed" and done["result"] == {"n": 1}

    batch = api.post("/jobs", json=[{"task": "echo", "args": {"value": i}, "queue": "h-list"} for i in range(4)])
    assert batch.status_code == 201, batch.text
    ids = [j["job_id"] for j in batch.json()["jobs"]]
    assert len(ids) == 4
    seen: list[str] = []
    after = None
    while True:
        params: dict[str, Any] = {"queue": "h-list", "limit": 2}
        if after:
            params["after"] = after
        page = api.get("/jobs", params=params).json()
        assert len(page["jobs"]) <= 2
        seen += [j["job_id"] for j in page["jobs"]]
        after = page["next"]
        if after is None:
            break
    assert seen == [job["job_id"], *ids]
    newest = api.get("/jobs", params={"queue": "h-list", "newest_first": "true", "limit": 10}).json()["jobs"]
    assert [j["job_id"] for j in newest] == list(reversed(seen))
    for i in ids:
        wait_done(api, i)
    completed = api.get("/jobs", params=[("queue", "h-list"), ("status", "completed"), ("status", "failed")]).json()
    assert len(completed["jobs"]) == 5


def test_a_batch_with_one_bad_spec_stores_nothing(api: httpx.Client) -> None:
    before = api.get("/jobs", params={"queue": "h-atomic"}).json()["jobs"]
    bad = api.post("/jobs", json=[{"task": "echo", "args": {"value": 1}, "queue": "h-atomic"},
                                  {"task": "echo", "args": {}, "queue": "h-atomic", "priority": 5000}])
    error = error_of(bad, 422, "invalid_request")
    assert error["details"]["index"] == 1
    assert api.get("/jobs", params={"queue": "h-atomic"}).json()["jobs"] == before == []


def test_cancel_retry_hold_release_update(api: httpx.Client) -> None:
    job = submit(api, "t.nap", {"seconds": 60})
    cancelled = api.delete(f"/jobs/{job['job_id']}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    error = error_of(api.delete(f"/jobs/{job['job_id']}"), 409, "invalid_state")
    assert error["details"]["status"] == "cancelled"
    again = api.post(f"/jobs/{job['job_id']}/retry")
    assert again.status_code == 200 and again.json()["status"] in ("pending", "running")
    assert api.delete(f"/jobs/{job['job_id']}").json()["status"] == "cancelled"

    later = submit(api, "echo", {"value": 1}, delay=3600)
    assert later["status"] == "scheduled"
    assert api.post(f"/jobs/{later['job_id']}/hold").json()["status"] == "held"
    updated = api.patch(f"/jobs/{later['job_id']}", json={"priority": 7, "queue": "h-moved"})
    assert updated.status_code == 200 and (updated.json()["priority"], updated.json()["queue"]) == (7, "h-moved")
    assert api.post(f"/jobs/{later['job_id']}/release").json()["status"] == "scheduled"
    error_of(api.post(f"/jobs/{later['job_id']}/release"), 409, "invalid_state")
    api.delete(f"/jobs/{later['job_id']}")


def test_errors_answer_with_the_status_of_the_table(api: httpx.Client) -> None:
    assert error_of(api.get("/jobs/no-such-job"), 404, "not_found")["details"] == {"job_id": "no-such-job"}
    error_of(api.delete("/jobs/no-such-job"), 404, "not_found")
    error_of(api.get("/jobs/no-such-job/logs", params={"follow": 1}), 404, "not_found")
    error_of(api.post("/jobs", json={"task": "no.such.task", "args": {}}), 422, "unknown_task")
    bad_args = error_of(api.post("/jobs", json={"task": "sleep", "args": {"seconds": -1}}), 422, "invalid_request")
    assert bad_args["details"]["errors"]
    error_of(api.get("/jobs", params={"limit": 0}), 422, "invalid_request")
    error_of(api.get("/jobs", params={"status": "nonsense"}), 422, "invalid_request")
    error_of(api.post("/jobs", content=b"{not json", headers={"content-type": "application/json"}), 422, "invalid_request")
    error_of(api.post("/jobs", content=b"task=echo", headers={"content-type": "application/x-www-form-urlencoded"}),
             422, "invalid_request")  # fmt: skip
    error_of(api.post("/jobs", json="just a string"), 422, "invalid_request")
    spec = {"task": "echo", "args": {"value": 1}, "job_id": "h-conflict"}
    assert api.post("/jobs", json=spec).status_code == 201
    assert api.post("/jobs", json=spec).json()["job_id"] == "h-conflict"  # the same spec: the same job
    error_of(api.post("/jobs", json={**spec, "args": {"value": 2}}), 409, "conflict")
    napping = submit(api, "t.nap", {"seconds": 30})
    error_of(api.get(f"/jobs/{napping['job_id']}/wait", params={"timeout": 0.2}), 408, "timeout")
    api.delete(f"/jobs/{napping['job_id']}")
    error_of(api.get("/no/such/route"), 404, "not_found")
    error_of(api.put("/jobs"), 405, "invalid_request")
    error_of(api.patch("/queues/h-q", json={"nothing": 1}), 422, "invalid_request")
    error_of(api.patch("/queues/h-q", json={"weight": -1}), 422, "invalid_request")


# -- streams -----------------------------------------------------------------------------
def test_logs_page_and_follow_as_server_sent_events(api: httpx.Client) -> None:
    job = submit(api, "t.steps", {"steps": 4, "delay": 0.2})
    with api.stream("GET", f"/jobs/{job['job_id']}/logs", params={"follow": 1}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events, final = read_until_end(response)
    lines = [data["line"] for name, data, _ in events if name == "log"]
    assert lines == ["step 1", "step 2", "step 3", "step 4"]
    assert [ident for _, _, ident in events] == ["1", "2", "3", "4"]
    assert final == {"ok": True, "result": {"next": 5}}
    assert api.get(f"/jobs/{job['job_id']}").json()["status"] == "completed"

    page = api.get(f"/jobs/{job['job_id']}/logs", params={"since": 3}).json()
    assert [line["line"] for line in page["lines"]] == ["step 3", "step 4"] and page["next"] == 5
    # A client that reconnects with Last-Event-ID resumes after the line it saw.
    with api.stream("GET", f"/jobs/{job['job_id']}/logs", params={"follow": 1}, headers={"Last-Event-ID": "2"}) as response:
        events, final = read_until_end(response)
    assert [data["seq"] for _, data, _ in events] == [3, 4]


def test_events_stream_the_watch_of_a_task(api: httpx.Client) -> None:
    got: list[tuple[str, Any]] = []
    opened = threading.Event()
    url = str(api.base_url)

    def watch() -> None:
        with httpx.Client(base_url=url, timeout=TIMEOUT) as c, c.stream("GET", "/events", params={"task": "t.steps"}) as response:
            assert response.status_code == 200
            opened.set()
            for name, data, _ in sse_events(response):
                got.append((name, data))
                if name == "state" and data["status"] == "completed":
                    return

    reader = threading.Thread(target=watch, daemon=True)
    reader.start()
    assert opened.wait(30)
    wait_until(lambda: api.get("/metrics").text.count('pyrexis_streams{transport="http"} 1.0'), 30, 0.05, "the stream to open")
    job = submit(api, "t.steps", {"steps": 3, "delay": 0.1})
    reader.join(30)
    assert not reader.is_alive()
    mine = [(name, data) for name, data in got if data["job_id"] == job["job_id"]]
    statuses = [data["status"] for name, data in mine if name == "state"]
    assert statuses[-1] == "completed" and "running" in statuses
    fractions = [data["fraction"] for name, data in mine if name == "progress"]
    assert fractions and fractions == sorted(fractions) and fractions[-1] == 1.0


def test_wait_with_events_streams_the_job_then_its_record(api: httpx.Client) -> None:
    job = submit(api, "t.parts", {"n": 3})
    with api.stream("GET", f"/jobs/{job['job_id']}/wait", params={"events": 1, "timeout": 30}) as response:
        events, final = read_until_end(response)
    assert events[0][0] == "state"
    assert final["ok"] and final["result"]["status"] == "completed" and final["result"]["result"] == [0, 1, 2]
    outputs = api.get(f"/jobs/{job['job_id']}/outputs").json()
    assert [o["value"] for o in outputs["outputs"]] == [0, 1, 2] and outputs["next"] == 4


# -- queues, schedules, figures, pages -----------------------------------------------------
def test_pause_resume_and_configure_a_queue(api: httpx.Client) -> None:
    row = api.patch("/queues/h-paused", json={"paused": True, "weight": 3, "max_concurrency": 2})
    assert row.status_code == 200, row.text
    assert row.json() | {"waiting": 0, "running": 0} == {"queue": "h-paused", "paused": True, "weight": 3.0,
                                                          "max_concurrency": 2, "aging": 1.0, "waiting": 0, "running": 0}  # fmt: skip
    job = submit(api, "echo", {"value": 1}, queue="h-paused")
    assert job["status"] == "pending"
    rows = {q["queue"]: q for q in api.get("/queues").json()["queues"]}
    assert rows["h-paused"]["waiting"] == 1 and rows["h-paused"]["paused"]
    assert api.patch("/queues/h-paused", json={"paused": False}).json()["paused"] is False
    assert wait_done(api, job["job_id"])["status"] == "completed"


def test_schedules_add_list_remove(api: httpx.Client) -> None:
    added = api.post("/schedules", json={"name": "h-every", "every": 3600, "job": {"task": "echo", "args": {"value": 1}}})
    assert added.status_code == 201, added.text
    assert "h-every" in [s["name"] for s in api.get("/schedules").json()["schedules"]]
    error_of(api.post("/schedules", json={"name": "h-every", "every": 60, "job": {"task": "echo", "args": {"value": 2}}}), 409, "conflict")
    assert api.delete("/schedules/h-every").status_code == 200
    error_of(api.delete("/schedules/h-every"), 404, "not_found")


def test_stats_tasks_health_openapi_and_pages(api: httpx.Client) -> None:
    stats = api.get("/stats").json()
    assert {"uptime", "by_status", "by_queue", "slots", "completed_per_s"} <= set(stats)
    tasks = {t["name"]: t for t in api.get("/tasks").json()["tasks"]}
    assert tasks["t.steps"]["schema"]["properties"]["steps"]["type"] == "integer"
    assert api.get("/healthz").json()["status"] == "ok"
    spec = api.get("/openapi.json").json()
    for path in ("/jobs", "/jobs/{job_id}", "/jobs/{job_id}/retry", "/jobs/{job_id}/logs", "/jobs/{job_id}/wait",
                 "/events", "/queues", "/queues/{name}", "/stats", "/tasks", "/healthz", "/metrics"):  # fmt: skip
        assert path in spec["paths"], path
    assert {"post", "get"} <= set(spec["paths"]["/jobs"]) and "delete" in spec["paths"]["/jobs/{job_id}"]
    for page, needle in (("/", "PYREXIS"), ("/docs", "openapi.json"), ("/static/app.js", "EventSource"), ("/static/app.css", "progress")):
        response = api.get(page)
        assert response.status_code == 200 and needle in response.text, page
        assert "default-src 'self'" in response.headers["content-security-policy"]
        assert "//cdn" not in response.text and "https://" not in response.text
    error_of(api.get("/static/../../etc/passwd"), 404, "not_found")


def test_requests_from_foreign_pages_and_hosts_are_refused(api: httpx.Client) -> None:
    error_of(api.get("/stats", headers={"Host": "rebound.example"}), 403, "unauthorized")
    error_of(api.post("/jobs", json={"task": "echo", "args": {}}, headers={"Origin": "http://evil.example"}), 403, "unauthorized")
    own = str(api.base_url).rstrip("/")
    assert api.post("/jobs", json={"task": "echo", "args": {"value": 1}}, headers={"Origin": own}).status_code == 201


# -- limits, on a daemon of their own (each test from its own client address) --------------
@pytest.fixture(scope="module")
def limited() -> Iterator[Daemon]:
    yield from shared_daemon("pxl", (*HTTP_TASKS, "--http", "127.0.0.1:0", "--http-rate", "5",
                                     "--http-max-streams", "2", "--http-max-body", "4096"))  # fmt: skip


def client_from(daemon: Daemon, source: str) -> httpx.Client:
    require_alive(daemon)
    return httpx.Client(base_url=http_url(daemon), timeout=TIMEOUT, transport=httpx.HTTPTransport(local_address=source))


def test_requests_past_the_rate_answer_429_with_retry_after(limited: Daemon) -> None:
    with client_from(limited, "127.0.0.3") as api:
        answers = [api.get("/healthz") for _ in range(30)]
    refused = [r for r in answers if r.status_code == 429]
    assert len([r for r in answers if r.status_code == 200]) >= 10  # the burst: twice the rate
    assert refused, [r.status_code for r in answers]
    error = error_of(refused[0], 429, "overloaded")
    assert error["details"]["limit"] == "http_rate" and int(refused[0].headers["retry-after"]) >= 1
    with client_from(limited, "127.0.0.4") as other:  # another client has its own bucket
        assert other.get("/healthz").status_code == 200


def test_a_body_past_the_limit_answers_413_and_nothing_is_stored(limited: Daemon) -> None:
    with client_from(limited, "127.0.0.5") as api:
        error = error_of(api.post("/jobs", json={"task": "echo", "args": {"value": "x" * 5000}, "queue": "h-big"}),
                         413, "frame_too_large")  # fmt: skip
        assert error["details"] == {"limit": "http_max_body", "value": 4096}

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            yield b'{"task": "echo", "args": {"value": "'
            for _ in range(10):
                yield b"y" * 1000
            yield b'"}}'

        error_of(api.post("/jobs", content=chunks(), headers={"content-type": "application/json"}), 413, "frame_too_large")
        assert api.get("/jobs", params={"queue": "h-big"}).json()["jobs"] == []
        assert api.post("/jobs", json={"task": "echo", "args": {"value": "small"}}).status_code == 201


def test_event_streams_past_the_limit_answer_429(limited: Daemon) -> None:
    with client_from(limited, "127.0.0.6") as api:
        with api.stream("GET", "/events") as one, api.stream("GET", "/events") as two:
            assert one.status_code == two.status_code == 200
            third = api.get("/events")
            error = error_of(third, 429, "overloaded")
            assert error["details"]["limit"] == "http_streams" and third.headers["retry-after"] == "5"

        def reopened() -> bool:
            with api.stream("GET", "/events") as again:
                return again.status_code == 200

        wait_until(reopened, 30, 0.1, "a slot to be free once a stream closed")


# -- metrics: a known run on a fresh daemon ------------------------------------------------


def total(values: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for got, v in values.get(name, []) if all(got.get(k) == w for k, w in labels.items()))


def test_metrics_count_a_known_run_and_the_socket_op_returns_the_same(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon(*HTTP_TASKS, "--http", "127.0.0.1:0")
    with httpx.Client(base_url=http_url(daemon), timeout=TIMEOUT) as api:
        done = [submit(api, "echo", {"value": i}, queue="m-a") for i in range(5)]
        failed = [submit(api, "t.fail", {}, queue="m-b") for _ in range(2)]
        napping = submit(api, "t.nap", {"seconds": 60}, queue="m-b")
        api.delete(f"/jobs/{napping['job_id']}")
        waiting = submit(api, "echo", {"value": 0}, queue="m-c", delay=3600)
        for job in done + failed:
            wait_done(api, job["job_id"])
        response = api.get("/metrics")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        values = metric_values(response.text)

    assert total(values, "pyrexis_jobs_submitted_total") == 9
    assert total(values, "pyrexis_jobs_submitted_total", queue="m-a", task="echo") == 5
    assert total(values, "pyrexis_jobs_ended_total", outcome="completed") == 5
    assert total(values, "pyrexis_jobs_ended_total", outcome="failed", task="t.fail") == 2
    assert total(values, "pyrexis_jobs_ended_total", outcome="cancelled", queue="m-b") == 1
    assert total(values, "pyrexis_jobs_started_total") == 8  # the scheduled one has not started
    assert total(values, "pyrexis_jobs", status="completed", queue="m-a") == 5
    assert total(values, "pyrexis_jobs", status="scheduled", queue="m-c") == 1
    assert total(values, "pyrexis_jobs", status="failed") == 2
    assert total(values, "pyrexis_job_queue_wait_seconds_count") == 8
    assert total(values, "pyrexis_job_run_seconds_count") == 8  # 5 completed, 2 failed, 1 cancelled
    assert total(values, "pyrexis_store_commit_seconds_count") >= 1
    assert total(values, "pyrexis_store_commit_writes_sum") >= 9
    assert total(values, "pyrexis_event_loop_lag_seconds_count") >= 1
    assert total(values, "pyrexis_http_requests_total", method="POST", route="/jobs", code="201") == 9
    assert total(values, "pyrexis_connections", transport="http") >= 1
    assert total(values, "process_resident_memory_bytes") > 0
    for name in values:  # no job id is ever a label value
        for labels, _ in values[name]:
            assert waiting["job_id"] not in labels.values()

    with daemon.client() as client:
        assert "metrics" in client.request("hello", {"protocol": 1})["ops"]
        result = client.request("metrics")
    assert result["content_type"].startswith("text/plain")
    again = metric_values(result["text"])
    assert total(again, "pyrexis_jobs_submitted_total") == 9
    assert set(again) >= {n for n in values if n.startswith("pyrexis_jobs")}


def test_queue_label_values_are_capped() -> None:
    from pyrexisd.metrics import MAX_LABEL_VALUES, OTHER, Metrics

    metrics = Metrics(0.0)
    for i in range(MAX_LABEL_VALUES + 50):
        metrics.moved(f"q{i}", "thread", None, "pending", task="echo")
    queues = {q for q, _ in metrics.submitted}
    assert len(queues) == MAX_LABEL_VALUES + 1 and OTHER in queues
    assert metrics.submitted[(OTHER, "echo")] == 50

    # Exported, every folded series appears once (duplicates would make the text invalid).
    from pyrexisd.prometheus import Exporter

    rows = [{"queue": f"q{i}", "paused": i % 2 == 0} for i in range(MAX_LABEL_VALUES + 50)]
    values = metric_values(Exporter(metrics, lambda: {"thread": 1}, lambda: rows).text().decode())
    assert total(values, "pyrexis_jobs", queue=OTHER, status="pending") == 50
    assert total(values, "pyrexis_queue_paused", queue=OTHER) == 1.0
    for name in ("pyrexis_jobs", "pyrexis_queue_paused", "pyrexis_jobs_submitted_total"):
        keys = [tuple(sorted(labels.items())) for labels, _ in values[name]]
        assert len(keys) == len(set(keys)), name


# -- the listener's own start and stop -----------------------------------------------------
def test_stopping_ends_open_streams_and_exits_cleanly(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon(*HTTP_TASKS, "--http", "127.0.0.1:0")
    with httpx.Client(base_url=http_url(daemon), timeout=TIMEOUT) as api:
        with api.stream("GET", "/events") as response:
            assert response.status_code == 200
            assert daemon.proc is not None
            daemon.proc.send_signal(signal.SIGTERM)
            events, final = read_until_end(response)
    assert final["ok"] is False and final["error"]["code"] == "shutting_down"
    assert daemon.proc.wait(60) == 0


def test_a_non_loopback_address_needs_a_token_file(start_daemon: Callable[..., Daemon], workdir: str) -> None:
    refused = start_daemon("--http", "0.0.0.0:0", wait=False, subdir="a")
    assert refused.proc is not None and refused.proc.wait(60) == 1
    assert "refusing to serve HTTP on 0.0.0.0:0 without --http-token-file" in refused.log()

    token_file = os.path.join(workdir, "token")
    with open(token_file, "w") as fh:
        fh.write("s3cret-token-for-the-test-0123456789\n")
    os.chmod(token_file, 0o644)
    loose = start_daemon("--http", "0.0.0.0:0", "--http-token-file", token_file, wait=False, subdir="b")
    assert loose.proc is not None and loose.proc.wait(60) == 1
    assert "readable by others" in loose.log()

    os.chmod(token_file, 0o600)
    daemon = start_daemon(*HTTP_TASKS, "--http", "0.0.0.0:0", "--http-token-file", token_file, subdir="c")
    port = http_url(daemon).rsplit(":", 1)[1]
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT) as api:
        missing = api.get("/jobs")
        error_of(missing, 401, "unauthorized")
        assert missing.headers["www-authenticate"].startswith("Bearer")
        error_of(api.get("/jobs", headers={"Authorization": "Bearer wrong-token-of-the-same-length-0123"}), 401, "unauthorized")
        error_of(api.get("/metrics", headers={"Authorization": "Basic czNjcmV0"}), 401, "unauthorized")
        error_of(api.post("/jobs", json={"task": "echo", "args": {}}), 401, "unauthorized")
        good = {"Authorization": "Bearer s3cret-token-for-the-test-0123456789"}
        assert api.get("/jobs", headers=good).status_code == 200
        job = api.post("/jobs", json={"task": "echo", "args": {"value": 3}}, headers=good)
        assert job.status_code == 201
        # The static pages and the health check hold no data: served without the token.
        assert api.get("/healthz").status_code == 200 and api.get("/").status_code == 200
        # A token holder may use any Host name (the token, not the name, is the check).
        assert api.get("/stats", headers={**good, "Host": "jobs.example:80"}).status_code == 200


def test_a_unix_socket_listener_is_owner_only_and_removed_at_exit(start_daemon: Callable[..., Daemon], workdir: str) -> None:
    path = os.path.join(workdir, "h.sock")
    daemon = start_daemon(*HTTP_TASKS, "--http", f"unix:{path}")
    http_url(daemon)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with httpx.Client(transport=httpx.HTTPTransport(uds=path), base_url="http://pyrexis", timeout=TIMEOUT) as api:
        job = submit(api, "echo", {"value": "over unix"})
        assert wait_done(api, job["job_id"])["result"] == "over unix"
    assert daemon.terminate() == 0
    assert not os.path.exists(path)


def test_without_the_extra_http_exits_with_one_line_naming_it(workdir: str) -> None:
    shim = os.path.join(workdir, "shim", "fastapi")
    os.makedirs(shim)
    with open(os.path.join(shim, "__init__.py"), "w") as fh:
        fh.write("raise ImportError('fastapi is not installed (test shim)')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(shim), str(ROOT)]))
    proc = subprocess.run(
        [sys.executable, "-m", "pyrexisd", "--socket", os.path.join(workdir, "s.sock"), "--db", os.path.join(workdir, "d.db"),
         "--http", "127.0.0.1:0"],
        env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install 'pyrexis[http]'" in lines[0], proc.stderr
    assert not os.path.exists(os.path.join(workdir, "s.sock"))


def test_a_port_in_use_fails_the_start_with_one_line(start_daemon: Callable[..., Daemon]) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = start_daemon("--http", f"127.0.0.1:{port}", wait=False)
        assert daemon.proc is not None and daemon.proc.wait(60) == 1
    assert f"cannot listen for HTTP on 127.0.0.1:{port}: Address already in use" in daemon.log()
    assert not os.path.exists(daemon.socket)  # the protocol's socket is not left behind
