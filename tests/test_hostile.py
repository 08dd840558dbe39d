"""Hostile input on a real socket: floods of bad frames and bombs beside honest clients,
many connections, slow senders, idle connections, and every per-peer limit.

Each test starts its own daemon with the limits it probes set small, so that a limit is
reached in milliseconds; waiting is polling with deadlines.
"""

from __future__ import annotations

import errno
import random
import resource
import select
import socket
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
from conftest import Daemon, RawClient, shared_daemon, wait_until
from e2e_helpers import rss_kib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import ERROR_CODES
from pyrexisctl.client import Client

SAMPLE_ARGS = ("--tasks", "sample_tasks", "--kill-grace", "2")


@pytest.fixture(autouse=True, scope="module")
def many_descriptors() -> Iterator[None]:
    """Room for a thousand client sockets in this process (the daemon raises its own)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def connect(path: str, timeout: float = 10.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


def read_frame(s: socket.socket) -> dict[str, Any] | None:
    """The next frame, or None when the daemon closed the connection."""
    header = b""
    while len(header) < 4:
        chunk = s.recv(4 - len(header))
        if not chunk:
            return None
        header += chunk
    (n,) = struct.unpack(">I", header)
    body = b""
    while len(body) < n:
        chunk = s.recv(n - len(body))
        if not chunk:
            return None
        body += chunk
    return msgpack.unpackb(body, raw=False)  # type: ignore[no-any-return]


def closed_after(s: socket.socket) -> list[dict[str, Any]]:
    """Every frame until the daemon closes the connection. (A connection closed while it
    held bytes the daemon never read is reset, and what was in flight to us may be lost.)"""
    frames = []
    try:
        while (f := read_frame(s)) is not None:
            frames.append(f)
    except ConnectionResetError:
        pass
    return frames


HELLO = msgpack.packb({"id": 1, "op": "hello", "args": {"protocol": 1}})


# ------------------------------------------------------------------------- connections


def test_a_thousand_concurrent_connections_are_all_served(start_daemon: Callable[..., Daemon]) -> None:
    """Given a daemon with the default limits (1,024 connections, a listen backlog of as
    many), when 1,000 connections are opened at once — none refused by the kernel — and
    each sends hello before any reads, then every one gets its answer."""
    d = start_daemon(*SAMPLE_ARGS)
    started = time.monotonic()
    socks = [connect(d.socket, 30) for _ in range(1000)]  # EAGAIN here = a backlog too short
    try:
        for s in socks:
            s.sendall(frame(HELLO))
        answered = sum(1 for s in socks if (f := read_frame(s)) is not None and f.get("ok"))
        elapsed = time.monotonic() - started
        assert answered == 1000
        print(f"1000 connections opened and answered in {elapsed:.2f} s")
    finally:
        for s in socks:
            s.close()
    with d.client() as c:
        assert c.wait(c.submit("echo", {"value": 1})["job_id"])["status"] == "completed"


def test_the_connection_past_max_connections_is_told_overloaded_and_closed(start_daemon: Callable[..., Daemon]) -> None:
    """Given --max-connections 10 and ten connections served, then the eleventh gets one
    overloaded frame naming the limit and its value, and is closed; once one of the ten
    leaves, a new connection is served."""
    d = start_daemon(*SAMPLE_ARGS, "--max-connections", "10")
    socks = []
    for _ in range(10):
        s = connect(d.socket)
        s.sendall(frame(HELLO))
        assert read_frame(s) is not None
        socks.append(s)
    extra = connect(d.socket)
    frames = closed_after(extra)
    assert len(frames) == 1 and frames[0]["id"] is None
    assert frames[0]["error"]["code"] == "overloaded"
    assert frames[0]["error"]["details"] == {"limit": "connections", "value": 10}
    socks.pop().close()

    def served() -> bool:
        with RawClient(d.socket, timeout=5) as c:
            try:
                return bool(c.request("hello", {"protocol": 1}))
            except Exception:
                return False

    wait_until(served, 10, what="a connection to be served again")
    for s in socks:
        s.close()


def test_two_hundred_stalled_half_frames_do_not_block_a_new_client_and_are_closed_at_the_deadline(
    start_daemon: Callable[..., Daemon],
) -> None:
    """Given 200 connections that each sent half a frame and stopped, then a new client is
    served at once, and after --frame-timeout every stalled one gets a timeout frame
    (details naming frame_timeout) and is closed."""
    d = start_daemon(*SAMPLE_ARGS, "--frame-timeout", "1.5")
    stalled = []
    for _ in range(200):
        s = connect(d.socket)
        s.sendall(frame(HELLO)[: 4 + len(HELLO) // 2])
        stalled.append(s)
    started = time.monotonic()
    with d.client() as c:
        job = c.submit("echo", {"value": "through"})
        assert c.wait(job["job_id"])["result"] == "through"
    assert time.monotonic() - started < 1.0, "a new client waited on the stalled ones"
    for s in stalled:
        frames = closed_after(s)
        assert [f["error"]["code"] for f in frames] == ["timeout"]
        assert frames[0]["error"]["details"] == {"limit": "frame_timeout", "value": 1.5}
        s.close()
    assert time.monotonic() - started < 10


def test_an_idle_connection_is_closed_but_one_with_a_stream_or_a_wait_is_not(start_daemon: Callable[..., Daemon]) -> None:
    """Given --idle-timeout 0.5, then a connection that sends nothing is told timeout
    (idle_timeout) and closed; one with an open watch, and one with a wait in flight, are
    kept past the timeout."""
    d = start_daemon(*SAMPLE_ARGS, "--idle-timeout", "0.5")
    idle = connect(d.socket)
    watching = RawClient(d.socket)
    watching.send({"id": 5, "op": "watch", "args": {}})
    waiting = RawClient(d.socket)
    job = waiting.submit("sleep", {"seconds": 2.5})
    waiting.send({"id": 99, "op": "wait", "args": {"job_id": job["job_id"]}})
    frames = closed_after(idle)
    assert [f["error"]["code"] for f in frames] == ["timeout"]
    assert frames[0]["error"]["details"] == {"limit": "idle_timeout", "value": 0.5}
    final = waiting.recv()
    assert final["id"] == 99 and final["result"]["status"] == "completed"
    watching.send({"id": 6, "op": "close", "args": {"id": 5}})
    replies: dict[int, dict[str, Any]] = {}
    while len(replies) < 2:  # the watch's events come first; then its final frame and close's
        f = watching.recv()
        if "event" not in f:
            replies[f["id"]] = f
    assert replies[5]["result"] == {} and replies[6]["result"] == {"closed": True}
    for c in (watching, waiting):
        c.close()
    idle.close()


def test_streams_past_max_streams_are_overloaded_and_the_connection_goes_on(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(*SAMPLE_ARGS, "--max-streams", "2")
    with d.client() as c:
        c.send({"id": 101, "op": "watch", "args": {}})
        c.send({"id": 102, "op": "watch", "args": {}})
        third = c.call("watch", {})
        assert third["error"]["code"] == "overloaded"
        assert third["error"]["details"] == {"limit": "streams", "value": 2}
        assert c.call("close", {"id": 101})["result"] == {"closed": True}
        c.send({"id": 103, "op": "watch", "args": {}})
        assert c.call("close", {"id": 103})["result"] == {"closed": True}
        assert c.request("hello", {"protocol": 1})["protocol"] == 1


# ----------------------------------------------------------------------- hostile bytes


def nested(levels: int) -> bytes:
    return b"\x83\xa2id\x01\xa2op\xa5hello\xa4args\x81\xa1x" + b"\x91" * levels + b"\xc0"


def bad_frames(rng: random.Random) -> list[bytes]:
    """One round of everything a hostile peer might send on one connection."""
    return [
        frame(rng.randbytes(rng.randint(0, 300))),  # random bytes
        frame(HELLO[: rng.randint(1, len(HELLO) - 1)]),  # truncated msgpack
        frame(b"\x81\xa1k\xdd\xff\xff\xff\xff"),  # array declaring 4 G elements
        frame(b"\x81\xa1k\xdf\xff\xff\xff\xff"),  # map declaring 4 G pairs
        frame(b"\x81\xa1k" + b"\xdc\xff\xff" * 99 + b"\xc0" * 4000),  # deep stack of large arrays
        frame(b"\x81\xa1k\xdb\xff\xff\xff\xf0" + b"x" * 64),  # a 4 GiB string, 64 bytes sent
        frame(nested(5000)),  # deep nesting
        frame(msgpack.packb({"id": 3, "op": "submit", "args": {"task": "echo", "args": {"value": [[[[1]]]] * 50}}})),
        frame(msgpack.packb({"id": "x", "op": 7})),  # not a request
    ]


def hostile_peer(path: str, stop: threading.Event, seed: int, counts: dict[str, int]) -> None:
    """Reconnect and send bad frames until told to stop; end some connections with a
    huge length prefix (the daemon closes those) or half a frame (left to time out)."""
    rng = random.Random(seed)
    while not stop.is_set():
        try:
            s = connect(path, 5)
            s.setblocking(False)
            for data in bad_frames(rng):
                try:
                    s.send(data)
                except BlockingIOError:
                    break  # the daemon stopped reading us: fine, move on
                try:
                    while s.recv(65536):
                        pass  # drain replies so the daemon keeps reading us
                except BlockingIOError:
                    pass
            ending = rng.choice(["huge", "half", "close"])
            if ending == "huge":
                s.send(struct.pack(">I", 0xFFFFFFF0) + b"\x81")
            elif ending == "half":
                s.send(struct.pack(">I", 1000) + b"\x81\xa1k\xda\x03")
            s.close()
            counts["connections"] += 1
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNRESET, errno.EPIPE, errno.ECONNREFUSED):
                counts["errors"] += 1
            time.sleep(0.01)


def test_a_flood_of_hostile_frames_beside_honest_clients_leaves_every_job_done_and_memory_bounded(
    start_daemon: Callable[..., Daemon],
) -> None:
    """Given 16 peers sending random bytes, truncated frames, msgpack bombs (huge declared
    sizes, deep nesting) and huge length prefixes on connection after connection, while 4
    honest clients submit and wait on 100 jobs each, then every honest job completes, the
    daemon's resident memory stays within a bound, and it is alive and serving after."""
    d = start_daemon(*SAMPLE_ARGS, "--frame-timeout", "1")
    with d.client() as c:  # warm up: imports, the store, the first jobs
        for _ in range(20):
            c.wait(c.submit("echo", {"value": 0})["job_id"])
    before = rss_kib(d.pid)
    stop = threading.Event()
    counts = {"connections": 0, "errors": 0}
    peers = [threading.Thread(target=hostile_peer, args=(d.socket, stop, seed, counts), daemon=True) for seed in range(16)]
    peak = [before]

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_kib(d.pid))
            time.sleep(0.05)

    results: list[list[str]] = []

    def honest(n: int) -> None:
        # The client library, as a script would use it: it waits out a full listen queue.
        with Client(d.socket, connect_timeout=30) as c:
            ids = [c.submit("echo", {"value": [n, i]})["job_id"] for i in range(100)]
            results.append([c.wait(job_id, 60)["status"] for job_id in ids])

    sampler = threading.Thread(target=sample, daemon=True)
    for t in [*peers, sampler]:
        t.start()
    time.sleep(0.5)  # the flood is on before the honest clients come
    honest_threads = [threading.Thread(target=honest, args=(n,)) for n in range(4)]
    for t in honest_threads:
        t.start()
    for t in honest_threads:
        t.join(120)
    time.sleep(0.5)
    stop.set()
    for t in [*peers, sampler]:
        t.join(30)
    assert d.proc is not None and d.proc.poll() is None, d.log()[-3000:]
    assert [len(r) for r in results] == [100] * 4
    assert all(status == "completed" for r in results for status in r)
    assert counts["connections"] > 100 and counts["errors"] == 0, counts
    growth_mib = (peak[0] - before) / 1024
    print(f"hostile connections: {counts['connections']}; RSS {before / 1024:.1f} MiB before, peak {peak[0] / 1024:.1f} MiB")
    assert growth_mib < 64, f"RSS grew by {growth_mib:.1f} MiB under the flood"
    # The listen queue may still hold the flood's last connections (the peers do not wait
    # to be accepted): a client that waits out a full queue, as the library does.
    with Client(d.socket, connect_timeout=30) as c:
        assert c.wait(c.submit("echo", {"value": "after"})["job_id"], 30)["result"] == "after"


