"""The daemon's side of the spawn helper (:mod:`pyrexisd.executors.spawnd`).

:class:`Spawner` starts the helper, sends it commands to start, and turns its answers into
:class:`Child` objects: the pid and start time, the read ends of the command's stdout
and stderr (non-blocking, close-on-exec, for the event loop to read), and a future of its
exit status. All of it runs on the event loop's thread, through ``add_reader``: no thread,
no asyncio subprocess machinery, no fork of the daemon per command.

A helper that dies is noticed by the end of its socket. Commands it was supervising lose
their exit status: their ``exited`` futures raise :class:`SpawnerLost` (the caller kills
their process group, which it can still signal). Requests it never received are sent
again to a new helper; those it received but had not answered fail with
:class:`SpawnerLost` (the command may have started). The next request starts a new helper.

The helper is started from the event loop's thread only: ``PR_SET_PDEATHSIG`` fires when
the *thread* that started it ends, and that thread lives as long as the daemon.
"""

from __future__ import annotations

import array
import asyncio
import collections
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from protocol.errors import PyrexisError
from pyrexisd.executors import spawnd
from pyrexisd.executors.base import RunAs

log = logging.getLogger(__name__)

HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "spawnd.py")
START_TIMEOUT = 30.0  # seconds a new helper has to say it is ready
CLOSE_TIMEOUT = 2.0  # seconds a closed helper has to exit before it is killed
RECV_SIZE = 64 * 1024  # a helper → daemon message is one record, far smaller than this
_FD_SIZE = array.array("i").itemsize
ANCILLARY_SIZE = socket.CMSG_SPACE(2 * _FD_SIZE)  # room for the two pipe ends


class SpawnerError(PyrexisError):
    """The spawn helper failed: it cannot be started (this class), or it died."""


class SpawnerLost(SpawnerError):
    """The spawn helper died: the command's exit status is lost (it may still run)."""


@dataclass(frozen=True, slots=True)
class SpawnRequest:
    """One command to start.

    ``env`` is laid over the environment the daemon had when the helper started. ``cwd``
    None starts it in the directory the daemon had then. ``output``, when set, is a file
    the helper creates (empty, owner-only, failing if anything is there) before starting
    the command; removing it is the caller's. ``run_as``, when set, is the account the
    command runs as (its environment then starts clean, see :mod:`spawnd`).
    """

    argv: list[str]
    env: dict[str, str]
    cwd: str | None = None
    output: str | None = None
    run_as: RunAs | None = None


class Child:
    """A command the helper started. ``stdout`` and ``stderr`` are the caller's to read
    and close; ``exited`` resolves to the exit status (minus the signal that killed it)
    or raises :class:`SpawnerLost`."""

    __slots__ = ("pid", "started", "stdout", "stderr", "exited")

    def __init__(self, pid: int, started: int | None, stdout: int, stderr: int, exited: asyncio.Future[int]) -> None:
        self.pid = pid  # also its process group's id: it leads a session of its own
        self.started = started  # start time in clock ticks since boot (procs.start_time)
        self.stdout = stdout
        self.stderr = stderr
        self.exited = exited


class _Request:
    __slots__ = ("future", "records", "sent")

    def __init__(self, future: asyncio.Future[Child], records: list[bytes]) -> None:
        self.future = future
        self.records = records
        self.sent = False  # all its records reached the helper's socket: it may have run


