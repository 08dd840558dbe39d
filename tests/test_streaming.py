"""End-to-end tests of the streaming ops: ``wait`` with events, ``logs``, ``watch``, ``close``.

The contract is ``protocol-v1.md`` (Streams, Events, ``close``, ``overloaded``); the
daemon's own description is ``docs/protocol.md`` ("Events and streams"). A real
``pyrexisd`` in a subprocess, clients made of ``socket`` + ``msgpack`` only. Waiting is
polling with a deadline or the protocol's own ``wait``, never a bare sleep.

Most tests share one module-scoped daemon and keep out of each other's way with unique
queue names; the shutdown test starts a daemon of its own.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
from conftest import Daemon, RawClient, require_alive, shared_daemon, wait_until
from e2e_helpers import still_serving, wait_status
from test_states import CONTRACT_TABLE

ARGS = ("--tasks", "sample_tasks", "--tasks", "stream_tasks", "--kill-grace", "2")
TERMINAL = {"completed", "failed", "cancelled"}

# The legal status changes of the contract (None: the submit itself).
# The contract's table, kept once (independently of protocol.status) in test_states.
LEGAL = CONTRACT_TABLE


# -- helpers -----------------------------------------------------------------------------

def uid(prefix: str = "") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def frame(message: dict[str, Any]) -> bytes:
    body: bytes = msgpack.packb(message, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def read_stream(c: Conn, rid: int, stash: list[dict[str, Any]] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The events and the final frame of stream ``rid``; other frames go to ``stash``."""
    events: list[dict[str, Any]] = []
    while True:
        f = c.recv()
        if f.get("id") != rid:
            if stash is not None:
                stash.append(f)
            continue
        if "event" in f:
            assert "ok" not in f, f
            events.append(f["event"])
        else:
            assert "event" not in f, f
            return events, f