def test_clients_that_leave_while_their_submits_commit_take_no_slot_and_no_job_with_them(
    start_daemon: Callable[..., Daemon],
) -> None:
    """Given two thread slots and the database's write lock held by another process (so
    commits wait), when four clients each send a submit, see the daemon read it (a hello
    sent after it is answered) and disconnect, then once the disk is free every job they
    left behind completes, and another client's job runs. (The server cancels a leaving
    client's requests: a submit cut mid-commit used to leave its job stored ``running``
    with no attempt, or ``pending`` outside the scheduler, and its slot taken for good.)"""
    d = start_daemon(*SAMPLE_ARGS, "--threads", "2")
    with d.client() as c:
        c.wait(c.submit("echo", {"value": 0})["job_id"])
    lock = sqlite3.connect(d.db, isolation_level=None, timeout=10)
    lock.execute("BEGIN IMMEDIATE")
    try:
        for i in range(4):
            with d.client() as c:
                c.send_request("submit", {"task": "echo", "args": {"value": i}})
                assert c.call("hello", {"protocol": 1})["ok"]
        with d.client() as c:  # answered once the daemon has seen the others leave
            assert c.call("hello", {"protocol": 1})["ok"]
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    with d.client() as c:
        assert c.wait(c.submit("echo", {"value": "after"})["job_id"], 30)["status"] == "completed"

    def statuses() -> dict[str, int]:
        with sqlite3.connect(d.db, timeout=10) as db:
            return dict(db.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())

    wait_until(lambda: set(statuses()) == {"completed"}, 30, 0.05, "every job left behind to complete")
    assert 2 <= statuses()["completed"] <= 6, statuses()