class Spawner:
    """The spawn helper of one daemon, started by :meth:`start` and replaced when it dies."""

    def __init__(self, python: str | None = None) -> None:
        self.python = python or sys.executable
        self.restarts = 0  # helpers started after the first
        self._loop: asyncio.AbstractEventLoop | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._ids = itertools.count(1)
        self._requests: dict[int, _Request] = {}
        self._children: dict[int, Child] = {}
        self._outbox: collections.deque[tuple[int, bytes, bool]] = collections.deque()
        self._writing = False
        self._ready: asyncio.Future[None] | None = None
        self._started_once = False

    @property
    def pid(self) -> int | None:
        """The running helper's pid (None when there is none)."""
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        """Start the helper (if none runs) and wait until it is ready. Call it early, before
        the daemon grows: a helper that cannot start then stops the start-up, and no job
        waits for an interpreter to start."""
        if self._sock is not None:
            return
        self._launch()
        assert self._loop is not None
        ready = self._ready = self._loop.create_future()
        try:
            await asyncio.wait_for(asyncio.shield(ready), START_TIMEOUT)
        except TimeoutError:
            self._ready = None  # nobody waits for it any more
            self._lost()  # never two helpers: this one is killed
            raise SpawnerError(f"the shell spawner did not start within {START_TIMEOUT:g} s") from None
        finally:
            self._ready = None

    async def spawn(self, request: SpawnRequest) -> Child:
        """Start one command. Raises ``OSError`` when it cannot start (no such program, a
        bad ``cwd``: as ``subprocess`` would), :class:`SpawnerLost` if the helper died
        after receiving the request."""
        if self._sock is None:
            self._launch()  # the last one died: this is its replacement
        assert self._loop is not None
        ident = next(self._ids)
        future: asyncio.Future[Child] = self._loop.create_future()
        message: dict[str, Any] = {
            "op": "spawn", "id": ident, "argv": request.argv, "env": request.env, "cwd": request.cwd, "output": request.output,
        }
        account = request.run_as
        if account is not None:
            message["user"] = {
                "uid": account.uid, "gid": account.gid, "groups": list(account.groups),
                "name": account.user, "home": account.home, "shell": account.shell,
            }  # fmt: skip
        pending = _Request(future, spawnd.records(message))
        self._requests[ident] = pending
        self._queue(ident, pending.records)
        # Not popped on cancellation: the answer still comes, and an abandoned command
        # is killed then (see _spawned).
        return await future

    async def close(self) -> None:
        """Close the socket (the helper exits on its end) and reap the helper."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLOSE_TIMEOUT
        # Answers still due are read first: a command started for a caller that gave up
        # (cancelled at shutdown) is killed when its answer comes, not left running.
        while self._sock is not None and any(r.sent for r in self._requests.values()) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        proc = self._proc
        self._disconnect(SpawnerLost("the shell spawner was closed"))
        if proc is None:
            return
        deadline = loop.time() + CLOSE_TIMEOUT
        while proc.poll() is None:
            if loop.time() > deadline:
                proc.kill()
                proc.wait()
                break
            await asyncio.sleep(0.01)

    # -- the helper's process -----------------------------------------------------------
    def _launch(self) -> None:
        self._loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            # close_fds (the default) keeps the database, its lock and the daemon's
            # socket out of the helper; only its end of this pair is passed.
            proc = subprocess.Popen(
                [self.python, "-I", "-S", HELPER, str(os.getpid()), str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        except OSError as exc:
            ours.close()
            raise SpawnerError(f"cannot start the shell spawner: {exc}") from exc
        finally:
            theirs.close()
        ours.setblocking(False)
        self._proc = proc
        self._sock = ours
        if self._started_once:
            self.restarts += 1
            log.warning("started a new shell spawner (pid %d)", proc.pid)
        self._started_once = True
        self._loop.add_reader(ours.fileno(), self._readable)

    def _disconnect(self, reason: Exception) -> dict[int, _Request]:
        """Forget the helper (the caller reaps its process): its socket closed, everything
        waiting on it failed with ``reason``. Returns the requests it never received."""
        sock, loop = self._sock, self._loop
        if sock is None or loop is None:
            return {}
        self._proc = None
        loop.remove_reader(sock.fileno())
        if self._writing:
            loop.remove_writer(sock.fileno())
            self._writing = False
        sock.close()
        self._sock = None
        self._outbox.clear()
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(SpawnerError(f"the shell spawner exited at start: {reason}"))
        unsent = {i: r for i, r in self._requests.items() if not r.sent and not r.future.done()}
        for request in self._requests.values():
            if request.sent and not request.future.done():
                request.future.set_exception(reason)
        self._requests = {}
        for child in self._children.values():
            if not child.exited.done():
                child.exited.set_exception(reason)
        self._children = {}
        return unsent

    def _lost(self) -> None:
        """The helper's socket ended: it died (it never closes the socket otherwise)."""
        proc = self._proc
        unsent = self._disconnect(SpawnerLost("the shell spawner died"))
        if proc is not None:
            if proc.poll() is None:
                proc.kill()  # it closed its socket but lives on: never two helpers
                try:
                    proc.wait(1.0)  # an exiting process: a moment
                except subprocess.TimeoutExpired:
                    pass  # subprocess reaps it when the next helper starts
            log.error("the shell spawner (pid %d) died (status %s)", proc.pid, proc.returncode)
        if unsent:
            # Those never reached it, so they never ran: a new helper gets them.
            try:
                self._launch()
            except SpawnerError as exc:
                for request in unsent.values():
                    request.future.set_exception(exc)
                return
            self._requests.update(unsent)
            for ident, request in unsent.items():
                self._queue(ident, request.records)

    # -- the socket ---------------------------------------------------------------------
    def _queue(self, ident: int, records: list[bytes]) -> None:
        if not self._outbox and len(records) == 1 and self._sock is not None:
            # The usual case, sent at once: nothing queued ahead of it, one record.
            try:
                self._sock.send(records[0])
            except BlockingIOError:
                pass
            except OSError:
                self._lost()  # unsent: a new helper gets it
                return
            else:
                self._requests[ident].sent = True
                return
        last = len(records) - 1
        for i, record in enumerate(records):
            self._outbox.append((ident, record, i == last))
        if not self._writing:
            self._flush()

    def _flush(self) -> None:
        sock = self._sock
        assert sock is not None and self._loop is not None
        while self._outbox:
            ident, record, last = self._outbox[0]
            try:
                sock.send(record)
            except BlockingIOError:
                if not self._writing:
                    self._loop.add_writer(sock.fileno(), self._flush)
                    self._writing = True
                return
            except OSError:
                self._lost()
                return
            self._outbox.popleft()
            if last:
                request = self._requests.get(ident)
                if request is not None:
                    request.sent = True
        if self._writing:
            self._loop.remove_writer(sock.fileno())
            self._writing = False

    def _readable(self) -> None:
        while self._sock is not None:
            try:
                data, ancillary, _flags, _addr = self._sock.recvmsg(RECV_SIZE, ANCILLARY_SIZE, socket.MSG_CMSG_CLOEXEC)
            except BlockingIOError:
                return
            except OSError:
                self._lost()
                return
            fds = _received_fds(ancillary)
            if not data:
                for fd in fds:
                    os.close(fd)
                self._lost()
                return
            self._message(json.loads(data), fds)

    def _message(self, message: dict[str, Any], fds: list[int]) -> None:
        op = message["op"]
        if op == "exited":
            for pid, code in message["exits"]:
                child = self._children.pop(pid, None)
                if child is not None and not child.exited.done():
                    child.exited.set_result(code)
        elif op == "spawned":
            self._spawned(message, fds)
        elif op == "failed":
            request = self._requests.pop(message["id"], None)
            if request is not None and not request.future.done():
                request.future.set_exception(OSError(message["errno"], message["error"], message["filename"]))
        elif op == "ready":
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
        else:
            log.error("the shell spawner sent an unknown message %r", op)
        if op != "spawned":
            for fd in fds:
                os.close(fd)

    def _spawned(self, message: dict[str, Any], fds: list[int]) -> None:
        assert self._loop is not None
        request = self._requests.pop(message["id"], None)
        pid: int = message["pid"]
        if len(fds) != 2 or request is None or request.future.done():
            # Nobody waits for this command any more (the caller was cancelled), or its
            # pipes got lost: it must not run unsupervised.
            for fd in fds:
                os.close(fd)
            _kill_group(pid)
            return
        child = Child(pid, message["started"], fds[0], fds[1], self._loop.create_future())
        self._children[pid] = child
        request.future.set_result(child)


def _received_fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % _FD_SIZE])
    return list(fds)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
