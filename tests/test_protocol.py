"""End-to-end tests of the wire protocol, v1 (``docs``: /work/shared/design/protocol-v1.md).

A real ``pyrexisd`` in a subprocess, a real Unix socket, a real SQLite file; the client
side is nothing but ``socket`` + ``msgpack`` (``RawClient``). Waiting is polling with a
deadline (``wait_until``) or the protocol's own ``wait`` with a timeout, never a bare
sleep used as synchronisation.

Most tests share one module-scoped daemon and keep out of each other's way with unique
queue names and job ids; tests that need a daemon of their own (global pause, restarts,
odd flags, exact global counts, shutdown) start one with ``start_daemon``.
"""

from __future__ import annotations

import os
import signal
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
from conftest import Daemon, RawClient, require_alive, shared_daemon, wait_until

# -- constants from the contract ---------------------------------------------------------

JOB_KEYS = {
    "job_id", "task", "args", "queue", "priority", "mode", "status", "attempts", "max_retries",
    "created_at", "started_at", "finished_at", "run_at", "result", "error", "progress",
    "depends_on", "dependency_policy", "labels", "on_interrupt",
}
STATUSES = {"pending", "blocked", "scheduled", "retrying", "held", "running", "completed", "failed", "cancelled"}
WAITING = {"pending", "blocked", "scheduled", "retrying", "held"}
TERMINAL = {"completed", "failed", "cancelled"}
ERROR_TYPES = {
    "exception", "exit_code", "timeout", "interrupted", "worker_died", "cancelled",
    "dependency_failed", "result_too_large",
}
IMPLEMENTED_OPS = {
    "hello", "submit", "submit_many", "get", "list", "cancel", "retry", "wait", "logs",
    "stats", "tasks", "queues", "pause", "resume", "configure_queue",
}
CONTRACT_OPS = IMPLEMENTED_OPS | {
    "watch", "close", "hold", "release", "update", "schedule_add", "schedule_list", "schedule_remove",
}
QUEUE_ROW_KEYS = {"queue", "paused", "weight", "max_concurrency", "aging", "waiting", "running"}
STATS_KEYS = {
    "uptime", "by_status", "by_queue", "running_by_mode", "slots", "completed_per_s", "submit_to_start_ms",
}
SAMPLE_ARGS = ("--tasks", "sample_tasks", "--kill-grace", "2")


# -- helpers -----------------------------------------------------------------------------

def uid(prefix: str = "") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def check_error(reply: dict[str, Any], code: str, rid: Any = "any") -> dict[str, Any]:
    """A failure frame with ``code``; its ``error`` map, checked against the contract."""
    assert reply.get("ok") is False, f"expected error {code}, got {reply!r}"
    assert "id" in reply, reply
    if rid != "any":
        assert reply["id"] == rid, f"expected id {rid!r}, got {reply['id']!r}"
    err = reply["error"]
    assert isinstance(err, dict)
    assert err["code"] == code, f"expected {code}, got {err['code']}: {err.get('message')} {err.get('details')}"
    assert isinstance(err["message"], str)
    if code == "invalid_request":
        details = err.get("details")
        assert isinstance(details, dict), f"invalid_request without details: {err!r}"
        assert isinstance(details.get("errors"), list), f"invalid_request details without errors: {err!r}"
        for e in details["errors"]:
            assert isinstance(e["loc"], list) and isinstance(e["msg"], str), e
    if code == "invalid_state":
        assert isinstance(err.get("details"), dict) and isinstance(err["details"].get("status"), str), err
    return err


def call_error(c: RawClient, op: str, args: dict[str, Any] | None, code: str) -> dict[str, Any]:
    """Call ``op`` and check that it fails with ``code`` under the request's own id."""
    rid = c._next_id + 1  # the id RawClient.call is about to use
    reply = c.call(op, args)
    return check_error(reply, code, rid)


def locs(err: dict[str, Any]) -> list[list[Any]]:
    return [e["loc"] for e in err["details"]["errors"]]


def ok(reply: dict[str, Any]) -> Any:
    assert reply.get("ok") is True, f"expected success, got {reply!r}"
    return reply["result"]


def check_job(job: dict[str, Any]) -> dict[str, Any]:
    """Every key of the contract's Job record, with the types the contract gives."""
    missing = JOB_KEYS - set(job)
    assert not missing, f"job record lacks {sorted(missing)}: {job!r}"
    assert isinstance(job["job_id"], str) and job["job_id"]
    assert isinstance(job["task"], str)
    assert isinstance(job["args"], dict)
    assert isinstance(job["queue"], str)
    assert isinstance(job["priority"], int) and not isinstance(job["priority"], bool)
    assert job["mode"] in {"thread", "process", "async", "shell"}
    assert job["status"] in STATUSES
    assert isinstance(job["attempts"], int) and job["attempts"] >= 0
    assert isinstance(job["max_retries"], int) and job["max_retries"] >= 0
    assert isinstance(job["created_at"], float)
    for k in ("started_at", "finished_at", "run_at"):
        assert job[k] is None or isinstance(job[k], float), (k, job[k])
    assert isinstance(job["depends_on"], list)
    assert job["dependency_policy"] in {"all_completed", "all_terminal"}
    assert isinstance(job["labels"], dict)
    assert job["on_interrupt"] in {"retry", "fail"}
    if job["status"] != "completed":
        assert job["result"] is None
    if job["status"] in ("failed", "cancelled"):
        err = job["error"]
        assert isinstance(err, dict) and {"type", "message", "retryable"} <= set(err), err
        assert err["type"] in ERROR_TYPES and isinstance(err["message"], str) and isinstance(err["retryable"], bool)
    if job["status"] == "completed":
        assert job["error"] is None
    if job["progress"] is not None:
        assert isinstance(job["progress"], dict) and {"fraction", "message"} <= set(job["progress"])
    if job["status"] in TERMINAL:
        assert isinstance(job["finished_at"], float)
    if job["status"] in ("pending", "scheduled") and job["attempts"] == 0:
        assert job["started_at"] is None and job["finished_at"] is None
    return job


def get_status(c: RawClient, job_id: str) -> str:
    return c.get(job_id)["status"]  # type: ignore[no-any-return]


def record_if(c: RawClient, job_id: str, status: str) -> dict[str, Any] | None:
    """The job's record when it has ``status``, else None (a ``wait_until`` predicate)."""
    record = c.get(job_id)
    return record if record["status"] == status else None


def collect_frames(c: RawClient, n: int) -> dict[int | None, list[dict[str, Any]]]:
    """Read ``n`` final frames (events are kept with them), keyed by id."""
    out: dict[int | None, list[dict[str, Any]]] = {}
    finals = 0
    while finals < n:
        f = c.recv()
        out.setdefault(f.get("id"), []).append(f)
        if "event" not in f:
            finals += 1
    return out