def open_stream(c: Conn, op: str, args: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    """Send a streaming request, then a ``hello``, and read up to the hello's answer.

    The contract puts a stream's subscription in effect before the daemon reads the
    connection's next frame, so once ``hello`` is answered the stream is subscribed.
    Returns the stream's id and the frames read meanwhile (its opening events, say).
    """
    rid = c.new_id()
    c.send({"id": rid, "op": op, "args": args})
    hid = c.new_id()
    c.send({"id": hid, "op": "hello", "args": {"protocol": 1}})
    early: list[dict[str, Any]] = []
    while True:
        f = c.recv()
        if f.get("id") == hid:
            assert f["ok"], f
            return rid, early
        early.append(f)


def open_job_stream(c: Conn, op: str, args: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    """Send a job stream (``wait`` with events, ``watch`` with ``job_id``) and read up to
    its opening state event, so that the job's later changes come after it. Returns the
    stream's id and the frames read (the opening event included)."""
    rid = c.new_id()
    c.send({"id": rid, "op": op, "args": args})
    early: list[dict[str, Any]] = []
    while True:
        f = c.recv()
        early.append(f)
        if f.get("id") == rid:
            assert "event" in f and f["event"]["kind"] == "state", f
            return rid, early


def close_stream(c: Conn, rid: int, early: list[dict[str, Any]] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """``close`` stream ``rid``: its events, its final frame, and the close's answer.

    Also checks the order the contract gives: the stream's final frame first, then the
    answer to ``close``.
    """
    cid = c.new_id()
    c.send({"id": cid, "op": "close", "args": {"id": rid}})
    events = [f["event"] for f in (early or []) if f.get("id") == rid and "event" in f]
    final: dict[str, Any] | None = None
    while True:
        f = c.recv()
        if f.get("id") == rid:
            assert final is None, f"a frame of stream {rid} after its final frame: {f}"
            if "event" in f:
                events.append(f["event"])
            else:
                final = f
        elif f.get("id") == cid:
            assert final is not None, "close was answered before the stream's final frame"
            assert f["ok"], f
            return events, final, f["result"]


def check_job_events_in_order(events: list[dict[str, Any]]) -> None:
    """Per job: legal status changes, nothing after a terminal state, seqs increasing."""
    by_job: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_job.setdefault(e["job_id"], []).append(e)
    for job_id, evs in by_job.items():
        status: str | None = None
        first_state = True
        last_seq = {"log": 0, "output": 0}
        for e in evs:
            assert status not in TERMINAL, f"{job_id}: event after the terminal state: {e}"
            if e["kind"] == "state":
                # The first state a watch sees may be any (it attached mid-way); later
                # ones must be legal changes from it.
                if not first_state:
                    assert e["status"] in LEGAL[status], f"{job_id}: {status} -> {e['status']} is not legal: {evs}"
                first_state = False
                status = e["status"]
            elif e["kind"] in last_seq:
                assert e["seq"] > last_seq[e["kind"]], f"{job_id}: {e['kind']} seq out of order: {evs}"
                last_seq[e["kind"]] = e["seq"]


def logs_all(c: Conn, job_id: str, since: int = 1) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    events, final = c.stream("logs", {"job_id": job_id, "since": since})
    assert final["ok"], final
    return events, final["result"]


class Conn(RawClient):
    """A RawClient that keeps the frames ``call`` reads for other ids instead of
    dropping them: a stream open on the connection loses nothing while a request runs.
    ``recv`` returns the kept frames first, in the order they arrived."""

    def __init__(self, path: str, timeout: float = 60.0) -> None:
        super().__init__(path, timeout)
        self.stash: deque[dict[str, Any]] = deque()

    def __enter__(self) -> Conn:
        return self

    def recv(self) -> dict[str, Any]:
        if self.stash:
            return self.stash.popleft()
        return super().recv()

    def call(self, op: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        rid = self.send_request(op, args)
        while True:
            f = super().recv()
            if f.get("id") == rid and "event" not in f:
                return f
            self.stash.append(f)


class SmallBufferClient(Conn):
    """A Conn whose socket has a small receive buffer (set before connecting)."""

    def __init__(self, path: str, rcvbuf: int = 4096, timeout: float = 60.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self._buf = b""
        self._next_id = 1
        self.stash = deque()


# -- fixtures ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shared() -> Iterator[Daemon]:
    yield from shared_daemon("pxs", ARGS)


@pytest.fixture
def c(shared: Daemon) -> Iterator[Conn]:
    require_alive(shared)
    with Conn(shared.socket) as client:
        yield client


def running_sleep(c: Conn, seconds: float, **spec: Any) -> dict[str, Any]:
    job = c.submit("sleep", {"seconds": seconds}, **spec)
    wait_status(c, job["job_id"], "running", 10)
    return job


# =======================================================================================
# wait with events
# =======================================================================================

def test_wait_events_on_a_running_sleep_job(c: Conn) -> None:
    job = running_sleep(c, 1.2)
    events, final = c.stream("wait", {"job_id": job["job_id"], "events": True, "timeout": 30})
    assert final["ok"], final
    assert all(e["job_id"] == job["job_id"] for e in events)
    first, last = events[0], events[-1]
    assert first["kind"] == "state" and first["status"] == "running" and first["attempt"] == 1, events[:3]
    assert isinstance(first["time"], float)
    assert last["kind"] == "state" and last["status"] == "completed" and last["attempt"] == 1, events[-3:]
    middle = events[1:-1]
    assert middle, "no progress event from a 1.2 s sleep job (it reports every <= 0.5 s)"
    assert all(e["kind"] == "progress" for e in middle), [e["kind"] for e in middle]
    fractions = [e["fraction"] for e in middle]
    assert len(fractions) >= 2, fractions
    assert all(f is not None and 0.0 <= f <= 1.0 for f in fractions), fractions
    assert fractions == sorted(fractions), f"progress went backwards: {fractions}"
    for e in middle:
        assert "message" in e and isinstance(e["time"], float), e
    record = final["result"]
    assert record["job_id"] == job["job_id"] and record["status"] == "completed"
    assert record["finished_at"] is not None and record["attempts"] == 1


def test_wait_events_on_a_completed_job_ends_at_once(c: Conn) -> None:
    job = c.submit("echo", {"value": "done"})
    assert c.wait(job["job_id"])["status"] == "completed"
    began = time.monotonic()
    events, final = c.stream("wait", {"job_id": job["job_id"], "events": True})  # no timeout
    assert time.monotonic() - began < 5
    assert final["ok"], final
    assert final["result"]["status"] == "completed" and final["result"]["result"] == "done"
    assert [e["kind"] for e in events] == ["state"], events
    assert events[0]["status"] == "completed" and events[0]["attempt"] == 1
    assert "error" not in events[0]


def test_wait_events_on_a_completed_job_with_progress_opens_with_state_then_progress(c: Conn) -> None:
    # The contract: the stream opens with a state event of the current status "and its
    # latest progress event, when it has one" — for a finished job, after the state.
    job = c.submit("t.progress", {"steps": 4})
    record = c.wait(job["job_id"])
    assert record["status"] == "completed" and record["progress"] is not None
    events, final = c.stream("wait", {"job_id": job["job_id"], "events": True})
    assert final["ok"] and final["result"]["status"] == "completed"
    assert [e["kind"] for e in events] == ["state", "progress"], events
    assert events[0]["status"] == "completed"
    assert events[1]["fraction"] == record["progress"]["fraction"] == 1.0
    assert events[1]["message"] == record["progress"]["message"] == "step 4"


def test_wait_events_on_a_failed_job_opens_with_its_error(c: Conn) -> None:
    job = c.submit("t.fail", {"message": "nope"})
    assert c.wait(job["job_id"])["status"] == "failed"
    events, final = c.stream("wait", {"job_id": job["job_id"], "events": True})
    assert final["ok"] and final["result"]["status"] == "failed"
    state = [e for e in events if e["kind"] == "state"]
    assert len(state) == 1 and state[0]["status"] == "failed"
    assert state[0]["error"]["type"] == "exception" and "nope" in state[0]["error"]["message"]


def test_wait_events_on_a_waiting_job_starts_with_pending(c: Conn) -> None:
    queue = uid("paused-")
    c.request("pause", {"queue": queue})
    try:
        job = c.submit("echo", {"value": 1}, queue=queue)
        assert job["status"] == "pending"
        events, final = c.stream("wait", {"job_id": job["job_id"], "events": True, "timeout": 0.3})
        assert [(e["kind"], e["status"]) for e in events] == [("state", "pending")], events
        assert events[0]["attempt"] == 0
        assert final["ok"] is False and final["error"]["code"] == "timeout", final
        # With events the timeout has no details (docs/protocol.md, wait).
        assert final["error"].get("details") is None
        # Still waiting, and it runs once the queue is resumed; the stream sees it.
        rid, early = open_job_stream(c, "wait", {"job_id": job["job_id"], "events": True, "timeout": 30})
        c.request("resume", {"queue": queue})
        events, final = read_stream(c, rid)
        events = [f["event"] for f in early if f.get("id") == rid and "event" in f] + events
        assert final["ok"] and final["result"]["status"] == "completed"
        assert [e["status"] for e in events if e["kind"] == "state"] == ["pending", "running", "completed"]
    finally:
        c.request("resume", {"queue": queue})


def test_wait_events_unknown_job_is_not_found(c: Conn) -> None:
    events, final = c.stream("wait", {"job_id": uid("nope-"), "events": True})
    assert events == []
    assert final["ok"] is False and final["error"]["code"] == "not_found"


# =======================================================================================
# generator tasks: output events
# =======================================================================================

GENERATORS = [
    ("st.gen", "thread", {"n": 5}, list(range(5)), list(range(5))),
    ("st.gen", "process", {"n": 5}, list(range(5)), list(range(5))),
    ("st.agen", "async", {"n": 5}, list(range(5)), list(range(5))),
    ("st.gen_return", "thread", {"n": 3}, list(range(3)), {"total": 3}),
    ("st.gen_return", "process", {"n": 3}, list(range(3)), {"total": 3}),
]


@pytest.mark.parametrize(("task", "mode", "args", "items", "result"), GENERATORS, ids=[f"{g[0]}-{g[1]}" for g in GENERATORS])
def test_generator_outputs_reach_wait_and_watch(
    shared: Daemon, c: Conn, task: str, mode: str, args: dict[str, Any], items: list[Any], result: Any
) -> None:
    queue = uid("gen-")
    c.request("pause", {"queue": queue})
    with Conn(shared.socket) as w:
        # A watch on the task and the queue, subscribed before the job exists.
        wid, _ = open_stream(w, "watch", {"task": task, "queue": queue, "kinds": ["output", "state"]})
        job = c.submit(task, args, mode=mode, queue=queue)
        # wait --events subscribed while the job is still pending: it sees every output.
        rid, early = open_job_stream(c, "wait", {"job_id": job["job_id"], "events": True, "timeout": 60})
        c.request("resume", {"queue": queue})
        events, final = read_stream(c, rid)
        events = [f["event"] for f in early if f.get("id") == rid and "event" in f] + events
        assert final["ok"], final
        assert final["result"]["status"] == "completed", final["result"]
        assert final["result"]["result"] == result
        outputs = [e for e in events if e["kind"] == "output"]
        assert [e["seq"] for e in outputs] == list(range(1, len(items) + 1)), outputs
        assert [e["value"] for e in outputs] == items
        assert all(e["job_id"] == job["job_id"] and isinstance(e["time"], float) for e in outputs)
        # Outputs come while running: after the running state, before the terminal one.
        kinds = [(e["kind"], e.get("status")) for e in events]
        assert kinds.index(("state", "running")) < kinds.index(("output", None))
        assert kinds[-1] == ("state", "completed"), kinds
        check_job_events_in_order(events)

        # The watch saw the same outputs, in order, before the completed state.
        seen: list[dict[str, Any]] = []
        while not any(e["kind"] == "state" and e["status"] == "completed" for e in seen):
            f = w.recv()
            assert f.get("id") == wid and "event" in f, f
            seen.append(f["event"])
        w_events, w_final, closed = close_stream(w, wid)
        assert closed == {"closed": True}
        assert w_final == {"id": wid, "ok": True, "result": {}}
        seen += w_events
        assert {e["job_id"] for e in seen} == {job["job_id"]}
        assert [e["value"] for e in seen if e["kind"] == "output"] == items
        assert [e["seq"] for e in seen if e["kind"] == "output"] == list(range(1, len(items) + 1))
        assert not [e for e in seen if e["kind"] not in ("output", "state")], "kinds filter let other kinds through"
        check_job_events_in_order(seen)


# =======================================================================================
# logs with follow
# =======================================================================================

def test_logs_follow_attaching_mid_way_gets_every_line_once(c: Conn) -> None:
    cmd = "seq 1 2500; sleep 0.3; seq 2501 5000; sleep 0.3; seq 5001 7500; sleep 0.3; seq 7501 10000"
    job = c.submit("shell", {"cmd": cmd})
    jid = job["job_id"]

    def some_lines_stored() -> bool:
        events, _ = logs_all(c, jid)
        return len(events) > 0

    wait_until(some_lines_stored, 15, 0.02, "the first lines to be stored")
    attached_while = c.get(jid)["status"]
    events, final = c.stream("logs", {"job_id": jid, "follow": True})
    assert final["ok"], final
    assert attached_while == "running", "the job ended before the follower attached; the handover was not tested"
    assert all(e["kind"] == "log" and e["job_id"] == jid for e in events)
    seqs = [e["seq"] for e in events]
    lines = [e["line"] for e in events]
    assert len(events) == 10_000, f"{len(events)} lines"
    assert seqs == list(range(1, 10_001)), "lost, repeated or reordered lines"
    assert lines == [str(i) for i in range(1, 10_001)]
    assert {e["stream"] for e in events} == {"stdout"}
    assert final["result"] == {"next": 10_001}
    assert c.get(jid)["status"] == "completed"

    # since resumes exactly where asked.
    tail, end = logs_all(c, jid, since=5001)
    assert [e["seq"] for e in tail] == list(range(5001, 10_001))
    assert [e["line"] for e in tail] == [str(i) for i in range(5001, 10_001)]
    assert end == {"next": 10_001}
    # Past the end: nothing, and next is since.
    nothing, end = logs_all(c, jid, since=10_001)
    assert nothing == [] and end == {"next": 10_001}
    # follow on a finished job ends after the stored lines.
    events, final = c.stream("logs", {"job_id": jid, "follow": True, "since": 9_990})
    assert [e["seq"] for e in events] == list(range(9_990, 10_001)) and final["result"] == {"next": 10_001}


def test_logs_follow_from_a_later_seq_while_running(c: Conn) -> None:
    job = c.submit("shell", {"cmd": "seq 1 100; sleep 0.4; seq 101 200"})
    jid = job["job_id"]
    wait_until(lambda: len(logs_all(c, jid)[0]) >= 100, 15, 0.02, "100 lines")
    events, final = c.stream("logs", {"job_id": jid, "follow": True, "since": 51})
    assert [e["seq"] for e in events] == list(range(51, 201))
    assert [e["line"] for e in events] == [str(i) for i in range(51, 201)]
    assert final["result"] == {"next": 201}


def test_100_followers_get_every_line_in_order(shared: Daemon, c: Conn, workdir: str) -> None:
    n_followers, n_lines = 100, 2000
    gate = os.path.join(workdir, "gate")
    cmd = f"while [ ! -e '{gate}' ]; do sleep 0.02; done; seq 1 1000; sleep 0.2; seq 1001 {n_lines}"
    job = c.submit("shell", {"cmd": cmd})
    jid = job["job_id"]
    wait_status(c, jid, "running", 10)
    results: list[tuple[list[dict[str, Any]], dict[str, Any]] | None] = [None] * n_followers
    errors: list[BaseException] = []
    sent = threading.Semaphore(0)

    def follower(i: int) -> None:
        try:
            with Conn(shared.socket) as f:
                rid = f.new_id()
                f.send({"id": rid, "op": "logs", "args": {"job_id": jid, "follow": True}})
                sent.release()
                results[i] = read_stream(f, rid)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
            sent.release()

    threads = [threading.Thread(target=follower, args=(i,), daemon=True) for i in range(n_followers)]
    for t in threads:
        t.start()
    for _ in threads:
        assert sent.acquire(timeout=30), "a follower did not start"
    with open(gate, "w"):
        pass
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads), "some followers did not finish"
    assert not errors, errors[:3]
    want_lines = [str(i) for i in range(1, n_lines + 1)]
    for i, r in enumerate(results):
        assert r is not None, i
        events, final = r
        assert final["ok"] and final["result"] == {"next": n_lines + 1}, (i, final)
        assert [e["seq"] for e in events] == list(range(1, n_lines + 1)), f"follower {i}: lines lost or reordered"
        assert [e["line"] for e in events] == want_lines, f"follower {i}"
    assert c.get(jid)["status"] == "completed"


# =======================================================================================
# backpressure: slow and fast readers
# =======================================================================================

def test_slow_watch_reader_is_ended_overloaded_without_slowing_the_daemon(shared: Daemon, c: Conn) -> None:
    with SmallBufferClient(shared.socket) as slow:
        wid, early = open_stream(slow, "watch", {})
        assert not [f for f in early if f.get("id") == wid and "event" not in f], early
        # The daemon sends a watch's events as fast as the reader takes them and buffers
        # them (4096 at most) only once its write buffer for the connection holds more
        # than 4 MiB (docs/protocol.md, "Stream buffers"). A few thousand echo jobs
        # make ~1 MB of state events, so a job first logs ~6 MB that the slow reader
        # does not read: the write buffer fills, and the echo jobs' events overflow.
        bulk = c.submit("shell", {"cmd": "awk 'BEGIN{s=sprintf(\"%2000s\",\"\"); for(i=1;i<=3000;i++) print i s}'"})
        assert c.wait(bulk["job_id"], 60)["status"] == "completed"

        # The daemon stays responsive while the slow client reads nothing.
        ids: list[str] = []
        for k in range(3):
            batch = c.request("submit_many", {"jobs": [{"task": "echo", "args": {"value": [k, i]}} for i in range(1000)]})
            ids += [j["job_id"] for j in batch["jobs"]]
        assert len(ids) == 3000
        for jid in ids[::250] + ids[-3:]:
            assert c.wait(jid, 60)["status"] == "completed"
        with Conn(shared.socket) as other:
            still_serving(other)
            events, final = other.stream("wait", {"job_id": ids[-1], "events": True, "timeout": 30})
            assert final["ok"] and final["result"]["status"] == "completed"
        wait_until(
            lambda: c.request("list", {"status": ["pending", "running"], "limit": 1})["jobs"] == [],
            60, 0.05, "every echo job to finish",
        )

        # Now the slow client reads: its watch ended with overloaded.
        events, final = read_stream(slow, wid)
        assert final["ok"] is False, final
        err = final["error"]
        assert err["code"] == "overloaded", err
        assert err["details"]["limit"] == "stream_buffer"
        assert isinstance(err["details"]["dropped"], int) and err["details"]["dropped"] > 0, err
        assert events, "the watch delivered nothing before it overflowed"
        # What it did deliver is in order.
        check_job_events_in_order(events)
        # The connection still works, and so does the daemon.
        assert slow.request("hello", {"protocol": 1})["protocol"] == 1
        still_serving(slow)
        wid2, _ = open_stream(slow, "watch", {"queue": uid("q-")})
        _, final2, closed = close_stream(slow, wid2)
        assert final2["ok"] and final2["result"] == {} and closed == {"closed": True}


def test_fast_reader_of_20000_log_lines_is_not_overloaded(c: Conn) -> None:
    queue = uid("chatter-")
    c.request("pause", {"queue": queue})
    try:
        job = c.submit("st.chatter", {"lines": 20_000}, mode="thread", queue=queue)
        rid, early = open_job_stream(c, "wait", {"job_id": job["job_id"], "events": True, "timeout": 120})
        c.request("resume", {"queue": queue})
        events, final = read_stream(c, rid)
    finally:
        c.request("resume", {"queue": queue})
    events = [f["event"] for f in early if f.get("id") == rid and "event" in f] + events
    assert final["ok"], f"the stream of a reader that keeps up was ended: {final}"
    assert final["result"]["status"] == "completed" and final["result"]["result"] == 20_000
    logs = [e for e in events if e["kind"] == "log"]
    assert len(logs) == 20_000, f"{len(logs)} log events"
    assert [e["seq"] for e in logs] == list(range(1, 20_001))
    assert logs[0]["line"] == "line 1" and logs[-1]["line"] == "line 20000"
    assert {e["stream"] for e in logs} == {"log"}
    assert [e["status"] for e in events if e["kind"] == "state"] == ["pending", "running", "completed"]
    assert events[-1]["kind"] == "state" and events[-1]["status"] == "completed"


# =======================================================================================
# watch filters and close
# =======================================================================================

def test_watch_job_id_opens_with_its_state_and_close_ends_it(c: Conn) -> None:
    job = running_sleep(c, 30)
    try:
        rid, early = open_stream(c, "watch", {"job_id": job["job_id"]})
        # The opening event may come after the hello's answer (it needs a read).
        while not [f for f in early if f.get("id") == rid]:
            early.append(c.recv())
        opening = [f["event"] for f in early if f.get("id") == rid]
        assert "event" in [f for f in early if f.get("id") == rid][0], early
        assert opening[0]["kind"] == "state" and opening[0]["status"] == "running" and opening[0]["attempt"] == 1
        assert all(e["kind"] in ("state", "progress") for e in opening)
        events, final, closed = close_stream(c, rid, early)
        assert final == {"id": rid, "ok": True, "result": {}}
        assert closed == {"closed": True}
        assert all(e["job_id"] == job["job_id"] for e in events)
        # Closed: closing again is {"closed": false}, not an error.
        assert c.request("close", {"id": rid}) == {"closed": False}
    finally:
        c.request("cancel", {"job_id": job["job_id"]})


def test_watch_job_id_unknown_is_not_found(c: Conn) -> None:
    events, final = c.stream("watch", {"job_id": uid("nope-")})
    assert events == [] and final["ok"] is False and final["error"]["code"] == "not_found"


def test_watch_job_id_with_kinds_filters_the_opening_too(c: Conn) -> None:
    job = running_sleep(c, 30)
    try:
        rid, early = open_stream(c, "watch", {"job_id": job["job_id"], "kinds": ["log"]})
        events, final, closed = close_stream(c, rid, early)
        assert events == [], events
        assert final["ok"] and closed == {"closed": True}
    finally:
        c.request("cancel", {"job_id": job["job_id"]})


def test_watch_filters_task_queue_and_kinds(shared: Daemon, c: Conn) -> None:
    q1, q2 = uid("wq1-"), uid("wq2-")
    watchers: dict[str, tuple[Conn, int]] = {}
    specs: dict[str, dict[str, Any]] = {
        "task": {"task": "t.progress", "queue": q1},
        "queue": {"queue": q2},
        "kinds": {"kinds": ["state"], "queue": q1},
        "kinds_none": {"kinds": ["no-such-kind"]},
    }
    try:
        for name, args in specs.items():
            w = Conn(shared.socket)
            rid, _ = open_stream(w, "watch", args)
            watchers[name] = (w, rid)
        jobs = [
            c.submit("t.progress", {"steps": 3}, queue=q1),
            c.submit("echo", {"value": 1}, queue=q1),
            c.submit("t.progress", {"steps": 3}, queue=q2),
            c.submit("echo", {"value": 2}, queue=q2),
        ]
        for j in jobs:
            assert c.wait(j["job_id"])["status"] == "completed"
        by_task = {j["job_id"]: j["task"] for j in jobs}
        by_queue = {j["job_id"]: j["queue"] for j in jobs}
        seen: dict[str, list[dict[str, Any]]] = {}
        for name, (w, rid) in watchers.items():
            events, final, closed = close_stream(w, rid)
            assert final["ok"] and final["result"] == {} and closed == {"closed": True}, name
            seen[name] = [e for e in events if e["job_id"] in by_task]
            check_job_events_in_order(events)
    finally:
        for w, _ in watchers.values():
            w.close()

    # task filter: the t.progress job, all its kinds; nothing of the echo job.
    # (The task watch also names q1, so only the t.progress job of q1 matches: filters AND.)
    ev = seen["task"]
    assert {by_task[e["job_id"]] for e in ev} == {"t.progress"}
    assert {e["job_id"] for e in ev} == {jobs[0]["job_id"]}
    assert {"state", "log"} <= {e["kind"] for e in ev}
    for j in (jobs[0],):
        mine = [e for e in ev if e["job_id"] == j["job_id"]]
        assert [e["seq"] for e in mine if e["kind"] == "log"] == [1, 2, 3]
        assert [e["status"] for e in mine if e["kind"] == "state"][-1] == "completed"
    # queue filter: both q2 jobs only.
    ev = seen["queue"]
    assert {by_queue[e["job_id"]] for e in ev} == {q2}
    assert {e["job_id"] for e in ev} == {jobs[2]["job_id"], jobs[3]["job_id"]}
    # kinds (with queue): state events of the q1 jobs only.
    ev = seen["kinds"]
    assert ev and {e["kind"] for e in ev} == {"state"}
    assert {e["job_id"] for e in ev} == {jobs[0]["job_id"], jobs[1]["job_id"]}
    for j in (jobs[0], jobs[1]):
        assert [e["status"] for e in ev if e["job_id"] == j["job_id"]][-1] == "completed"
    # An unknown kind is not an error; it never matches.
    assert seen["kinds_none"] == []


def test_close_unknown_and_non_stream_ids(c: Conn) -> None:
    assert c.request("close", {"id": 987_654}) == {"closed": False}
    # A wait without events is not a stream: close does not apply to it.
    job = running_sleep(c, 30)
    try:
        wid = c.new_id()
        c.send({"id": wid, "op": "wait", "args": {"job_id": job["job_id"], "timeout": 30}})
        assert c.request("close", {"id": wid}) == {"closed": False}
    finally:
        c.request("cancel", {"job_id": job["job_id"]})
    events, final = read_stream(c, wid)
    assert events == [] and final["ok"] and final["result"]["status"] == "cancelled"


def test_close_of_a_logs_follow_stream_returns_next(c: Conn) -> None:
    job = c.submit("shell", {"cmd": "seq 1 50; sleep 30"})
    jid = job["job_id"]
    try:
        wait_until(lambda: len(logs_all(c, jid)[0]) == 50, 15, 0.02, "50 lines")
        rid = c.new_id()
        c.send({"id": rid, "op": "logs", "args": {"job_id": jid, "follow": True, "since": 11}})
        got: list[dict[str, Any]] = []
        while len(got) < 40:
            f = c.recv()
            assert f.get("id") == rid and "event" in f, f
            got.append(f["event"])
        events, final, closed = close_stream(c, rid)
        got += events
        assert [e["seq"] for e in got] == list(range(11, 51))
        assert final == {"id": rid, "ok": True, "result": {"next": 51}}
        assert closed == {"closed": True}
    finally:
        c.request("cancel", {"job_id": jid})


def test_close_of_a_wait_events_stream_returns_the_record_now(c: Conn) -> None:
    job = running_sleep(c, 30)
    try:
        rid, early = open_stream(c, "wait", {"job_id": job["job_id"], "events": True})
        events, final, closed = close_stream(c, rid, early)
        assert closed == {"closed": True}
        assert final["ok"], final
        assert final["result"]["job_id"] == job["job_id"] and final["result"]["status"] == "running"
        assert events[0]["kind"] == "state" and events[0]["status"] == "running"
    finally:
        c.request("cancel", {"job_id": job["job_id"]})


def test_closing_the_connection_ends_its_streams(shared: Daemon, c: Conn) -> None:
    job = running_sleep(c, 30)
    try:
        with Conn(shared.socket) as w:
            open_stream(w, "watch", {"job_id": job["job_id"]})
            open_stream(w, "wait", {"job_id": job["job_id"], "events": True})
        # The daemon goes on serving, and the job's events still flow to others.
        rid, early = open_stream(c, "watch", {"job_id": job["job_id"]})
        c.request("cancel", {"job_id": job["job_id"]})
        seen: list[dict[str, Any]] = [f["event"] for f in early if f.get("id") == rid]
        while not any(e["kind"] == "state" and e["status"] == "cancelled" for e in seen):
            f = c.recv()
            if f.get("id") == rid and "event" in f:
                seen.append(f["event"])
        close_stream(c, rid)
    finally:
        if c.get(job["job_id"])["status"] == "running":
            c.request("cancel", {"job_id": job["job_id"]})


# =======================================================================================
# ordering
# =======================================================================================

def test_watch_then_submit_pipelined_in_one_write_sees_the_job(c: Conn) -> None:
    queue = uid("pipe-")
    wid, sid = c.new_id(), c.new_id()
    c.send_raw(
        frame({"id": wid, "op": "watch", "args": {"queue": queue}})
        + frame({"id": sid, "op": "submit", "args": {"task": "echo", "args": {"value": "p"}, "queue": queue}})
    )
    job: dict[str, Any] | None = None
    events: list[dict[str, Any]] = []
    while job is None or not any(e["kind"] == "state" and e["status"] == "completed" for e in events):
        f = c.recv()
        if f.get("id") == sid:
            assert f["ok"], f
            job = f["result"]
        elif f.get("id") == wid:
            assert "event" in f, f"the watch ended: {f}"
            events.append(f["event"])
    assert {e["job_id"] for e in events} == {job["job_id"]}
    statuses = [e["status"] for e in events if e["kind"] == "state"]
    # The submit's own state (running, or pending then running) is seen, then completed.
    assert statuses[0] == job["status"], (statuses, job["status"])
    assert statuses[-1] == "completed"
    check_job_events_in_order(events)
    _, final, closed = close_stream(c, wid)
    assert final["ok"] and closed == {"closed": True}


def test_final_frame_comes_after_the_last_event(c: Conn) -> None:
    queue = uid("final-")
    c.request("pause", {"queue": queue})
    job = c.submit("t.progress", {"steps": 200}, queue=queue)
    rid, early = open_job_stream(c, "wait", {"job_id": job["job_id"], "events": True, "timeout": 30})
    c.request("resume", {"queue": queue})
    frames: list[dict[str, Any]] = [f for f in early if f.get("id") == rid]
    while True:
        f = c.recv()
        assert f.get("id") == rid, f
        frames.append(f)
        if "event" not in f:
            break
    # Nothing more of that stream after its final frame: a hello's answer comes next.
    hid = c.new_id()
    c.send({"id": hid, "op": "hello", "args": {"protocol": 1}})
    f = c.recv()
    assert f.get("id") == hid, f"a frame after the stream's final frame: {f}"
    events = [f["event"] for f in frames[:-1]]
    assert frames[-1]["ok"] and frames[-1]["result"]["status"] == "completed"
    assert events[-1]["kind"] == "state" and events[-1]["status"] == "completed"
    check_job_events_in_order(events)
    # Every log line was seen, in order, before the terminal state (the wait was open
    # before the job started).
    logs = [e["seq"] for e in events if e["kind"] == "log"]
    assert logs == list(range(1, 201))
    assert events[0]["kind"] == "state" and events[0]["status"] == "pending"
    fractions = [e["fraction"] for e in events if e["kind"] == "progress"]
    assert fractions == sorted(fractions)


def test_watch_sees_many_jobs_each_in_order(shared: Daemon, c: Conn) -> None:
    queue = uid("many-")
    with Conn(shared.socket) as w:
        wid, _ = open_stream(w, "watch", {"queue": queue})
        specs = []
        for i in range(60):
            task, args, mode = [
                ("echo", {"value": i}, "thread"),
                ("echo", {"value": i}, "async"),
                ("t.progress", {"steps": 5}, "thread"),
                ("st.gen", {"n": 3, "pause": 0.0}, "thread"),
                ("t.fail", {}, "thread"),
            ][i % 5]
            specs.append({"task": task, "args": args, "mode": mode, "queue": queue})
        jobs = c.request("submit_many", {"jobs": specs})["jobs"]
        for j in jobs:
            assert c.wait(j["job_id"])["status"] in TERMINAL
        ids = {j["job_id"] for j in jobs}
        seen: list[dict[str, Any]] = []
        done: set[str] = set()
        while done != ids:
            f = w.recv()
            assert f.get("id") == wid and "event" in f, f
            e = f["event"]
            seen.append(e)
            if e["kind"] == "state" and e["status"] in TERMINAL:
                done.add(e["job_id"])
        events, final, closed = close_stream(w, wid)
        seen += events
    assert final["ok"] and closed == {"closed": True}
    check_job_events_in_order(seen)
    for j in jobs:
        mine = [e for e in seen if e["job_id"] == j["job_id"]]
        states = [e["status"] for e in mine if e["kind"] == "state"]
        assert states[0] == j["status"], (states, j["status"])
        assert states[-1] == ("failed" if j["task"] == "t.fail" else "completed"), states
        if j["task"] == "t.progress":
            assert [e["seq"] for e in mine if e["kind"] == "log"] == [1, 2, 3, 4, 5]
        if j["task"] == "st.gen":
            assert [e["value"] for e in mine if e["kind"] == "output"] == [0, 1, 2]


# =======================================================================================
# shutdown
# =======================================================================================

def test_sigterm_ends_open_streams_with_shutting_down(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(*ARGS, "--grace", "5")
    with Conn(d.socket) as c, Conn(d.socket) as w:
        job = running_sleep(c, 3)
        jid = job["job_id"]
        streams = [
            open_stream(w, "watch", {})[0],
            open_stream(w, "watch", {"job_id": jid})[0],
            open_stream(w, "wait", {"job_id": jid, "events": True})[0],
            open_stream(w, "logs", {"job_id": jid, "follow": True})[0],
        ]
        assert d.proc is not None
        signalled = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        finals: dict[int, dict[str, Any]] = {}
        while len(finals) < len(streams):
            f = w.recv()
            if f.get("id") in streams and "event" not in f:
                finals[f["id"]] = f
        elapsed = time.monotonic() - signalled
        for f in finals.values():
            assert f["ok"] is False and f["error"]["code"] == "shutting_down", f
        # The streams end at once, not when the running job is done.
        assert elapsed < 2.5, f"streams ended {elapsed:.1f} s after SIGTERM"
        assert d.proc.poll() is None, "the daemon did not give the running job its grace period"
    assert d.proc.wait(15) == 0
    d.restart()
    with d.client() as c:
        assert c.get(jid)["status"] == "completed"
