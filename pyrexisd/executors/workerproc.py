"""One process-mode worker seen from the daemon: its process, its socket, its end.

The worker is started through the forkserver (:data:`START_METHOD`) with one end of a Unix
socketpair; the daemon keeps the other, non-blocking, and drives it from the event loop
alone: ``add_reader`` to read frames, a plain ``send`` to write them (an outbox and
``add_writer`` only when the socket is full). The worker's death is seen on its
multiprocessing *sentinel*, which the forkserver makes readable, with the exit status in
it, once it has reaped the worker: so a dead worker's pid is never signalled by mistake
while the sentinel is unread.

What it knows of jobs is nothing: it hands each message to ``on_message`` and its end to
``on_exit``. A frame it cannot read (not msgpack, not ``[kind, token, payload]``, longer
than the limit) means the worker is not behaving as ours: it is killed, and
:attr:`WorkerProcess.problem` says why.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import select
import signal
import socket
from collections.abc import Callable, Iterator
from multiprocessing.context import BaseContext
from typing import Any

import msgpack

from protocol.errors import BadFrame, FrameTooLarge, PyrexisError
from protocol.framing import FrameDecoder
from pyrexisd import procs
from pyrexisd.executors import worker

log = logging.getLogger(__name__)

# Forking a process that runs an event loop and threads is unsafe; the forkserver forks a
# small process that preloaded the worker module (and the task modules), so a new worker
# starts in milliseconds.
START_METHOD = "forkserver"


@contextlib.contextmanager
def _no_cwd_on_the_forkservers_path() -> Iterator[None]:
    """Start the forkserver (if it is not running) with ``PYTHONSAFEPATH``: it runs as
    ``python -c``, which would put the daemon's working directory first on its import
    path, so a ``pyrexisd/`` folder or a module named like a task module in that directory
    would be imported into every worker in place of ours. (Python 3.11's forkserver
    ignores the daemon's ``sys.path``.) The variable is set only for the moment the
    forkserver may be started; its workers drop it again (:data:`~pyrexisd.executors.worker.SAFE_PATH_MARK`)."""
    if "PYTHONSAFEPATH" in os.environ:
        yield
        return
    os.environ["PYTHONSAFEPATH"] = os.environ[worker.SAFE_PATH_MARK] = "1"
    try:
        yield
    finally:
        os.environ.pop("PYTHONSAFEPATH", None)
        os.environ.pop(worker.SAFE_PATH_MARK, None)
RECV_SIZE = 256 * 1024


class WorkerStartError(PyrexisError):
    """A worker process could not be started (the forkserver failed)."""


class WorkerProcess:
    """One worker process and the daemon's end of its socket."""

    __slots__ = (
        "pid", "started", "ready", "problem", "load_error", "job", "gone", "_process", "_sock", "_fd", "_sentinel",
        "_poller", "_loop", "_decoder", "_outbox", "_writing", "_stopping", "_kill_timer", "_on_message", "_on_exit",
    )  # fmt: skip

    def __init__(
        self,
        context: BaseContext,
        task_modules: tuple[str, ...],
        max_result: int,
        on_message: Callable[[WorkerProcess, str, int, Any], None],
        on_exit: Callable[[WorkerProcess, int], None],
    ) -> None:
        self._loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            process = context.Process(  # type: ignore[attr-defined]  # each concrete context has it
                target=worker.serve, args=(theirs, task_modules, max_result), name="pyrexis-worker", daemon=True
            )
            with _no_cwd_on_the_forkservers_path():
                process.start()
        except Exception as exc:  # the forkserver could not be reached or started
            ours.close()
            raise WorkerStartError(f"cannot start a worker process: {type(exc).__name__}: {exc}") from exc
        finally:
            theirs.close()  # the worker has its own copy now
        self._process = process
        self.pid: int = process.pid
        self.started = procs.start_time(self.pid)  # with the pid, its identity across restarts
        self.ready = False  # it loaded the tasks
        self.problem: str | None = None  # why the daemon killed it, if it broke the protocol
        self.load_error: str | None = None  # why it could not load the tasks
        self.job: Any = None  # the executor's record of the attempt it runs
        self.gone: asyncio.Future[int] = self._loop.create_future()  # its exit status
        ours.setblocking(False)
        self._sock: socket.socket | None = ours
        self._fd = ours.fileno()
        self._sentinel: int = process.sentinel
        # Asked before each job (has_exited); not select.select: the fd may be above FD_SETSIZE.
        self._poller = select.poll()
        self._poller.register(self._sentinel, select.POLLIN)
        self._decoder = FrameDecoder(worker.channel_max_frame(max_result))
        self._outbox: collections.deque[memoryview] = collections.deque()
        self._writing = False
        self._stopping = False
        self._kill_timer: asyncio.TimerHandle | None = None
        self._on_message = on_message
        self._on_exit = on_exit
        self._loop.add_reader(self._fd, self._readable)
        self._loop.add_reader(self._sentinel, self._exited)

    @property
    def stopping(self) -> bool:
        """A stop was asked (cancel, timeout, broken protocol): it is on its way out."""
        return self._stopping

    def has_exited(self) -> bool:
        """Its end is known (without waiting), even if ``on_exit`` has not run yet."""
        if self.gone.done():
            return True
        if self._poller.poll(0):
            self._exited()
            return True
        return False

    # -- writing ------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Queue one frame for the worker (never blocks)."""
        sock = self._sock
        if sock is None or self._stopping:
            return
        if not self._outbox:
            try:
                sent = sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:  # EPIPE: it is gone (its sentinel says how)
                self._hang_up()
                return
            if sent == len(data):
                return
            data = memoryview(data)[sent:]  # type: ignore[assignment]  # only sliced and sent
        self._outbox.append(memoryview(data))
        if not self._writing:
            self._loop.add_writer(self._fd, self._flush)
            self._writing = True

    def _flush(self) -> None:
        sock = self._sock
        assert sock is not None
        while self._outbox:
            piece = self._outbox[0]
            try:
                sent = sock.send(piece)
            except BlockingIOError:
                return
            except OSError:  # EPIPE: it is gone (its sentinel says how)
                self._hang_up()
                return
            if sent < len(piece):
                self._outbox[0] = piece[sent:]
                return
            self._outbox.popleft()
        self._loop.remove_writer(self._fd)
        self._writing = False

    # -- reading ------------------------------------------------------------------------
    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            data = sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError:  # ECONNRESET: it exited with a call unread
            data = b""
        if not data:
            # Only a worker on its way out closes its end: make sure it goes.
            self._hang_up()
            return
        self._take(data)

    def _take(self, data: bytes) -> None:
        try:
            bodies = self._decoder.feed(data)
        except FrameTooLarge as exc:
            self.broke(exc.message)
            return
        for body in bodies:
            try:
                kind, token, payload = msgpack.unpackb(body, raw=False, strict_map_key=False)
                if not isinstance(kind, str) or not isinstance(token, int):
                    raise BadFrame("not [kind, token, payload]")
            except (ValueError, TypeError, msgpack.UnpackException, BadFrame) as exc:
                self.broke(f"a frame that is not [kind, token, payload]: {type(exc).__name__}: {exc}")
                return
            if self._sock is None:
                return  # a message before this one broke it
            self._on_message(self, kind, token, payload)

    def _drain(self) -> None:
        """Read what a worker that has exited wrote before it did."""
        sock = self._sock
        while sock is not None and self._sock is sock:
            try:
                data = sock.recv(RECV_SIZE)
            except OSError:
                return
            if not data:
                return
            self._take(data)

    # -- its end ------------------------------------------------------------------------
    def broke(self, problem: str) -> None:
        """It sent what a worker of ours never sends: stop listening and kill it."""
        if self.problem is None:
            self.problem = problem
            log.error("process worker %d broke the channel (%s): killing it", self.pid, problem)
        self._close_socket()
        self._stopping = True
        self.kill()

    def _hang_up(self) -> None:
        """Its socket ended: it is exiting or dying; make sure it does."""
        self._close_socket()
        self._stopping = True
        self.kill()

    def stop(self, grace: float) -> None:
        """SIGTERM now, SIGKILL after ``grace`` seconds if it still lives."""
        if self._stopping:
            return
        self._stopping = True
        self._signal(signal.SIGTERM)
        self._kill_timer = self._loop.call_later(grace, self.kill)

    def kill(self) -> None:
        """SIGKILL, unless it is gone already."""
        self._signal(signal.SIGKILL)

    def close(self, grace: float) -> None:
        """Tell it to exit (its socket ends); SIGKILL after ``grace`` seconds if it lives."""
        sock = self._sock
        if sock is not None and not self._outbox:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        if not self._stopping:
            self._stopping = True
            self._kill_timer = self._loop.call_later(grace, self.kill)

    def _signal(self, sig: int) -> None:
        # The pid is ours until the sentinel is read; the start time guards the rest.
        if self.gone.done() or self.started is None or procs.start_time(self.pid) != self.started:
            return
        try:
            os.kill(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        self._loop.remove_reader(self._fd)
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False
        self._outbox.clear()
        sock.close()

    def _exited(self) -> None:
        if self.gone.done():
            return
        self._loop.remove_reader(self._sentinel)
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        self._drain()  # a result written just before it died still counts
        self._close_socket()
        status = self._process.exitcode
        code = -1 if status is None else status
        try:
            self._process.close()
        except ValueError:  # no status read (cannot happen once the sentinel is readable)
            pass
        self.gone.set_result(code)
        self._on_exit(self, code)

    def death(self, code: int) -> str:
        """Why it ended, in words, for the attempt it was running."""
        if self.load_error is not None:
            return f"the worker process could not load the task modules: {self.load_error}"
        if self.problem is not None:
            return f"the worker process was killed: {self.problem}"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"the worker process died (killed by {name})"
        return f"the worker process died (exit code {code})"