def test_unfinished_frames_of_all_connections_are_held_within_the_budget(start_daemon: Callable[..., Daemon]) -> None:
    """Given --max-frame 1 MiB and --max-buffered 2 MiB, when 40 connections each send
    900 KiB of a 1 MiB frame and stop, then the daemon holds about the budget, not 36 MiB
    (the connections over it are not read); a small frame from a new client is served;
    and when the stalled ones time out, the budget frees."""
    d = start_daemon(*SAMPLE_ARGS, "--max-frame", str(1 << 20), "--max-buffered", str(2 << 20), "--frame-timeout", "3")
    before = rss_kib(d.pid)
    body_size = 1 << 20
    pending: dict[socket.socket, bytes] = {}
    for _ in range(40):
        s = connect(d.socket)
        s.setblocking(False)
        pending[s] = struct.pack(">I", body_size) + b"\xc4" * (900 * 1024)
    socks = list(pending)
    deadline = time.monotonic() + 2.0
    while pending and time.monotonic() < deadline:  # send whatever the daemon will read
        _, writable, _ = select.select([], list(pending), [], 0.1)
        for s in writable:
            try:
                sent = s.send(pending[s])
            except BlockingIOError:
                continue
            pending[s] = pending[s][sent:]
            if not pending[s]:
                del pending[s]
    assert pending, "every connection was read in full: the budget did not hold any back"
    time.sleep(0.5)
    held = rss_kib(d.pid) - before
    with d.client() as c:
        assert c.request("hello", {"protocol": 1})["protocol"] == 1
    print(f"40 x 900 KiB unfinished frames: daemon RSS grew {held / 1024:.1f} MiB")
    assert held < 20 * 1024, f"RSS grew by {held / 1024:.1f} MiB"  # 36 MiB without the budget
    for s in socks:  # the stalled frames time out (those held back too): all are closed
        s.settimeout(15)
        assert [f["error"]["code"] for f in closed_after(s)] in ([], ["timeout"])
        s.close()
    with d.client() as c:  # and whole large frames go through again
        job = c.submit("echo", {"value": "x" * (400 * 1024)})
        assert c.wait(job["job_id"])["status"] == "completed"


