"""The Python client library, both clients, one suite: every op and the error paths.

Each scenario is written once against the blocking :class:`~pyrexisctl.client.Client`
interface and runs twice: with a ``Client``, and with an
:class:`~pyrexisctl.aio.AsyncClient` behind :class:`AsyncAdapter`, which runs its
coroutines on a private event loop in a thread of its own. A real ``pyrexisd`` answers
(see conftest.py): most tests share one daemon for the module and keep out of each
other's way with unique job ids and queue names; tests that change global state (every
queue paused, schedules) or kill the daemon start their own. Waiting is polling with a
deadline or the protocol's own ``wait``, never a bare sleep.

The generated blocking ops are checked here too: a test fails while ``_sync_ops.py`` is
stale.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import pytest
from conftest import ROOT, Daemon, require_alive, shared_daemon, wait_until

import pyrexisctl
from protocol.errors import (
    Conflict,
    InvalidRequest,
    InvalidState,
    NotFound,
    PyrexisError,
    Timeout,
    WireError,
)
from pyrexisctl import _generate_sync, aio, client
from pyrexisctl.aio import AsyncClient, AsyncStream
from pyrexisctl.client import Client, ConnectionLost, DaemonUnreachable

SAMPLE_ARGS = ("--tasks", "sample_tasks", "--kill-grace", "2")
TERMINAL = ("completed", "failed", "cancelled")
CALL_TIMEOUT = 60.0
"""Seconds one call of the async client may take before the adapter gives up on it."""


# --------------------------------------------------------------------------- the adapter


class AsyncAdapter:
    """An :class:`AsyncClient` behind the blocking client's interface.

    Every coroutine method becomes a blocking call that runs the coroutine on ``loop``
    (running in another thread) and waits for its outcome; streams and ``iter_jobs``
    become blocking iterators. Attributes (``server``, ``connected``, ...) pass through.
    """

    def __init__(self, async_client: AsyncClient, loop: asyncio.AbstractEventLoop) -> None:
        self.async_client = async_client
        self._loop = loop

    def run(self, coroutine: Any) -> Any:
        """Run one coroutine on the adapter's loop and return its result (or raise)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(CALL_TIMEOUT)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.async_client, name)
        if inspect.iscoroutinefunction(attribute):

            def call(*args: Any, **kwargs: Any) -> Any:
                result = self.run(attribute(*args, **kwargs))
                return StreamAdapter(self, result) if isinstance(result, AsyncStream) else result

            return call
        if inspect.isasyncgenfunction(attribute):
            return lambda *args, **kwargs: IteratorAdapter(self, attribute(*args, **kwargs))
        return attribute

    def close_stream(self, stream: StreamAdapter | int) -> bool:
        target = stream.stream if isinstance(stream, StreamAdapter) else stream
        return cast(bool, self.run(self.async_client.close_stream(target)))

    def requests_in_flight(self) -> int:
        """How many plain requests wait for their answer (white box: see the ConnectionLost test)."""
        return len(self.async_client._pending)

    def __enter__(self) -> AsyncAdapter:
        self.run(self.async_client.__aenter__())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.run(self.async_client.__aexit__(exc_type, exc, tb))


async def _next_or_end(iterator: AsyncIterator[Any]) -> tuple[bool, Any]:
    # StopAsyncIteration does not travel well through a future: turn it into a flag.
    try:
        return True, await anext(iterator)
    except StopAsyncIteration:
        return False, None


class IteratorAdapter:
    """An async iterator, iterated with blocking calls on the adapter's loop."""

    def __init__(self, adapter: AsyncAdapter, iterator: AsyncIterator[Any]) -> None:
        self.adapter = adapter
        self.iterator = iterator

    def __iter__(self) -> IteratorAdapter:
        return self

    def __next__(self) -> Any:
        more, item = self.adapter.run(_next_or_end(self.iterator))
        if not more:
            raise StopIteration
        return item


