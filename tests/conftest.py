"""Fixtures: a real daemon in a subprocess, on a real Unix socket and a real SQLite file.

Socket paths stay short (``/tmp/pxXXXX/s.sock``): Unix socket paths are limited to
about 100 bytes. Waiting is always polling a condition with a deadline.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import settings

from protocol.errors import WireError, error_from_wire

ROOT = Path(__file__).resolve().parent.parent

# CI runs the same examples every time: a red build always means a change broke something.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class RawClient:
    """A client made of nothing but ``socket`` and ``msgpack``, as the contract allows."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self._buf = b""
        self._next_id = 1

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, message: dict[str, Any]) -> None:
        body = msgpack.packb(message, use_bin_type=True)
        self.sock.sendall(struct.pack(">I", len(body)) + body)

    def recv(self) -> dict[str, Any]:
        while True:
            if len(self._buf) >= 4:
                (n,) = struct.unpack(">I", self._buf[:4])
                if len(self._buf) >= 4 + n:
                    body, self._buf = self._buf[4 : 4 + n], self._buf[4 + n :]
                    return msgpack.unpackb(body, raw=False)  # type: ignore[no-any-return]
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("the daemon closed the connection")
            self._buf += chunk

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def send_request(self, op: str, args: dict[str, Any] | None = None) -> int:
        """Send one request under a new id; that id."""
        rid = self.new_id()
        message: dict[str, Any] = {"id": rid, "op": op}
        if args is not None:
            message["args"] = args
        self.send(message)
        return rid

    def call(self, op: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one request and return its final frame (events are skipped)."""
        rid = self.send_request(op, args)
        while True:
            frame = self.recv()
            if frame.get("id") == rid and "event" not in frame:
                return frame

    def stream(self, op: str, args: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Send a streaming request; its events and its final frame."""
        rid = self.new_id()
        self.send({"id": rid, "op": op, "args": args})
        events = []
        while True:
            frame = self.recv()
            if frame.get("id") != rid:
                continue
            if "event" in frame:
                events.append(frame["event"])
            else:
                return events, frame

    def request(self, op: str, args: dict[str, Any] | None = None) -> Any:
        """The op's result, or the error class of its failure frame raised."""
        frame = self.call(op, args)
        if not frame["ok"]:
            raise error_from_wire(frame["error"])
        return frame["result"]

    def submit(self, task: str = "echo", args: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
        return self.request("submit", {"task": task, "args": args if args is not None else {"value": 1}, **spec})  # type: ignore[no-any-return]

    def wait(self, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
        return self.request("wait", {"job_id": job_id, "timeout": timeout})  # type: ignore[no-any-return]

    def get(self, job_id: str) -> dict[str, Any]:
        return self.request("get", {"job_id": job_id})  # type: ignore[no-any-return]


def expect_error(code: str, fn: Callable[[], Any]) -> WireError:
    """Run ``fn`` and check that it raises the protocol error ``code``."""
    with pytest.raises(WireError) as info:
        fn()
    assert info.value.code == code, f"expected {code}, got {info.value.code}: {info.value.message}"
    return info.value


class Daemon:
    """A ``pyrexisd`` subprocess and the paths it uses."""

    def __init__(
        self, workdir: str, args: tuple[str, ...], db: str | None = None, env: dict[str, str] | None = None,
        socket: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.socket = socket or os.path.join(workdir, "s.sock")
        self.db = db or os.path.join(workdir, "d.db")
        self.args = args
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = os.path.join(workdir, "daemon.log")

    def command(self) -> list[str]:
        return [sys.executable, "-m", "pyrexisd", "--socket", self.socket, "--db", self.db, "--log-level", "DEBUG", *self.args]

    def start(self, wait: bool = True) -> Daemon:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")]))
        if self.env:
            env.update(self.env)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=self.workdir, env=env)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with RawClient(self.socket, timeout=2) as c:
                    return bool(c.request("hello", {"protocol": 1}))
            except OSError:
                return False

        wait_until(ready, timeout, 0.02, "the daemon to answer hello")

    def client(self) -> RawClient:
        return RawClient(self.socket)

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill9(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def restart(self) -> Daemon:
        return self.start()


def shared_daemon(prefix: str, args: tuple[str, ...]) -> Iterator[Daemon]:
    """A daemon for a whole test module (``yield from`` it in a module-scoped fixture)."""
    workdir = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    d = Daemon(workdir, args)
    d.start()
    yield d
    if d.proc is not None and d.proc.poll() is None:
        d.proc.kill()
        d.proc.wait(10)
    if not os.environ.get("PYREXIS_KEEP_TEST_DIRS"):
        shutil.rmtree(workdir, ignore_errors=True)


def require_alive(shared: Daemon) -> None:
    """Fail the test at once, with the log, if a module's shared daemon has died."""
    assert shared.proc is not None
    if shared.proc.poll() is not None:
        pytest.fail(f"the shared daemon died with {shared.proc.returncode}:\n{shared.log()[-5000:]}")


@pytest.fixture
def workdir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="px", dir="/tmp")
    yield path
    if not os.environ.get("PYREXIS_KEEP_TEST_DIRS"):  # set it to look at a failed test's files
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_daemon(workdir: str) -> Iterator[Callable[..., Daemon]]:
    """A factory: ``start_daemon("--threads", "2")``; every daemon is stopped at teardown.
    ``socket`` puts the socket elsewhere than ``workdir/s.sock`` (its directory is then
    the daemon's to create, with the modes its access policy needs)."""
    started: list[Daemon] = []

    def start(
        *args: str, db: str | None = None, env: dict[str, str] | None = None, wait: bool = True,
        subdir: str | None = None, socket: str | None = None,
    ) -> Daemon:
        where = workdir if subdir is None else os.path.join(workdir, subdir)
        os.makedirs(where, exist_ok=True)
        d = Daemon(where, args, db=db, env=env, socket=socket)
        started.append(d)
        return d.start(wait=wait)

    yield start
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(10)


@pytest.fixture
def daemon(start_daemon: Callable[..., Daemon]) -> Daemon:
    """One daemon with the defaults and the test tasks module loaded."""
    return start_daemon("--tasks", "sample_tasks", "--kill-grace", "2")


@pytest.fixture
def client(daemon: Daemon) -> Iterator[RawClient]:
    with daemon.client() as c:
        yield c