# ---------------------------------------------------------------- request validation


REQUEST_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=20), st.binary(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=10,
)
OPS = st.sampled_from([
    "hello", "submit", "submit_many", "get", "list", "cancel", "retry", "hold", "release", "update", "wait",
    "logs", "close", "stats", "tasks", "queues", "pause", "resume", "configure_queue", "schedule_add",
    "schedule_list", "schedule_remove", "cache_stats", "cache_clear", "nope",
])  # fmt: skip
ARG_KEYS = st.sampled_from([
    "job_id", "task", "args", "status", "limit", "after", "timeout", "events", "follow", "since", "id",
    "queue", "priority", "jobs", "weight", "max_concurrency", "aging", "name", "cron", "every", "job",
    "protocol", "all_users", "mode", "delay", "run_at", "depends_on", "labels", "max_retries", "cache",
])  # fmt: skip
# Tasks a fuzzed submit may name: never ``shell`` (it would run the fuzzed text).
SAFE_TASKS = st.sampled_from(["echo", "sleep", "no-such-task"])
ARGS = st.dictionaries(ARG_KEYS, REQUEST_VALUES, max_size=6).flatmap(
    lambda a: SAFE_TASKS.map(lambda t: {**a, "task": t} if "task" in a else a)
)
REQUESTS = st.one_of(
    st.fixed_dictionaries({"id": st.integers(0, 2**32), "op": OPS, "args": ARGS}),
    st.fixed_dictionaries({"id": REQUEST_VALUES, "op": st.one_of(OPS, REQUEST_VALUES), "args": REQUEST_VALUES}),
    st.dictionaries(st.text(max_size=5), REQUEST_VALUES, max_size=4),
)