class StreamAdapter(IteratorAdapter):
    """An :class:`AsyncStream` behind :class:`Stream`'s interface."""

    def __init__(self, adapter: AsyncAdapter, stream: AsyncStream) -> None:
        super().__init__(adapter, stream)
        self.stream = stream

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)  # id, op, result, ended

    def close(self) -> Any:
        return self.adapter.run(self.stream.aclose())

    def __enter__(self) -> StreamAdapter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def requests_in_flight(c: Client) -> int:
    """How many plain requests of ``c`` have been sent and wait for their answer.

    White box, on purpose: it is the only way to know that a blocking call, running in
    another thread, has written its request, so that killing the daemon then is surely
    "mid-request" rather than before it.
    """
    if isinstance(c, AsyncAdapter):
        return c.requests_in_flight()
    return len(c._expected)


ClientFactory = Callable[..., Client]


@pytest.fixture(params=["sync", "async"])
def connect(request: pytest.FixtureRequest) -> Iterator[ClientFactory]:
    """A factory of clients of the parametrized kind: ``connect(socket_path, **options)``.

    The async kind gets its own event loop, running in a thread until teardown; every
    client made is closed at teardown.
    """
    made: list[Any] = []
    if request.param == "sync":

        def make_sync(socket_path: str, **options: Any) -> Client:
            made.append(Client(socket_path, **options))
            return made[-1]  # type: ignore[no-any-return]

        yield make_sync
        for c in made:
            c.close()
        return

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="async-client-loop", daemon=True)
    thread.start()

    def make_async(socket_path: str, **options: Any) -> Client:
        adapter = AsyncAdapter(AsyncClient(socket_path, **options), loop)
        made.append(adapter)
        return cast(Client, adapter)  # it offers Client's interface

    try:
        yield make_async
    finally:
        for adapter in made:
            adapter.run(adapter.async_client.close())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture(scope="module")
def shared() -> Iterator[Daemon]:
    """One daemon for the tests that leave global state alone."""
    yield from shared_daemon("pxc", SAMPLE_ARGS)


@pytest.fixture
def c(shared: Daemon, connect: ClientFactory) -> Client:
    """A client (of each kind) of the shared daemon."""
    require_alive(shared)
    return connect(shared.socket)


@pytest.fixture
def uid() -> str:
    """A suffix that keeps this test's job ids and queue names apart from the others'."""
    return uuid.uuid4().hex[:8]


# --------------------------------------------------------------------------- handshake, submit, read


def test_hello_answers_the_server_and_keeps_it(c: Client) -> None:
    answer = c.hello()
    assert answer["protocol"] == 1
    assert answer["server"]["name"] == "pyrexisd"
    assert isinstance(answer["max_frame"], int) and answer["max_frame"] > 0
    assert {"submit", "wait", "watch", "close", "schedule_add"} <= set(answer["ops"])
    assert c.server == answer
    assert c.connected


def test_submit_get_and_wait_give_the_job_record(c: Client, uid: str) -> None:
    job = c.submit("echo", {"value": 7}, job_id=f"e-{uid}", priority=3, labels={"k": "v"})
    assert (job["job_id"], job["task"], job["priority"]) == (f"e-{uid}", "echo", 3)
    assert job["labels"] == {"k": "v"} and job["args"] == {"value": 7}

    done = c.wait(job["job_id"], timeout=30)
    assert done["status"] == "completed" and done["result"] == 7
    assert c.get(job["job_id"]) == done
    # The same client job id and spec again: the job that exists, not a new one.
    again = c.submit("echo", {"value": 7}, job_id=f"e-{uid}", priority=3, labels={"k": "v"})
    assert again["created_at"] == job["created_at"]


def test_submit_many_keeps_the_order_and_links_dependencies(c: Client, uid: str) -> None:
    records = c.submit_many(
        [
            {"task": "echo", "job_id": f"a-{uid}", "args": {"value": 1}, "delay": 60},
            {"task": "echo", "job_id": f"b-{uid}", "args": {"value": 2}, "depends_on": [f"a-{uid}"]},
        ]
    )
    assert [record["job_id"] for record in records] == [f"a-{uid}", f"b-{uid}"]
    assert records[0]["status"] == "scheduled"
    assert records[1]["status"] == "blocked" and records[1]["depends_on"] == [f"a-{uid}"]