def logs_of(c: RawClient, job_id: str, since: int | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    args: dict[str, Any] = {"job_id": job_id}
    if since is not None:
        args["since"] = since
    return c.stream("logs", args)


def list_all(c: RawClient, limit: int, **filters: Any) -> tuple[list[dict[str, Any]], int]:
    """Every job matching ``filters``, following ``next``; and the number of pages."""
    jobs: list[dict[str, Any]] = []
    after = None
    pages = 0
    while True:
        args = {"limit": limit, **filters}
        if after is not None:
            args["after"] = after
        page = ok(c.call("list", args))
        pages += 1
        assert set(page) >= {"jobs", "next"}, page
        assert len(page["jobs"]) <= limit
        jobs.extend(page["jobs"])
        after = page["next"]
        if after is None:
            return jobs, pages
        assert isinstance(after, str)
        assert pages < 10_000


def nested_map_body(depth: int) -> bytes:
    """``{"id": 1, "op": "hello", "args": {"x": [[[...nil...]]]}}`` with ``depth`` lists."""
    return (
        b"\x83"
        + pack("id") + pack(1)
        + pack("op") + pack("hello")
        + pack("args") + b"\x81" + pack("x")
        + b"\x91" * depth + b"\xc0"
    )


# -- fixtures ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shared() -> Iterator[Daemon]:
    """One daemon for the tests that do not need one of their own."""
    yield from shared_daemon("pxp", SAMPLE_ARGS)


@pytest.fixture
def c(shared: Daemon) -> Iterator[RawClient]:
    require_alive(shared)
    with shared.client() as client:
        yield client


def sleeper(c: RawClient, seconds: float = 30.0, **spec: Any) -> dict[str, Any]:
    """A running ``sleep`` job (async mode starts at once)."""
    job = c.submit("sleep", {"seconds": seconds}, **spec)
    wait_until(lambda: get_status(c, job["job_id"]) == "running", 10, what="the sleep job to run")
    return job


# =======================================================================================
# hello and the op table
# =======================================================================================

def test_hello_shape(c: RawClient) -> None:
    result = c.request("hello", {"protocol": 1, "client": "test_protocol/1"})
    assert result["protocol"] == 1
    assert result["server"]["name"] == "pyrexisd"
    assert isinstance(result["server"]["version"], str) and result["server"]["version"]
    assert result["max_frame"] == 16 * 1024 * 1024
    ops = result["ops"]
    assert isinstance(ops, list) and all(isinstance(o, str) for o in ops)
    assert len(ops) == len(set(ops))
    assert IMPLEMENTED_OPS <= set(ops), f"missing ops: {IMPLEMENTED_OPS - set(ops)}"


def test_hello_is_optional_and_args_optional(c: RawClient) -> None:
    # No hello first: any op may come first; hello without args means protocol 1.
    assert isinstance(c.request("stats"), dict)
    assert c.request("hello")["protocol"] == 1


def test_hello_other_protocol_is_rejected_with_supported(c: RawClient) -> None:
    err = call_error(c, "hello", {"protocol": 2}, "invalid_request")
    assert err["details"]["supported"] == [1]
    call_error(c, "hello", {"protocol": "1"}, "invalid_request")
    assert c.request("hello", {"protocol": 1})["protocol"] == 1


def test_ops_absent_from_hello_answer_unknown_op_and_listed_ops_exist(c: RawClient) -> None:
    ops = set(c.request("hello", {"protocol": 1})["ops"])
    for op in sorted(CONTRACT_OPS - ops):
        call_error(c, op, {}, "unknown_op")
    for op in sorted(ops - {"watch"}):  # watch streams until closed
        # Every listed op is implemented: whatever else it answers, it is not unknown_op.
        reply = c.call(op, {"job_id": "no-such-job-" + uid(), "queue": uid("q"), "id": 999_999})
        if not reply["ok"]:
            assert reply["error"]["code"] != "unknown_op", (op, reply)
    for op in ("frobnicate", "", "HELLO"):
        err = call_error(c, op, None, "unknown_op")
        assert err["code"] == "unknown_op"


# =======================================================================================
# requests: ids, op, args
# =======================================================================================

@pytest.mark.parametrize(
    "message",
    [
        {"op": "hello"},
        {"id": -1, "op": "hello"},
        {"id": True, "op": "hello"},
        {"id": False, "op": "hello"},
        {"id": "7", "op": "hello"},
        {"id": 1.0, "op": "hello"},
        {"id": None, "op": "hello"},
    ],
    ids=["missing", "negative", "true", "false", "str", "float", "nil"],
)
def test_bad_request_id_is_invalid_request_with_nil_id(c: RawClient, message: dict[str, Any]) -> None:
    """An id that is not an integer >= 0 is refused; the answer carries the id only when it
    was an integer (so the client can still match it), else nil."""
    c.send(message)
    reply = c.recv()
    sent = message.get("id")
    echoed = sent if isinstance(sent, int) and not isinstance(sent, bool) else None
    err = check_error(reply, "invalid_request", echoed)
    assert ["id"] in locs(err)
    assert c.request("hello", {"protocol": 1})["protocol"] == 1


def test_large_ids_are_echoed(c: RawClient) -> None:
    for rid in (2**31, 2**63, 2**64 - 1):
        c.send({"id": rid, "op": "hello"})
        reply = c.recv()
        assert reply["id"] == rid and ok(reply)["protocol"] == 1


def test_hello_bad_client_type(c: RawClient) -> None:
    call_error(c, "hello", {"protocol": 1, "client": 5}, "invalid_request")


def test_id_zero_is_valid(c: RawClient) -> None:
    c.send({"id": 0, "op": "hello", "args": {"protocol": 1}})
    reply = c.recv()
    assert reply["id"] == 0 and ok(reply)["protocol"] == 1


def test_missing_or_non_string_op_is_invalid_request_with_id(c: RawClient) -> None:
    c.send({"id": 41})
    err = check_error(c.recv(), "invalid_request", 41)
    assert ["op"] in locs(err)
    c.send({"id": 42, "op": 5})
    err = check_error(c.recv(), "invalid_request", 42)
    assert ["op"] in locs(err)


@pytest.mark.parametrize("args", [[1, 2], "x", 5, True], ids=["list", "str", "int", "bool"])
def test_args_not_a_map_is_invalid_request(c: RawClient, args: Any) -> None:
    c.send({"id": 43, "op": "get", "args": args})
    err = check_error(c.recv(), "invalid_request", 43)
    assert ["args"] in locs(err)


def test_unknown_request_keys_are_ignored(c: RawClient) -> None:
    c.send({"id": 44, "op": "hello", "args": {"protocol": 1, "future": [1, 2]}, "trace": "abc"})
    assert ok(c.recv())["protocol"] == 1
    job = c.submit("echo", {"value": 3}, future_field={"x": 1})
    assert c.wait(job["job_id"])["result"] == 3


def test_reuse_of_in_flight_id(c: RawClient) -> None:
    job = sleeper(c)
    rid = 7001
    c.send({"id": rid, "op": "wait", "args": {"job_id": job["job_id"], "timeout": 1.0}})
    # The same id while the wait is in flight.
    c.send({"id": rid, "op": "get", "args": {"job_id": job["job_id"]}})
    first = c.recv()
    assert first["id"] is None and first["ok"] is False, first
    reuse_err = first["error"]
    assert reuse_err["code"] == "invalid_request" and reuse_err["details"]["id"] == rid
    # The request in flight is unaffected: it still ends with its own answer (timeout).
    second = c.recv()
    check_error(second, "timeout", rid)
    # Once answered, the id is free again.
    c.send({"id": rid, "op": "get", "args": {"job_id": job["job_id"]}})
    reply = c.recv()
    assert reply["id"] == rid and ok(reply)["status"] == "running"
    assert c.request("cancel", {"job_id": job["job_id"]})["status"] == "cancelled"
    # Like every invalid_request, its details carry the contract's ``errors`` list.
    check_error(first, "invalid_request", None)


# =======================================================================================
# bad frames
# =======================================================================================

BAD_BODIES = {
    "garbage": b"\xc1\xc1\xc1\xc1",
    "empty": b"",
    "int": pack(5),
    "list": pack([1, 2, 3]),
    "str": pack("hello"),
    "nil": pack(None),
    "truncated": pack({"id": 1, "op": "hello", "args": {"protocol": 1}})[:-3],
    "trailing": pack({"id": 1, "op": "hello"}) + pack(1),
    "int_key": pack({1: "a", "id": 1, "op": "hello"}),
    "bin_key": pack({b"id": 1, "op": "hello"}),
    "nested_int_key": pack({"id": 1, "op": "hello", "args": {1: 2}}),
    "too_deep": nested_map_body(1100),
}


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_bad_frame_keeps_connection_usable(c: RawClient, name: str) -> None:
    body = BAD_BODIES[name]
    if name == "nested_int_key":
        # The contract asks for a map with string keys; nested maps in args may have any
        # key type only if the daemon documents it. Accept bad_frame or a non-crash answer.
        c.send_raw(frame(body))
        reply = c.recv()
        assert reply["id"] in (None, 1)
        assert c.request("hello", {"protocol": 1})["protocol"] == 1
        return
    c.send_raw(frame(body))
    reply = c.recv()
    err = check_error(reply, "bad_frame", None)
    assert err["message"]
    # The length prefix kept the stream in sync: the next frame is answered normally.
    c.send({"id": 9, "op": "hello", "args": {"protocol": 1}})
    reply = c.recv()
    assert reply["id"] == 9 and ok(reply)["protocol"] == 1


def test_several_bad_frames_in_one_write_then_a_good_one(c: RawClient) -> None:
    data = b"".join(frame(BAD_BODIES[n]) for n in ("garbage", "int", "truncated", "trailing", "int_key"))
    data += frame(pack({"id": 77, "op": "hello", "args": {"protocol": 1}}))
    c.send_raw(data)
    frames = collect_frames(c, 6)
    assert len(frames[None]) == 5
    for f in frames[None]:
        check_error(f, "bad_frame", None)
    assert ok(frames[77][0])["protocol"] == 1


def test_nesting_up_to_the_default_limit_is_accepted_and_one_level_more_is_bad_frame(c: RawClient) -> None:
    """Given the default limit of 100 levels (the request map is level 1, its args 2),
    then 98 nested lists in the args are served, and 99 are bad_frame on a connection that
    stays usable."""
    c.send_raw(frame(nested_map_body(98)))
    reply = c.recv()
    assert reply["id"] == 1 and ok(reply)["protocol"] == 1
    c.send_raw(frame(nested_map_body(99)))
    check_error(c.recv(), "bad_frame", None)
    assert c.request("hello", {"protocol": 1})["protocol"] == 1


def test_frame_split_across_writes(c: RawClient) -> None:
    data = frame(pack({"id": 5, "op": "hello", "args": {"protocol": 1}}))
    for i in range(len(data)):
        c.send_raw(data[i : i + 1])
    reply = c.recv()
    assert reply["id"] == 5 and ok(reply)["protocol"] == 1


@pytest.fixture
def small_frame_daemon(start_daemon: Callable[..., Daemon]) -> Daemon:
    return start_daemon(*SAMPLE_ARGS, "--max-frame", "4096", "--max-result", "1024")


def test_frame_too_large_closes_connection_only(small_frame_daemon: Daemon) -> None:
    d = small_frame_daemon
    with d.client() as other:
        assert other.request("hello", {"protocol": 1})["max_frame"] == 4096
        with d.client() as c:
            c.send_raw(struct.pack(">I", 4097) + b"\x80" * 16)
            reply = c.recv()
            check_error(reply, "frame_too_large", None)
            # Closed by the daemon: EOF (or a reset), nothing more.
            assert c._buf == b""
            c.sock.settimeout(5)
            try:
                rest = c.sock.recv(1024)
            except ConnectionResetError:
                rest = b""
            assert rest == b"", f"the connection was not closed: {rest!r}"
        # Other connections are untouched, and new ones are served.
        assert other.request("hello", {"protocol": 1})["protocol"] == 1
    with d.client() as fresh:
        assert fresh.request("hello", {"protocol": 1})["max_frame"] == 4096


def test_frame_of_exactly_max_frame_is_accepted(small_frame_daemon: Daemon) -> None:
    with small_frame_daemon.client() as c:
        base = pack({"id": 3, "op": "hello", "args": {"protocol": 1, "client": ""}})
        pad = 4096 - len(base)
        body = pack({"id": 3, "op": "hello", "args": {"protocol": 1, "client": "x" * pad}})
        # str headers grow with the length; trim until the body is exactly max_frame.
        while len(body) > 4096:
            pad -= len(body) - 4096
            body = pack({"id": 3, "op": "hello", "args": {"protocol": 1, "client": "x" * pad}})
        assert len(body) == 4096
        c.send_raw(frame(body))
        reply = c.recv()
        assert reply["id"] == 3 and ok(reply)["protocol"] == 1


def test_server_frames_never_exceed_max_frame(small_frame_daemon: Daemon) -> None:
    with small_frame_daemon.client() as c:
        q = uid("big")
        jobs = [c.submit("echo", {"value": "v" * 700}, queue=q) for _ in range(12)]
        for j in jobs:
            c.wait(j["job_id"])
        # Read raw frames to see their sizes.
        seen: list[dict[str, Any]] = []
        after = None
        for _ in range(100):
            args: dict[str, Any] = {"queue": q, "limit": 100}
            if after:
                args["after"] = after
            c.send({"id": 500, "op": "list", "args": args})
            while len(c._buf) < 4:
                c._buf += c.sock.recv(65536)
            (n,) = struct.unpack(">I", c._buf[:4])
            assert n <= 4096, f"a list reply of {n} bytes exceeds max_frame 4096"
            page = ok(c.recv())
            seen.extend(page["jobs"])
            after = page["next"]
            if after is None:
                break
        assert [j["job_id"] for j in seen] == [j["job_id"] for j in jobs]


def test_submit_whose_record_would_exceed_max_frame(small_frame_daemon: Daemon) -> None:
    # The request fits in max_frame (4096) but its Job record (args + every other key)
    # does not. A well-formed request must never get ``internal``; and an error answer
    # must not leave a stored (and running) job behind that no reply can ever carry.
    with small_frame_daemon.client() as c:
        jid = uid("huge-")
        request = {"task": "echo", "args": {"value": "x" * 3980}, "job_id": jid}
        assert len(pack({"id": 1, "op": "submit", "args": request})) <= 4096
        reply = c.call("submit", request)
        if reply["ok"]:
            check_job(reply["result"])
        else:
            assert reply["error"]["code"] != "internal", f"a well-formed submit got {reply['error']!r}"
            check_error(c.call("get", {"job_id": jid}), "not_found")


def test_submit_many_whose_reply_would_exceed_max_frame(small_frame_daemon: Daemon) -> None:
    # Five 700-byte specs fit in one request; the five records do not fit in one reply.
    with small_frame_daemon.client() as c:
        q = uid("sm")
        request = {"jobs": [{"task": "echo", "args": {"value": "v" * 700}, "queue": q} for _ in range(5)]}
        assert len(pack({"id": 1, "op": "submit_many", "args": request})) <= 4096
        reply = c.call("submit_many", request)
        if reply["ok"]:
            assert len(reply["result"]["jobs"]) == 5
        else:
            # All-or-nothing: an error answer stores nothing (else a client that resubmits
            # after the error runs every job twice).
            assert reply["error"]["code"] != "internal", f"a well-formed submit_many got {reply['error']!r}"
            assert ok(c.call("list", {"queue": q}))["jobs"] == []


def test_list_pages_past_the_largest_record_a_submit_accepts(small_frame_daemon: Daemon) -> None:
    # "list returns a shorter page": submit refuses a spec whose record could not fit in
    # a frame, and the largest record it accepts (its echo may fail result_too_large) fits a
    # page of its own, so a client can always page past it.
    with small_frame_daemon.client() as c:
        q = uid("lb")
        lo, hi = 1, 4096  # the largest accepted value size, by bisection on the refusal
        while lo < hi:
            mid = (lo + hi + 1) // 2
            frame = c.call("submit", {"task": "echo", "args": {"value": "x" * mid}, "queue": uid("probe")})
            if frame["ok"]:
                c.wait(frame["result"]["job_id"])
                lo = mid
            else:
                assert frame["error"]["code"] == "invalid_request"
                hi = mid - 1
        small = c.submit("echo", {"value": 1}, queue=q)
        big = c.submit("echo", {"value": "x" * lo}, queue=q)
        last = c.submit("echo", {"value": 2}, queue=q)
        for j in (small, big, last):
            c.wait(j["job_id"])
        got = c.call("get", {"job_id": big["job_id"]})
        assert ok(got)["status"] in ("completed", "failed") and len(pack(got)) <= 4096
        seen: list[str] = []
        after = None
        for _ in range(10):
            args: dict[str, Any] = {"queue": q, "limit": 100}
            if after:
                args["after"] = after
            reply = c.call("list", args)
            assert reply["ok"], f"list after {len(seen)} jobs failed: {reply['error']!r}"
            assert len(pack(reply)) <= 4096
            seen.extend(j["job_id"] for j in reply["result"]["jobs"])
            after = reply["result"]["next"]
            if after is None:
                break
        assert seen == [small["job_id"], big["job_id"], last["job_id"]]


def test_max_frame_flag_alone_starts_a_daemon(start_daemon: Callable[..., Daemon]) -> None:
    # ``--max-frame 4096`` without ``--max-result``: the default max_result (1 MiB) is
    # above it. A daemon should still start (max_result following max_frame), as the
    # contract makes both configurable with their own defaults.
    d = start_daemon("--max-frame", "4096", wait=False)
    assert d.proc is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if d.proc.poll() is not None:
            pytest.fail(f"pyrexisd --max-frame 4096 exited with {d.proc.returncode}: {d.log()[-500:]}")
        if os.path.exists(d.socket):
            try:
                with RawClient(d.socket, timeout=2) as c:
                    assert c.request("hello", {"protocol": 1})["max_frame"] == 4096
                    return
            except OSError:
                pass
        time.sleep(0.05)
    pytest.fail("pyrexisd --max-frame 4096 did not become ready")


# =======================================================================================
# pipelining
# =======================================================================================

def test_pipelining_200_requests_before_reading(c: RawClient) -> None:
    q = uid("pipe")
    messages = []
    for i in range(200):
        rid = 10_000 + i
        kind = i % 4
        if kind == 0:
            messages.append({"id": rid, "op": "submit", "args": {"task": "echo", "args": {"value": i}, "queue": q}})
        elif kind == 1:
            messages.append({"id": rid, "op": "hello", "args": {"protocol": 1}})
        elif kind == 2:
            messages.append({"id": rid, "op": "get", "args": {"job_id": f"missing-{i}"}})
        else:
            messages.append({"id": rid, "op": "stats"})
    c.send_raw(b"".join(frame(pack(m)) for m in messages))
    frames = collect_frames(c, 200)
    assert None not in frames
    assert set(frames) == {10_000 + i for i in range(200)}
    for i in range(200):
        (f,) = frames[10_000 + i]
        kind = i % 4
        if kind == 0:
            job = check_job(ok(f))
            assert job["args"] == {"value": i} and job["queue"] == q
        elif kind == 1:
            assert ok(f)["protocol"] == 1
        elif kind == 2:
            check_error(f, "not_found", 10_000 + i)
        else:
            assert STATS_KEYS <= set(ok(f))
    jobs, _ = list_all(c, 1000, queue=q)
    assert len(jobs) == 50
    for j in jobs:
        assert c.wait(j["job_id"])["result"] == j["args"]["value"]


def test_slow_op_does_not_block_later_requests(c: RawClient, shared: Daemon) -> None:
    job = sleeper(c)
    quick = c.submit("echo", {"value": "q"})
    c.send({"id": 1, "op": "wait", "args": {"job_id": job["job_id"], "timeout": 30}})
    c.send({"id": 2, "op": "get", "args": {"job_id": quick["job_id"]}})
    first = c.recv()
    assert first["id"] == 2, f"the get waited behind the slow wait: {first!r}"
    assert ok(first)["job_id"] == quick["job_id"]
    # Cancelling the sleeper ends the pending wait with the cancelled record.
    with shared.client() as other:
        assert other.request("cancel", {"job_id": job["job_id"]})["status"] == "cancelled"
    second = c.recv()
    assert second["id"] == 1
    rec = check_job(ok(second))
    assert rec["status"] == "cancelled" and rec["error"]["type"] == "cancelled"


# =======================================================================================
# submit, submit_many, get, the Job record, JobSpec validation
# =======================================================================================

def test_submit_and_job_record_shape(c: RawClient) -> None:
    before = time.time()
    q = uid("rec")
    job = check_job(c.submit("echo", {"value": {"nested": [1, "two", None]}}, queue=q, priority=7, labels={"team": "a"}))
    assert job["task"] == "echo" and job["queue"] == q and job["priority"] == 7
    assert job["labels"] == {"team": "a"}
    assert job["status"] in {"pending", "running"}
    assert job["depends_on"] == [] and job["dependency_policy"] == "all_completed"
    assert job["on_interrupt"] == "retry"
    assert job["max_retries"] == 0
    assert before - 1 <= job["created_at"] <= time.time() + 1
    done = check_job(c.wait(job["job_id"]))
    assert done["status"] == "completed" and done["result"] == {"nested": [1, "two", None]}
    assert done["attempts"] == 1
    assert done["created_at"] == job["created_at"]
    assert done["started_at"] is not None and done["created_at"] <= done["started_at"] <= done["finished_at"]
    got = check_job(c.get(job["job_id"]))
    assert got == done


def test_submit_with_client_job_id_and_binary_args(c: RawClient) -> None:
    jid = uid("mine-")
    job = c.submit("echo", {"value": b"\x00\xffbytes"}, job_id=jid, mode="process")
    assert job["job_id"] == jid and job["mode"] == "process"
    done = c.wait(jid)
    assert done["status"] == "completed" and done["result"] == b"\x00\xffbytes"


def test_submit_shell_defaults(c: RawClient) -> None:
    job = c.submit("shell", {"cmd": "echo hi; echo err >&2"})
    assert job["mode"] == "shell" and job["on_interrupt"] == "fail"
    done = c.wait(job["job_id"])
    assert done["status"] == "completed" and done["result"]["exit_code"] == 0
    events, final = logs_of(c, job["job_id"])
    lines = {(e["stream"], e["line"]) for e in events}
    assert ("stdout", "hi") in lines and ("stderr", "err") in lines
    assert ok(final)["next"] == max(e["seq"] for e in events) + 1


def test_submit_many_success_in_order(c: RawClient) -> None:
    q = uid("many")
    specs = [{"task": "echo", "args": {"value": i}, "queue": q} for i in range(5)]
    specs.append({"task": "sleep", "args": {"seconds": 0}, "queue": q, "job_id": uid("sm-")})
    jobs = ok(c.call("submit_many", {"jobs": specs}))["jobs"]
    assert len(jobs) == 6
    for spec, job in zip(specs, jobs, strict=True):
        check_job(job)
        assert job["task"] == spec["task"] and job["args"] == spec["args"] and job["queue"] == q
    assert jobs[5]["job_id"] == specs[5]["job_id"]
    assert len({j["job_id"] for j in jobs}) == 6
    for j in jobs:
        assert c.wait(j["job_id"])["status"] == "completed"


def test_submit_many_invalid_spec_rejects_whole_batch(c: RawClient) -> None:
    q = uid("batch")
    ids = [uid("b-") for _ in range(4)]
    specs: list[Any] = [{"task": "echo", "args": {"value": i}, "queue": q, "job_id": ids[i]} for i in range(4)]
    specs[2] = {"task": "echo", "args": {"value": 2}, "queue": q, "job_id": ids[2], "priority": 5000}
    err = call_error(c, "submit_many", {"jobs": specs}, "invalid_request")
    assert err["details"]["index"] == 2
    assert any("priority" in loc for loc in locs(err)), locs(err)
    # Bad task args in a batch: also the whole batch, with the index.
    specs[2] = {"task": "sleep", "args": {"seconds": "long"}, "queue": q, "job_id": ids[2]}
    err = call_error(c, "submit_many", {"jobs": specs}, "invalid_request")
    assert err["details"]["index"] == 2
    # Bad args among specs of one task (whose args are validated together): the same.
    specs[2] = {"task": "echo", "args": {"valu": 2}, "queue": q, "job_id": ids[2]}
    err = call_error(c, "submit_many", {"jobs": specs}, "invalid_request")
    assert err["details"]["index"] == 2
    assert ["args", "value"] in locs(err), locs(err)
    # A spec that is not a map.
    specs[2] = "not a spec"
    err = call_error(c, "submit_many", {"jobs": specs}, "invalid_request")
    assert err["details"]["index"] == 2
    # Nothing was stored.
    assert ok(c.call("list", {"queue": q}))["jobs"] == []
    for jid in ids:
        call_error(c, "get", {"job_id": jid}, "not_found")
    # jobs must be a list.
    call_error(c, "submit_many", {"jobs": "x"}, "invalid_request")
    call_error(c, "submit_many", {}, "invalid_request")


def test_submit_many_duplicate_job_id_in_batch(c: RawClient) -> None:
    q = uid("dup")
    jid = uid("d-")
    specs = [
        {"task": "echo", "args": {"value": 0}, "queue": q, "job_id": jid},
        {"task": "echo", "args": {"value": 1}, "queue": q},
        {"task": "echo", "args": {"value": 2}, "queue": q, "job_id": jid},
    ]
    err = call_error(c, "submit_many", {"jobs": specs}, "invalid_request")
    assert err["details"]["index"] == 2
    assert ok(c.call("list", {"queue": q}))["jobs"] == []


def test_submit_many_unknown_task_stores_nothing(c: RawClient) -> None:
    q = uid("batch")
    specs = [{"task": "echo", "args": {"value": 1}, "queue": q}, {"task": "no.such.task", "queue": q}]
    call_error(c, "submit_many", {"jobs": specs}, "unknown_task")
    assert ok(c.call("list", {"queue": q}))["jobs"] == []


def test_get_unknown_and_bad_args(c: RawClient) -> None:
    call_error(c, "get", {"job_id": "nope-" + uid()}, "not_found")
    call_error(c, "get", {}, "invalid_request")
    call_error(c, "get", {"job_id": 5}, "invalid_request")


@pytest.mark.parametrize(
    "spec, loc",
    [
        ({"priority": 1001}, "priority"),
        ({"priority": -1001}, "priority"),
        ({"priority": "high"}, "priority"),
        ({"priority": 1.5}, "priority"),
        ({"queue": 5}, "queue"),
        ({"queue": ""}, "queue"),
        ({"labels": {"a": 1}}, "labels"),
        ({"labels": ["a"]}, "labels"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": "2"}, "max_retries"),
        ({"timeout": "soon"}, "timeout"),
        ({"delay": -1}, "delay"),
        ({"run_at": "tomorrow"}, "run_at"),
        ({"mode": "bogus"}, "mode"),
        ({"on_interrupt": "maybe"}, "on_interrupt"),
        ({"dependency_policy": "some"}, "dependency_policy"),
        ({"depends_on": "x"}, "depends_on"),
        ({"job_id": 5}, "job_id"),
        ({"job_id": ""}, "job_id"),
        ({"args": [1]}, "args"),
        ({"task": 5}, "task"),
    ],
    ids=lambda v: str(v) if not isinstance(v, dict) else "-".join(f"{k}={v[k]!r}" for k in v),
)
def test_bad_jobspec_field(c: RawClient, spec: dict[str, Any], loc: str) -> None:
    full = {"task": "echo", "args": {"value": 1}, **spec}
    err = call_error(c, "submit", full, "invalid_request")
    assert any(where and where[0] == loc for where in locs(err)), f"no error at {loc}: {locs(err)}"


def test_jobspec_missing_task_and_run_at_with_delay(c: RawClient) -> None:
    err = call_error(c, "submit", {"args": {"value": 1}}, "invalid_request")
    assert ["task"] in locs(err)
    err = call_error(c, "submit", {"task": "echo", "args": {"value": 1}, "run_at": time.time() + 5, "delay": 5}, "invalid_request")
    assert err["details"]["errors"]


def test_mode_the_task_does_not_support(c: RawClient) -> None:
    for task, args, mode in [("sleep", {"seconds": 0}, "thread"), ("echo", {"value": 1}, "shell"), ("shell", {"cmd": "true"}, "process"), ("t.nap", {"seconds": 0}, "process")]:
        err = call_error(c, "submit", {"task": task, "args": args, "mode": mode}, "invalid_request")
        assert ["mode"] in locs(err), (task, mode, locs(err))


@pytest.mark.parametrize(
    "task, args, loc",
    [
        ("echo", {}, ["args", "value"]),
        ("echo", {"value": 1, "extra": 2}, ["args", "extra"]),
        ("sleep", {"seconds": -1}, ["args", "seconds"]),
        ("sleep", {"seconds": "long"}, ["args", "seconds"]),
        ("sleep", {}, ["args", "seconds"]),
        ("shell", {"cmd": 5}, ["args", "cmd"]),
        ("shell", {"cmd": "true", "env": {"A": 1}}, ["args", "env", "A"]),
        ("t.flaky", {"path": "/tmp/x"}, ["args", "failures"]),
    ],
)
def test_bad_task_args_have_error_locs(c: RawClient, task: str, args: dict[str, Any], loc: list[Any]) -> None:
    err = call_error(c, "submit", {"task": task, "args": args}, "invalid_request")
    assert any(where[: len(loc)] == loc for where in locs(err)), f"no error at {loc}: {locs(err)}"


def test_unknown_task(c: RawClient) -> None:
    call_error(c, "submit", {"task": "no.such.task", "args": {}}, "unknown_task")


def test_idempotent_resubmit_and_conflict(c: RawClient) -> None:
    jid = uid("idem-")
    spec = {"task": "echo", "args": {"value": [1, 2]}, "job_id": jid, "priority": 3, "labels": {"k": "v"}}
    first = ok(c.call("submit", spec))
    done = c.wait(jid)
    again = check_job(ok(c.call("submit", dict(spec))))
    assert again["job_id"] == jid and again["created_at"] == first["created_at"]
    assert again["status"] == "completed" and again == c.get(jid)
    assert done["attempts"] == 1 == again["attempts"]
    # Key order of maps does not make another spec.
    reordered = {"labels": {"k": "v"}, "priority": 3, "job_id": jid, "args": {"value": [1, 2]}, "task": "echo"}
    assert ok(c.call("submit", reordered))["created_at"] == first["created_at"]
    # Defaults filled in: giving the default explicitly is the same spec.
    assert ok(c.call("submit", {**spec, "queue": "default"}))["created_at"] == first["created_at"]
    # A different spec under the same id.
    for change in ({"args": {"value": [1, 3]}}, {"priority": 4}, {"task": "sleep", "args": {"seconds": 0}}, {"labels": {}}):
        call_error(c, "submit", {**spec, **change}, "conflict")
    # In a batch too; and the batch stores nothing.
    q = uid("conf")
    batch = [{"task": "echo", "args": {"value": 0}, "queue": q}, {**spec, "priority": 9}]
    call_error(c, "submit_many", {"jobs": batch}, "conflict")
    assert ok(c.call("list", {"queue": q}))["jobs"] == []
    # The same spec in a batch returns the existing job in place.
    jobs = ok(c.call("submit_many", {"jobs": [{"task": "echo", "args": {"value": 0}, "queue": q}, spec]}))["jobs"]
    assert jobs[1]["job_id"] == jid and jobs[1]["created_at"] == first["created_at"]


def test_idempotent_resubmit_with_delay_compared_as_given(c: RawClient) -> None:
    jid = uid("idd-")
    spec = {"task": "echo", "args": {"value": 1}, "job_id": jid, "delay": 3600.0}
    first = ok(c.call("submit", spec))
    assert first["status"] == "scheduled"
    again = ok(c.call("submit", spec))
    assert again["created_at"] == first["created_at"] and again["run_at"] == first["run_at"]
    call_error(c, "submit", {**spec, "delay": 3599.0}, "conflict")
    c.request("cancel", {"job_id": jid})


def test_unknown_jobspec_keys_do_not_change_identity(c: RawClient) -> None:
    jid = uid("unk-")
    spec = {"task": "echo", "args": {"value": 1}, "job_id": jid}
    first = ok(c.call("submit", spec))
    again = ok(c.call("submit", {**spec, "some_future_option": True}))
    assert again["created_at"] == first["created_at"]


# =======================================================================================
# cancel, retry, wait, logs
# =======================================================================================

def test_cancel_waiting_and_running_jobs(c: RawClient) -> None:
    sched = c.submit("echo", {"value": 1}, delay=3600)
    assert sched["status"] == "scheduled"
    rec = check_job(c.request("cancel", {"job_id": sched["job_id"]}))
    assert rec["status"] == "cancelled" and rec["error"]["type"] == "cancelled" and rec["error"]["retryable"] is False
    running = sleeper(c)
    rec = check_job(c.request("cancel", {"job_id": running["job_id"]}))
    assert rec["status"] == "cancelled" and rec["attempts"] == 1
    assert check_job(c.wait(running["job_id"], 5))["status"] == "cancelled"
    # Cancelling again: invalid_state with the current status.
    err = call_error(c, "cancel", {"job_id": running["job_id"]}, "invalid_state")
    assert err["details"]["status"] == "cancelled"


def test_cancel_completed_is_invalid_state(c: RawClient) -> None:
    job = c.submit("echo", {"value": 1})
    c.wait(job["job_id"])
    err = call_error(c, "cancel", {"job_id": job["job_id"]}, "invalid_state")
    assert err["details"]["status"] == "completed"
    assert c.get(job["job_id"])["status"] == "completed"


def test_not_found_for_every_job_op(c: RawClient) -> None:
    missing = "missing-" + uid()
    for op in ("get", "cancel", "retry", "wait", "logs"):
        err = call_error(c, op, {"job_id": missing}, "not_found")
        assert err["message"]
    call_error(c, "wait", {"job_id": missing, "timeout": 0.1}, "not_found")


def test_retry_invalid_states(c: RawClient) -> None:
    done = c.submit("echo", {"value": 1})
    c.wait(done["job_id"])
    err = call_error(c, "retry", {"job_id": done["job_id"]}, "invalid_state")
    assert err["details"]["status"] == "completed"
    # A pending job: in a paused queue it stays pending.
    q = uid("rp")
    c.request("pause", {"queue": q})
    pending = c.submit("echo", {"value": 1}, queue=q)
    assert pending["status"] == "pending"
    err = call_error(c, "retry", {"job_id": pending["job_id"]}, "invalid_state")
    assert err["details"]["status"] == "pending"
    sched = c.submit("echo", {"value": 1}, delay=3600)
    err = call_error(c, "retry", {"job_id": sched["job_id"]}, "invalid_state")
    assert err["details"]["status"] == "scheduled"
    running = sleeper(c)
    err = call_error(c, "retry", {"job_id": running["job_id"]}, "invalid_state")
    assert err["details"]["status"] == "running"
    for j in (pending, sched, running):
        c.request("cancel", {"job_id": j["job_id"]})
    c.request("resume", {"queue": q})


def test_retry_cancelled_job_runs_again(c: RawClient) -> None:
    q = uid("rc")
    c.request("pause", {"queue": q})
    job = c.submit("echo", {"value": "again"}, queue=q)
    c.request("cancel", {"job_id": job["job_id"]})
    c.request("resume", {"queue": q})
    rec = check_job(c.request("retry", {"job_id": job["job_id"]}))
    assert rec["status"] in {"pending", "blocked", "scheduled"}
    assert rec["attempts"] == 0
    done = c.wait(job["job_id"])
    assert done["status"] == "completed" and done["result"] == "again" and done["attempts"] == 1


def test_wait_timeout(c: RawClient) -> None:
    job = sleeper(c)
    t0 = time.monotonic()
    err = call_error(c, "wait", {"job_id": job["job_id"], "timeout": 0.3}, "timeout")
    elapsed = time.monotonic() - t0
    assert 0.25 <= elapsed < 5, elapsed
    assert err["message"]
    call_error(c, "wait", {"job_id": job["job_id"], "timeout": 0}, "timeout")
    assert c.get(job["job_id"])["status"] == "running"
    c.request("cancel", {"job_id": job["job_id"]})


def test_wait_bad_args_and_terminal_job(c: RawClient) -> None:
    call_error(c, "wait", {"job_id": "x", "timeout": -1}, "invalid_request")
    call_error(c, "wait", {"job_id": "x", "timeout": "1"}, "invalid_request")
    call_error(c, "wait", {}, "invalid_request")
    job = c.submit("echo", {"value": 1})
    first = c.wait(job["job_id"])
    # A terminal job answers at once, even with a zero timeout.
    assert c.request("wait", {"job_id": job["job_id"], "timeout": 0}) == first


def test_logs_without_follow(c: RawClient) -> None:
    job = c.submit("t.progress", {"steps": 3})
    c.wait(job["job_id"])
    events, final = logs_of(c, job["job_id"])
    assert [e["line"] for e in events] == ["line 1", "line 2", "line 3"]
    for i, e in enumerate(events, start=1):
        assert e["kind"] == "log" and e["job_id"] == job["job_id"] and e["seq"] == i
        assert e["stream"] in ("stdout", "stderr", "log") and isinstance(e["time"], float)
    assert ok(final) == {"next": 4}
    events, final = logs_of(c, job["job_id"], since=2)
    assert [e["seq"] for e in events] == [2, 3] and ok(final) == {"next": 4}
    events, final = logs_of(c, job["job_id"], since=10)
    assert events == [] and ok(final) == {"next": 10}
    call_error(c, "logs", {"job_id": job["job_id"], "since": 0}, "invalid_request")
    call_error(c, "logs", {"job_id": job["job_id"], "since": "1"}, "invalid_request")


def test_logs_of_a_job_without_lines(c: RawClient) -> None:
    job = c.submit("echo", {"value": 1})
    c.wait(job["job_id"])
    events, final = logs_of(c, job["job_id"])
    assert events == [] and ok(final) == {"next": 1}


# =======================================================================================
# retries
# =======================================================================================

def test_always_failing_job_makes_max_retries_plus_one_attempts(c: RawClient) -> None:
    job = c.submit("t.retry_after", {"delay": 0.05}, max_retries=2)
    assert job["max_retries"] == 2
    done = check_job(c.wait(job["job_id"], 20))
    assert done["status"] == "failed"
    assert done["attempts"] == 3
    assert done["error"]["type"] == "exception" and done["error"]["retryable"] is True
    # retry: a new round, max_retries renewed, attempts keep counting.
    rec = check_job(c.request("retry", {"job_id": job["job_id"]}))
    assert rec["status"] in {"pending", "blocked", "scheduled"} and rec["attempts"] == 3
    again = check_job(c.wait(job["job_id"], 20))
    assert again["status"] == "failed" and again["attempts"] == 6


def test_failed_job_traceback_in_logs_and_retry_round(c: RawClient) -> None:
    job = c.submit("t.fail", {"message": "kaboom"})
    done = check_job(c.wait(job["job_id"]))
    assert done["status"] == "failed" and done["attempts"] == 1 and done["max_retries"] == 0
    assert done["error"]["type"] == "exception" and done["error"]["retryable"] is True
    assert "kaboom" in done["error"]["message"]
    events, final = logs_of(c, job["job_id"])
    stderr = [e["line"] for e in events if e["stream"] == "stderr"]
    assert any("Traceback" in line for line in stderr), stderr
    assert any("ValueError: kaboom" in line for line in stderr), stderr
    first_next = ok(final)["next"]
    rec = c.request("retry", {"job_id": job["job_id"]})
    assert rec["status"] in {"pending", "blocked", "scheduled"}
    again = check_job(c.wait(job["job_id"]))
    assert again["status"] == "failed" and again["attempts"] == 2
    events, final = logs_of(c, job["job_id"])
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > first_next - 1
    assert sum("ValueError: kaboom" in e["line"] for e in events) == 2


def test_fatal_fails_at_once(c: RawClient) -> None:
    job = c.submit("t.fatal", {}, max_retries=5)
    done = check_job(c.wait(job["job_id"]))
    assert done["status"] == "failed" and done["attempts"] == 1
    assert done["error"]["type"] == "exception" and done["error"]["retryable"] is False
    assert "do not retry me" in done["error"]["message"]


def test_flaky_job_retries_after_default_backoff(c: RawClient, shared: Daemon) -> None:
    path = os.path.join(shared.workdir, uid("flaky"))
    job = c.submit("t.flaky", {"path": path, "failures": 1}, max_retries=1)
    retrying = wait_until(lambda: record_if(c, job["job_id"], "retrying"), 10, what="the flaky job to be retrying")
    check_job(retrying)
    assert retrying["attempts"] == 1 and retrying["error"]["type"] == "exception"
    # Retry 1 waits 1 s ± 20 % after the first attempt failed.
    backoff = retrying["run_at"] - retrying["started_at"]
    assert 0.75 <= backoff <= 1.5, backoff
    done = check_job(c.wait(job["job_id"], 10))
    assert done["status"] == "completed" and done["attempts"] == 2 and done["result"] == 2
    assert done["started_at"] >= retrying["run_at"] - 0.02


def test_retrying_job_can_be_cancelled_not_retried(c: RawClient) -> None:
    job = c.submit("t.retry_after", {"delay": 60}, max_retries=1)
    rec = wait_until(lambda: record_if(c, job["job_id"], "retrying"), 10, what="the job to be retrying")
    assert rec["attempts"] == 1 and rec["run_at"] >= rec["started_at"] + 59
    err = call_error(c, "retry", {"job_id": job["job_id"]}, "invalid_state")
    assert err["details"]["status"] == "retrying"
    done = check_job(c.request("cancel", {"job_id": job["job_id"]}))
    assert done["status"] == "cancelled" and done["attempts"] == 1
    assert done["error"]["type"] == "cancelled"


def test_job_timeout_fails_the_attempt(c: RawClient) -> None:
    job = c.submit("sleep", {"seconds": 30}, timeout=0.3)
    done = check_job(c.wait(job["job_id"], 15))
    assert done["status"] == "failed" and done["attempts"] == 1
    assert done["error"]["type"] == "timeout" and done["error"]["retryable"] is True


def test_logs_of_a_running_job(c: RawClient) -> None:
    job = c.submit("t.nap", {"seconds": 30})
    wait_until(lambda: get_status(c, job["job_id"]) == "running", 10, what="the nap to run")

    def lines() -> Any:
        events, final = logs_of(c, job["job_id"])
        return (events, final) if events else None

    events, final = wait_until(lines, 10, what="the nap's log line")
    assert events[0]["line"].startswith("napping 30") and events[0]["stream"] == "log" and events[0]["seq"] == 1
    assert ok(final)["next"] == events[-1]["seq"] + 1
    c.request("cancel", {"job_id": job["job_id"]})


# =======================================================================================
# delay and run_at
# =======================================================================================

def test_delay_is_scheduled_then_runs(c: RawClient) -> None:
    job = check_job(c.submit("echo", {"value": 1}, delay=0.6))
    assert job["status"] == "scheduled"
    assert job["run_at"] == pytest.approx(job["created_at"] + 0.6, abs=0.05)
    done = c.wait(job["job_id"], 10)
    assert done["status"] == "completed"
    assert done["started_at"] >= job["run_at"] - 0.02


def test_run_at_is_honoured(c: RawClient) -> None:
    at = time.time() + 0.6
    job = check_job(c.submit("echo", {"value": 1}, run_at=at))
    assert job["status"] == "scheduled" and job["run_at"] == at
    done = c.wait(job["job_id"], 10)
    assert done["status"] == "completed" and done["started_at"] >= at - 0.02
    past = c.submit("echo", {"value": 2}, run_at=time.time() - 60)
    assert past["status"] in {"pending", "running"}
    assert c.wait(past["job_id"])["status"] == "completed"


# =======================================================================================
# list
# =======================================================================================

def test_list_paging_oldest_first(c: RawClient) -> None:
    q = uid("page")
    submitted = []
    for i in range(3):
        batch = ok(c.call("submit_many", {"jobs": [{"task": "echo", "args": {"value": i * 10 + k}, "queue": q} for k in range(10)]}))["jobs"]
        submitted.extend(batch)
    submitted.append(c.submit("echo", {"value": 99}, queue=q))
    for j in submitted:
        c.wait(j["job_id"])
    jobs, pages = list_all(c, 7, queue=q)
    assert pages == 5  # 31 jobs, 7 a page
    for j in jobs:
        check_job(j)
    keys = [(j["created_at"], j["job_id"]) for j in jobs]
    assert keys == sorted(keys)
    assert len(set(keys)) == 31
    assert {j["job_id"] for j in jobs} == {j["job_id"] for j in submitted}
    # A last page that is exactly full ends with next nil on it or on an empty page after it.
    jobs2, _ = list_all(c, 31, queue=q)
    assert [j["job_id"] for j in jobs2] == [j["job_id"] for j in jobs]
    page = ok(c.call("list", {"queue": q, "limit": 31}))
    assert len(page["jobs"]) == 31
    if page["next"] is not None:
        rest = ok(c.call("list", {"queue": q, "limit": 31, "after": page["next"]}))
        assert rest["jobs"] == [] and rest["next"] is None
    # Default limit is 100: all 31 on one page.
    page = ok(c.call("list", {"queue": q}))
    assert len(page["jobs"]) == 31 and page["next"] is None


def test_list_unfiltered_is_sorted(c: RawClient) -> None:
    for i in range(3):
        c.submit("echo", {"value": i})
    page = ok(c.call("list", {"limit": 50}))
    keys = [(j["created_at"], j["job_id"]) for j in page["jobs"]]
    assert keys == sorted(keys) and len(keys) > 0
    ok(c.call("list"))


def test_list_filters(c: RawClient) -> None:
    q = uid("filt")
    done = [c.submit("echo", {"value": i}, queue=q) for i in range(3)]
    for j in done:
        c.wait(j["job_id"])
    sched = c.submit("sleep", {"seconds": 0}, queue=q, delay=3600)
    cancelled = c.submit("sleep", {"seconds": 0}, queue=q, delay=3600)
    c.request("cancel", {"job_id": cancelled["job_id"]})
    failed = c.submit("t.fail", {}, queue=q)
    c.wait(failed["job_id"])

    def ids(**f: Any) -> set[str]:
        return {j["job_id"] for j in ok(c.call("list", {"queue": q, **f}))["jobs"]}

    assert ids(status="completed") == {j["job_id"] for j in done}
    assert ids(status=["scheduled"]) == {sched["job_id"]}
    assert ids(status=["scheduled", "cancelled"]) == {sched["job_id"], cancelled["job_id"]}
    assert ids(status=["failed", "completed"]) == {failed["job_id"], *(j["job_id"] for j in done)}
    assert ids(status=[]) in (set(), ids())  # an empty list: nothing, or no filter
    assert ids(task="sleep") == {sched["job_id"], cancelled["job_id"]}
    assert ids(task="sleep", status="cancelled") == {cancelled["job_id"]}
    assert ids(task="t.nap") == set()
    assert len(ids()) == 6
    # task without queue: every returned job has that task.
    for j in ok(c.call("list", {"task": "t.fail", "limit": 10000}))["jobs"]:
        assert j["task"] == "t.fail"
    empty = ok(c.call("list", {"queue": uid("nothing")}))
    assert empty["jobs"] == [] and empty["next"] is None
    c.request("cancel", {"job_id": sched["job_id"]})


def test_list_bad_args(c: RawClient) -> None:
    for args in (
        {"limit": 0},
        {"limit": 10_001},
        {"limit": -5},
        {"limit": "5"},
        {"status": "bogus"},
        {"status": ["completed", "bogus"]},
        {"status": 5},
        {"task": 5},
        {"queue": 5},
        {"after": "not-a-cursor!!"},
        {"after": 5},
    ):
        call_error(c, "list", args, "invalid_request")
    assert isinstance(ok(c.call("list", {"limit": 1}))["jobs"], list)
    assert isinstance(ok(c.call("list", {"limit": 10_000}))["jobs"], list)


# =======================================================================================
# stats, tasks, queues, pause/resume, configure_queue
# =======================================================================================

def test_stats_shape(c: RawClient) -> None:
    job = c.submit("echo", {"value": 1})
    c.wait(job["job_id"])
    s = c.request("stats")
    assert STATS_KEYS <= set(s), set(s)
    assert isinstance(s["uptime"], float) and s["uptime"] > 0
    assert all(k in STATUSES and isinstance(v, int) for k, v in s["by_status"].items())
    assert s["by_status"].get("completed", 0) >= 1
    for queue, counts in s["by_queue"].items():
        assert isinstance(queue, str)
        assert all(k in STATUSES and isinstance(v, int) for k, v in counts.items())
    assert s["by_queue"]["default"].get("completed", 0) >= 1
    assert all(isinstance(v, int) for v in s["running_by_mode"].values())
    assert {"thread", "process", "async", "shell"} <= set(s["slots"])
    assert all(isinstance(v, int) and v >= 1 for v in s["slots"].values())
    assert isinstance(s["completed_per_s"], float) and s["completed_per_s"] > 0
    assert set(s["submit_to_start_ms"]) >= {"p50", "p99"}
    assert all(isinstance(v, (int, float)) and v >= 0 for v in s["submit_to_start_ms"].values())


def test_tasks_shape(c: RawClient) -> None:
    tasks = {t["name"]: t for t in c.request("tasks")["tasks"]}
    assert {"echo", "sleep", "shell", "t.fail", "t.flaky"} <= set(tasks)
    for t in tasks.values():
        assert set(t) >= {"name", "modes", "default_mode", "description", "schema"}
        assert t["default_mode"] in t["modes"]
        assert isinstance(t["description"], str)
        assert isinstance(t["schema"], dict) and t["schema"].get("type") == "object"
    assert set(tasks["echo"]["modes"]) == {"thread", "process", "async", "dask"}  # dask: where the daemon runs it
    assert "value" in tasks["echo"]["schema"]["properties"]
    assert tasks["sleep"]["modes"] == ["async"] and tasks["sleep"]["default_mode"] == "async"
    assert "seconds" in tasks["sleep"]["schema"]["properties"]
    assert "seconds" in tasks["sleep"]["schema"].get("required", [])
    assert tasks["shell"]["modes"] == ["shell"] and tasks["shell"]["default_mode"] == "shell"
    assert {"cmd", "cwd", "env"} <= set(tasks["shell"]["schema"]["properties"])
    assert set(tasks["t.flaky"]["schema"]["required"]) == {"path", "failures"}


def check_queue_row(row: dict[str, Any]) -> dict[str, Any]:
    assert QUEUE_ROW_KEYS <= set(row), row
    assert isinstance(row["queue"], str) and isinstance(row["paused"], bool)
    assert isinstance(row["weight"], (int, float)) and row["weight"] > 0
    assert row["max_concurrency"] is None or isinstance(row["max_concurrency"], int)
    assert isinstance(row["aging"], (int, float)) and row["aging"] >= 0
    assert isinstance(row["waiting"], int) and isinstance(row["running"], int)
    return row


def test_queues_rows(c: RawClient) -> None:
    q = uid("qr")
    rows = {r["queue"]: r for r in c.request("queues")["queues"]}
    assert q not in rows
    job = sleeper(c, queue=q)
    rows = {r["queue"]: check_queue_row(r) for r in c.request("queues")["queues"]}
    assert rows[q]["running"] == 1 and rows[q]["waiting"] == 0 and rows[q]["paused"] is False
    assert rows[q]["weight"] == 1 and rows[q]["max_concurrency"] is None
    c.request("cancel", {"job_id": job["job_id"]})


def test_pause_and_resume_one_queue(c: RawClient) -> None:
    q = uid("pz")
    # A queue may be paused before its first job.
    rows = c.request("pause", {"queue": q})["queues"]
    assert [r["queue"] for r in rows] == [q] and check_queue_row(rows[0])["paused"] is True
    held = c.submit("echo", {"value": "held"}, queue=q)
    assert held["status"] == "pending"
    # A job submitted later to another queue runs to completion; the paused one stays.
    other = c.submit("echo", {"value": "other"}, queue=uid("free"))
    assert c.wait(other["job_id"])["status"] == "completed"
    call_error(c, "wait", {"job_id": held["job_id"], "timeout": 0.3}, "timeout")
    assert c.get(held["job_id"])["status"] == "pending"
    row = {r["queue"]: r for r in c.request("queues")["queues"]}[q]
    assert row["paused"] is True and row["waiting"] == 1
    rows = c.request("resume", {"queue": q})["queues"]
    assert rows[0]["queue"] == q and rows[0]["paused"] is False
    done = c.wait(held["job_id"], 10)
    assert done["status"] == "completed" and done["result"] == "held"
    call_error(c, "pause", {"queue": 5}, "invalid_request")
    call_error(c, "pause", {"queue": ""}, "invalid_request")


def test_configure_queue(c: RawClient) -> None:
    q = uid("cfg")
    row = check_queue_row(c.request("configure_queue", {"queue": q, "weight": 2.5, "max_concurrency": 3, "aging": 0.5}))
    assert row["queue"] == q and row["weight"] == 2.5 and row["max_concurrency"] == 3 and row["aging"] == 0.5
    assert row["waiting"] == 0 and row["running"] == 0 and row["paused"] is False
    # A queue exists from its first configure_queue.
    assert q in {r["queue"] for r in c.request("queues")["queues"]}
    # Partial change keeps the rest; max_concurrency nil removes the cap.
    row = c.request("configure_queue", {"queue": q, "max_concurrency": None})
    assert row["max_concurrency"] is None and row["weight"] == 2.5 and row["aging"] == 0.5
    row = c.request("configure_queue", {"queue": q, "weight": 1})
    assert row["weight"] == 1 and row["aging"] == 0.5
    for bad in (
        {"queue": q, "weight": 0},
        {"queue": q, "weight": -1},
        {"queue": q, "weight": "2"},
        {"queue": q, "max_concurrency": 0},
        {"queue": q, "max_concurrency": 1.5},
        {"queue": q, "aging": -0.1},
        {"weight": 2},
        {"queue": ""},
    ):
        call_error(c, "configure_queue", bad, "invalid_request")


def test_configure_queue_and_pause_are_durable(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(*SAMPLE_ARGS)
    with d.client() as c:
        c.request("configure_queue", {"queue": "cq", "weight": 2.5, "max_concurrency": 3, "aging": 0.25})
        c.request("pause", {"queue": "pq"})
        held = c.submit("echo", {"value": "p"}, queue="pq")
        delayed = c.submit("echo", {"value": "d"}, queue="dq", delay=1.0)
        assert held["status"] == "pending" and delayed["status"] == "scheduled"
    assert d.terminate() == 0
    d.restart()
    with d.client() as c:
        rows = {r["queue"]: check_queue_row(r) for r in c.request("queues")["queues"]}
        assert rows["cq"]["weight"] == 2.5 and rows["cq"]["max_concurrency"] == 3 and rows["cq"]["aging"] == 0.25
        assert rows["pq"]["paused"] is True and rows["pq"]["waiting"] == 1
        assert rows["cq"]["paused"] is False
        assert c.get(held["job_id"])["status"] == "pending"
        # The delayed job survived the restart and runs at its run_at.
        done = c.wait(delayed["job_id"], 10)
        assert done["status"] == "completed" and done["run_at"] == delayed["run_at"]
        assert done["started_at"] >= delayed["run_at"] - 0.02
        call_error(c, "wait", {"job_id": held["job_id"], "timeout": 0.2}, "timeout")
        c.request("resume", {"queue": "pq"})
        assert c.wait(held["job_id"], 10)["status"] == "completed"


def test_pause_all_applies_to_later_queues_and_survives_restart(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(*SAMPLE_ARGS)
    with d.client() as c:
        first = c.submit("echo", {"value": 0}, queue="early")
        c.wait(first["job_id"])
        rows = c.request("pause")["queues"]
        assert rows and all(check_queue_row(r)["paused"] for r in rows)
        assert "early" in {r["queue"] for r in rows}
        a = c.submit("echo", {"value": 1}, queue="later")
        b = c.submit("echo", {"value": 2}, queue="early")
        assert a["status"] == "pending" and b["status"] == "pending"
        call_error(c, "wait", {"job_id": a["job_id"], "timeout": 0.3}, "timeout")
        assert c.get(b["job_id"])["status"] == "pending"
        rows = {r["queue"]: r for r in c.request("queues")["queues"]}
        assert rows["later"]["paused"] is True
    assert d.terminate() == 0
    d.restart()
    with d.client() as c:
        rows = {r["queue"]: r for r in c.request("queues")["queues"]}
        assert rows["later"]["paused"] is True and rows["early"]["paused"] is True
        x = c.submit("echo", {"value": 3}, queue="after-restart")
        assert x["status"] == "pending"
        call_error(c, "wait", {"job_id": x["job_id"], "timeout": 0.3}, "timeout")
        for j in (a, b):
            assert c.get(j["job_id"])["status"] == "pending"
        rows = c.request("resume")["queues"]
        assert rows and not any(r["paused"] for r in rows)
        for j, v in ((a, 1), (b, 2), (x, 3)):
            done = c.wait(j["job_id"], 10)
            assert done["status"] == "completed" and done["result"] == v
        # Resumed for queues created later too.
        y = c.submit("echo", {"value": 4}, queue="after-resume")
        assert c.wait(y["job_id"], 10)["status"] == "completed"


# =======================================================================================
# concurrency
# =======================================================================================

def test_50_clients_20_jobs_each(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(*SAMPLE_ARGS)
    n_clients, n_jobs = 50, 20
    results: list[list[dict[str, Any]] | None] = [None] * n_clients
    errors: list[BaseException] = []
    barrier = threading.Barrier(n_clients)

    def worker(i: int) -> None:
        try:
            with RawClient(d.socket, timeout=60) as c:
                barrier.wait(30)
                ids = [c.submit("echo", {"value": [i, k]})["job_id"] for k in range(n_jobs)]
                results[i] = [c.wait(jid, 60) for jid in ids]
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "some clients did not finish"
    assert not errors, errors[:3]
    all_jobs = [j for r in results for j in (r or [])]
    assert len(all_jobs) == n_clients * n_jobs
    assert len({j["job_id"] for j in all_jobs}) == n_clients * n_jobs
    for i, r in enumerate(results):
        assert r is not None
        for k, j in enumerate(r):
            assert j["status"] == "completed" and j["result"] == [i, k] and j["attempts"] == 1
    with d.client() as c:
        s = c.request("stats")
        assert s["by_status"] == {"completed": n_clients * n_jobs}, s["by_status"]
        listed, _ = list_all(c, 10_000, status="completed")
        assert len(listed) == n_clients * n_jobs


# =======================================================================================
# shutdown
# =======================================================================================

def test_shutting_down_during_grace_period(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(*SAMPLE_ARGS, "--grace", "5")
    with d.client() as c:
        job = sleeper(c, 2.0)
        assert d.proc is not None
        d.proc.send_signal(signal.SIGTERM)

        def refused() -> bool:
            reply = c.call("submit", {"task": "echo", "args": {"value": 1}})
            if reply["ok"]:
                return False
            check_error(reply, "shutting_down")
            return True

        wait_until(refused, 5, what="submit to answer shutting_down")
        assert d.proc.poll() is None, "the daemon exited before the running job's grace period"
        err = call_error(c, "submit_many", {"jobs": [{"task": "echo", "args": {"value": 1}}]}, "shutting_down")
        assert err["message"]
    assert d.proc.wait(15) == 0
    assert not os.path.exists(d.socket)
    # The job finished inside the grace period and was recorded as completed.
    d.restart()
    with d.client() as c:
        rec = c.get(job["job_id"])
        assert rec["status"] == "completed" and rec["attempts"] == 1