@pytest.fixture(scope="module")
def fuzz_daemon() -> Iterator[Daemon]:
    """One daemon for every fuzzed request (shell disabled: fuzzed text never runs)."""
    yield from shared_daemon("pxf", ("--kill-grace", "1", "--no-shell"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(request=REQUESTS)
def test_any_request_gets_one_well_formed_answer_and_never_an_internal_error(fuzz_daemon: Daemon, request: dict[str, Any]) -> None:
    """Given any map sent as a request (valid ops with arguments of any type, any id, any
    keys), then the daemon answers with exactly one final frame: a success, or an error
    whose code is one of the contract's and never ``internal``; and it keeps serving."""
    with RawClient(fuzz_daemon.socket, timeout=10) as c:
        body = msgpack.packb(request, use_bin_type=True)
        c.send_raw(frame(body))
        reply = c.recv()
        while "event" in reply:  # a stream: end it, then take its final frame
            c.send({"id": 2**40, "op": "close", "args": {"id": reply["id"]}})
            reply = c.recv()
        assert reply.get("ok") in (True, False), reply
        if reply["ok"] is False:
            assert reply["error"]["code"] in ERROR_CODES, reply
            assert reply["error"]["code"] != "internal", (request, reply)
        assert c.request("hello", {"protocol": 1})["protocol"] == 1


def test_the_clients_carry_on_after_the_daemon_closes_their_idle_connection(start_daemon: Callable[..., Daemon]) -> None:
    """Given --idle-timeout 0.3, when a blocking and an asyncio client sit idle past it,
    then their next requests simply go on a new connection."""
    import asyncio

    from pyrexisctl.aio import AsyncClient

    d = start_daemon(*SAMPLE_ARGS, "--idle-timeout", "0.3")
    with Client(d.socket) as c:
        c.hello()
        sock = c._sock  # noqa: SLF001 - only to see that it was really replaced
        time.sleep(1.0)
        job = c.submit("echo", {"value": "again"})
        assert c.wait(job["job_id"])["result"] == "again"
        assert c._sock is not sock  # noqa: SLF001

    async def idle_async() -> Any:
        async with AsyncClient(d.socket) as ac:
            await ac.hello()
            await asyncio.sleep(1.0)
            job = await ac.submit("echo", {"value": "async"})
            return (await ac.wait(job["job_id"]))["result"]

    assert asyncio.run(idle_async()) == "async"