def test_list_pages_and_iter_jobs_walks_every_page(c: Client, uid: str) -> None:
    queue = f"pages-{uid}"
    ids = [c.submit("echo", {"value": n}, queue=queue)["job_id"] for n in range(5)]
    for job_id in ids:
        c.wait(job_id, timeout=30)

    first = c.list(queue=queue, limit=2)
    assert [job["job_id"] for job in first["jobs"]] == ids[:2]
    assert first["next"] is not None
    second = c.list(queue=queue, limit=2, after=first["next"])
    assert [job["job_id"] for job in second["jobs"]] == ids[2:4]

    assert [job["job_id"] for job in c.iter_jobs(queue=queue, page_size=2)] == ids
    assert [job["job_id"] for job in c.iter_jobs(status=["completed"], queue=queue)] == ids
    assert list(c.iter_jobs(status="failed", queue=queue)) == []
    assert c.list(task="echo", queue=queue, status="completed")["next"] is None


# --------------------------------------------------------------------------- control


def test_cancel_then_retry_starts_a_new_round(c: Client, uid: str) -> None:
    job_id = c.submit("echo", {"value": 1}, job_id=f"x-{uid}", delay=60)["job_id"]
    cancelled = c.cancel(job_id)
    assert cancelled["status"] == "cancelled" and cancelled["error"]["type"] == "cancelled"
    with pytest.raises(InvalidState) as info:
        c.cancel(job_id)
    assert info.value.code == "invalid_state" and info.value.details["status"] == "cancelled"

    again = c.retry(job_id)
    assert again["job_id"] == job_id and again["status"] not in TERMINAL

    done = c.submit("echo", {"value": 1})
    c.wait(done["job_id"], timeout=30)
    with pytest.raises(InvalidState):
        c.retry(done["job_id"])


def test_hold_release_and_update_a_waiting_job(c: Client, uid: str) -> None:
    job_id = c.submit("echo", {"value": 1}, delay=60)["job_id"]
    assert c.hold(job_id)["status"] == "held"
    updated = c.update(job_id, priority=4, queue=f"lib-{uid}")
    assert (updated["priority"], updated["queue"], updated["status"]) == (4, f"lib-{uid}", "held")
    assert c.update(job_id, priority=-2)["queue"] == f"lib-{uid}"  # what is not given stays
    assert c.release(job_id)["status"] == "scheduled"
    with pytest.raises(InvalidState):
        c.release(job_id)


def test_wait_with_a_timeout_raises_timeout(c: Client) -> None:
    job_id = c.submit("echo", {"value": 1}, delay=60)["job_id"]
    with pytest.raises(Timeout) as info:
        c.wait(job_id, timeout=0.2)
    assert info.value.code == "timeout"
    c.cancel(job_id)


# --------------------------------------------------------------------------- streams


def test_wait_events_streams_the_job_then_ends_with_its_record(c: Client, uid: str) -> None:
    # In a paused queue, and resumed only once the stream has opened (its first event),
    # so that the stream sees the whole run. Resuming right after sending wait_events is
    # not enough: the daemon reads the job for the opening event after it has read the
    # next frame, and when the job has ended by then the stream opens at its end.
    queue = f"we-{uid}"
    c.pause(queue)
    job_id = c.submit("t.progress", {"steps": 3}, queue=queue)["job_id"]
    stream = c.wait_events(job_id, timeout=30)
    events = [next(stream)]
    assert (events[0]["kind"], events[0]["status"]) == ("state", "pending")
    c.resume(queue)
    events += list(stream)
    assert {"state", "progress", "log"} <= {event["kind"] for event in events}
    assert all(event["job_id"] == job_id for event in events)
    assert stream.ended and stream.result["status"] == "completed"
    assert stream.result["result"] == 3


def test_wait_events_of_a_job_cancelled_meanwhile(c: Client) -> None:
    job_id = c.submit("echo", {"value": 1}, delay=60)["job_id"]
    stream = c.wait_events(job_id)
    first = next(stream)
    assert (first["kind"], first["status"]) == ("state", "scheduled")
    c.cancel(job_id)
    rest = list(stream)
    assert rest[-1]["status"] == "cancelled"
    assert stream.result["status"] == "cancelled"


def test_logs_and_follow_logs(c: Client) -> None:
    job_id = c.submit("shell", {"cmd": "echo a; echo b; echo c"})["job_id"]
    follow = c.follow_logs(job_id)
    assert [(event["seq"], event["line"]) for event in follow] == [(1, "a"), (2, "b"), (3, "c")]
    assert follow.result == {"next": 4}

    page = c.logs(job_id, since=2)
    assert [event["line"] for event in page["lines"]] == ["b", "c"]
    assert page["next"] == 4
    assert c.logs(job_id, since=4) == {"lines": [], "next": 4}
    assert c.logs(job_id, follow=True)["next"] == 4

    with pytest.raises(NotFound):
        c.logs("no-such-job")


def test_watch_sees_jobs_submitted_after_it_until_closed(c: Client, uid: str) -> None:
    queue = f"w-{uid}"
    watch = c.watch(queue=queue, kinds=["state"])
    job_id = c.submit("echo", {"value": 1}, queue=queue)["job_id"]
    statuses = []
    for event in watch:
        assert event["kind"] == "state" and event["job_id"] == job_id
        statuses.append(event["status"])
        if event["status"] in TERMINAL:
            break
    assert statuses[-1] == "completed"
    assert watch.close() == {}
    assert watch.ended and list(watch) == []


def test_watch_of_one_job_opens_with_its_state(c: Client) -> None:
    job_id = c.submit("echo", {"value": 1}, delay=60)["job_id"]
    with c.watch(job_id=job_id) as watch:
        first = next(watch)
        assert (first["kind"], first["job_id"], first["status"]) == ("state", job_id, "scheduled")
    assert watch.ended and watch.result == {}
    c.cancel(job_id)


def test_close_stream_ends_a_stream_once(c: Client, uid: str) -> None:
    watch = c.watch(queue=f"nothing-{uid}")
    assert c.close_stream(watch) is True
    assert list(watch) == [] and watch.result == {}
    assert c.close_stream(watch.id) is False  # ended already: not an error

    job_id = c.submit("echo", {"value": 1}, delay=60)["job_id"]
    waiting = c.wait_events(job_id)
    assert c.close_stream(waiting.id) is True
    assert [event["kind"] for event in waiting] == ["state"]
    assert waiting.result["job_id"] == job_id and waiting.result["status"] == "scheduled"
    c.cancel(job_id)


# --------------------------------------------------------------------------- the daemon and queues


def test_stats_tasks_and_queues(c: Client, uid: str) -> None:
    c.wait(c.submit("echo", {"value": 1}, queue=f"s-{uid}")["job_id"], timeout=30)
    stats = c.stats()
    assert stats["uptime"] >= 0 and stats["by_status"]["completed"] >= 1
    assert {"by_queue", "slots", "running_by_mode", "submit_to_start_ms"} <= set(stats)

    tasks = {task["name"]: task for task in c.tasks()}
    assert {"echo", "sleep", "shell", "t.progress"} <= set(tasks)
    assert set(tasks["echo"]) >= {"name", "modes", "default_mode", "description", "schema"}

    rows = {row["queue"]: row for row in c.queues()}
    assert rows[f"s-{uid}"]["paused"] is False and rows[f"s-{uid}"]["running"] == 0


def test_pause_and_resume_one_queue(c: Client, uid: str) -> None:
    queue = f"p-{uid}"
    rows = {row["queue"]: row for row in c.pause(queue)}
    assert rows[queue]["paused"] is True
    job_id = c.submit("echo", {"value": 1}, queue=queue)["job_id"]
    assert c.get(job_id)["status"] == "pending"
    rows = {row["queue"]: row for row in c.resume(queue)}
    assert rows[queue]["paused"] is False
    assert c.wait(job_id, timeout=30)["status"] == "completed"


def test_configure_queue_keeps_what_is_not_given(c: Client, uid: str) -> None:
    queue = f"cq-{uid}"
    row = c.configure_queue(queue, weight=2, max_concurrency=3, aging=0.5)
    assert (row["queue"], row["weight"], row["max_concurrency"], row["aging"]) == (queue, 2, 3, 0.5)
    assert c.configure_queue(queue, weight=3)["max_concurrency"] == 3
    row = c.configure_queue(queue, max_concurrency=None)
    assert row["max_concurrency"] is None and row["weight"] == 3 and row["aging"] == 0.5


def test_pause_and_resume_every_queue(daemon: Daemon, connect: ClientFactory) -> None:
    c = connect(daemon.socket)
    c.configure_queue("early")
    assert all(row["paused"] for row in c.pause())
    job_id = c.submit("echo", {"value": 1}, queue="created-later")["job_id"]
    assert c.get(job_id)["status"] == "pending"
    assert not any(row["paused"] for row in c.resume())
    assert c.wait(job_id, timeout=30)["status"] == "completed"


def test_schedules_add_list_remove(daemon: Daemon, connect: ClientFactory) -> None:
    c = connect(daemon.socket)
    record = c.schedule_add("hourly", "echo", {"value": 2}, every=3600, priority=1)
    assert record["name"] == "hourly" and record["every"] == 3600 and record["cron"] is None
    assert record["job"] == {"task": "echo", "args": {"value": 2}, "priority": 1}
    nightly = c.schedule_add("nightly", "echo", {"value": 3}, cron="30 2 * * *")
    assert nightly["cron"] == "30 2 * * *" and nightly["next_run"] is not None
    assert [s["name"] for s in c.schedule_list()] == ["hourly", "nightly"]

    with pytest.raises(Conflict):
        c.schedule_add("hourly", "echo", {"value": 9}, every=5)
    with pytest.raises(InvalidRequest):
        c.schedule_add("bad", "echo", {"value": 1}, cron="every day")

    c.schedule_remove("hourly")
    with pytest.raises(NotFound):
        c.schedule_remove("hourly")
    assert [s["name"] for s in c.schedule_list()] == ["nightly"]


# --------------------------------------------------------------------------- errors


def test_an_unknown_job_raises_not_found(c: Client) -> None:
    for call in (c.get, c.cancel, c.retry, c.hold, c.release, c.wait):
        with pytest.raises(NotFound) as info:
            call("no-such-job")
        assert isinstance(info.value, WireError) and info.value.code == "not_found"
    with pytest.raises(NotFound):
        c.update("no-such-job", priority=1)
    c.hello()  # the connection is still fine


def test_invalid_arguments_raise_invalid_request_with_details(c: Client, uid: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        c.submit("echo", {"value": 1}, priority=5000)
    assert info.value.code == "invalid_request"
    assert any("priority" in error["loc"] for error in info.value.details["errors"])

    with pytest.raises(InvalidRequest) as info:
        c.submit_many(
            [
                {"task": "echo", "job_id": f"ok-{uid}", "args": {"value": 1}},
                {"task": "echo", "args": {"value": 1}, "depends_on": ["nowhere"]},
            ]
        )
    assert info.value.details["index"] == 1
    with pytest.raises(NotFound):
        c.get(f"ok-{uid}")  # all or nothing

    with pytest.raises(InvalidRequest):
        c.list(limit=0)


def test_a_missing_socket_raises_daemon_unreachable(workdir: str, connect: ClientFactory) -> None:
    missing = os.path.join(workdir, "nothing-here.sock")
    c = connect(missing)
    with pytest.raises(DaemonUnreachable) as info:
        c.hello()
    exc = info.value
    assert type(exc) is DaemonUnreachable  # not ConnectionLost: it never connected
    assert exc.socket_path == missing and exc.reason == "no such socket"
    assert missing in exc.message and "pyrexisd --socket" in exc.message
    # The client's own finding, not an answer of the daemon: no wire code at all.
    assert isinstance(exc, PyrexisError) and not isinstance(exc, WireError)
    assert not hasattr(exc, "code")
    assert not c.connected


def test_the_daemon_dying_mid_request_raises_connection_lost(
    daemon: Daemon, connect: ClientFactory
) -> None:
    c = connect(daemon.socket)
    c.hello()
    job_id = c.submit("echo", {"value": 1}, delay=60)["job_id"]

    def kill_once_sent() -> None:
        wait_until(lambda: requests_in_flight(c) == 1, 15, 0.005, "the wait request to be sent")
        daemon.kill9()

    with ThreadPoolExecutor(1) as pool:
        killer = pool.submit(kill_once_sent)
        with pytest.raises(ConnectionLost) as info:
            c.wait(job_id)
        killer.result(30)
    assert info.value.socket_path == daemon.socket
    assert not hasattr(info.value, "code")
    assert not c.connected
    # The next call tries a new connection: nobody listens on the stale socket now.
    with pytest.raises(DaemonUnreachable) as again:
        c.get(job_id)
    assert type(again.value) is DaemonUnreachable and "refused" in again.value.reason


def test_the_daemon_dying_mid_stream_ends_the_stream_with_connection_lost(
    daemon: Daemon, connect: ClientFactory
) -> None:
    c = connect(daemon.socket)
    job_id = c.submit("echo", {"value": 1}, delay=60)["job_id"]
    stream = c.wait_events(job_id)
    assert next(stream)["status"] == "scheduled"  # the daemon has the stream open
    daemon.kill9()
    with pytest.raises(ConnectionLost):
        next(stream)
    assert stream.ended
    assert list(stream) == []  # the error is raised once; then the stream is just over


# --------------------------------------------------------------------------- the library's shape


def test_the_generated_sync_ops_are_fresh() -> None:
    expected = _generate_sync.generate(_generate_sync.SOURCE.read_text(encoding="utf-8"))
    actual = _generate_sync.TARGET.read_text(encoding="utf-8")
    assert actual == expected, (
        f"{_generate_sync.TARGET.name} is stale: edit {_generate_sync.SOURCE.name} only, "
        f"then run {_generate_sync.COMMAND}"
    )


def test_the_generator_refuses_what_has_no_blocking_counterpart() -> None:
    source = _generate_sync.SOURCE.read_text(encoding="utf-8")
    leaking = source.replace(
        '        """Every matching job, oldest first, walking all pages of ``list``."""\n',
        '        """Every matching job, oldest first, walking all pages of ``list``."""\n'
        "        await asyncio.sleep(0)\n",
    )
    assert leaking != source
    with pytest.raises(_generate_sync.GenerationError, match="asyncio.sleep"):
        _generate_sync.generate(leaking)


def test_both_clients_offer_the_same_methods_with_the_same_parameters() -> None:
    def public(cls: type) -> dict[str, Any]:
        return {
            name: member
            for name, member in inspect.getmembers(cls)
            if not name.startswith("_") and callable(member)
        }

    def parameters(method: Any) -> list[tuple[str, Any, Any, str]]:
        described = []
        for parameter in inspect.signature(method).parameters.values():
            annotation = str(parameter.annotation)
            for async_name, sync_name in _generate_sync.SYNC_NAMES.items():
                annotation = annotation.replace(async_name, sync_name)
            described.append((parameter.name, parameter.kind, parameter.default, annotation))
        return described

    sync_methods, async_methods = public(Client), public(AsyncClient)
    assert set(sync_methods) == set(async_methods)
    for name, method in sync_methods.items():
        counterpart = async_methods[name]
        assert parameters(method) == parameters(counterpart), name
        assert inspect.iscoroutinefunction(counterpart) or inspect.isasyncgenfunction(
            counterpart
        ), name
        assert not inspect.iscoroutinefunction(method), name


def test_the_async_names_are_still_exported_by_the_client_module() -> None:
    assert client.AsyncClient is aio.AsyncClient is pyrexisctl.AsyncClient
    assert client.AsyncStream is aio.AsyncStream
    assert {"AsyncClient", "AsyncStream", "Client", "Stream", "UNSET"} <= set(client.__all__)


def test_the_blocking_client_and_the_cli_do_not_import_asyncio() -> None:
    code = (
        "import sys, pyrexisctl.cli, pyrexisctl.client\n"
        "assert 'asyncio' not in sys.modules, 'asyncio imported'\n"
        "assert 'pyrexisctl.aio' not in sys.modules, 'pyrexisctl.aio imported'\n"
        "from pyrexisctl.client import AsyncClient\n"
        "assert 'asyncio' in sys.modules\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_the_generated_module_says_how_to_regenerate_it() -> None:
    head = Path(_generate_sync.TARGET).read_text(encoding="utf-8").splitlines()[:4]
    assert "Generated from pyrexisctl/_async_ops.py" in head[0]
    assert any(_generate_sync.COMMAND in line for line in head)
