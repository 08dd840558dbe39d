"""Shell mode: a command in its own session, its output read line by line into the log.

Commands are started by the spawn helper (:mod:`pyrexisd.executors.spawner`), a small
process started with the executor, never by forking the daemon. Each runs in a session of
its own, so the whole tree can be signalled as one process group: cancel and timeout send
SIGTERM to the group, then SIGKILL after the kill grace period. Its stdout and stderr are
read here, on the event loop; lines longer than :data:`MAX_LINE` bytes are split into
several lines; invalid UTF-8 becomes U+FFFD.

If the helper dies, the commands it was running are killed (their exit status is lost)
and their attempts fail with ``worker_died`` (retryable); the next command starts a new
helper.

A call with a ``run_as`` account (a root daemon running another user's job) is handed to
the helper with that account, which starts the command in it (see
:meth:`pyrexisd.executors.spawnd.Helper.spawn_as`: ids, clean environment, directory
entered after the switch). The ``$PYREXIS_INPUTS`` file is given to the account here,
the output file by the helper; the output is read back only if it is still a regular
file of the command's own account (not a link to somebody else's file) and no larger
than ``max_output``.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import stat
import tempfile
from typing import Any

from pyrexisd import procs
from pyrexisd.executors.base import CANCELLED, MAX_LINE, Executor, JobCall, Outcome, RunAs
from pyrexisd.executors.spawner import Child, Spawner, SpawnerError, SpawnerLost, SpawnRequest
from pyrexisd.tasks.builtin import ShellCommand

READ_CHUNK = 64 * 1024
# After the command exits, how long to keep reading output that a background child
# may still hold open, before the attempt ends without it.
DRAIN_AFTER_EXIT = 1.0
DRAIN_EVERY = 512  # lines between waits for the store (backpressure)
# When to look for a command whose start the dying helper never reported: one caught in
# the middle of its exec still shows the helper's environment for a moment.
UNREPORTED_LOOKS = (0.0, 0.05, 0.25)
MAX_OUTPUT = 16 * 1024 * 1024  # bytes of $PYREXIS_OUTPUT read back, by default


class ShellExecutor(Executor):
    """Runs the built-in ``shell`` task's commands through the spawn helper."""

    mode = "shell"

    def __init__(
        self,
        slots: int,
        kill_grace: float = 5.0,
        workdir: str | None = None,
        spawner: Spawner | None = None,
        max_output: int = MAX_OUTPUT,
    ) -> None:
        super().__init__(slots)
        self.kill_grace = kill_grace
        self.workdir = workdir or tempfile.gettempdir()
        self.spawner = spawner or Spawner()
        self.max_output = max_output

    async def start(self) -> None:
        """Start the spawn helper. The daemon calls this before it loads any job, so the
        helper is forked from a small process; calling it again does nothing."""
        await self.spawner.start()

    async def shutdown(self) -> None:
        await self.spawner.close()

    async def run(self, call: JobCall) -> Outcome:
        try:
            command = call.task.func(**call.function_kwargs())
            if not isinstance(command, ShellCommand):
                raise TypeError(f"a shell-mode task must return a ShellCommand, not {type(command).__name__}")
        except Exception as exc:
            return Outcome.from_exception(exc)
        # Random names, as mkstemp's, but the helper creates the output file (exclusively,
        # owner-only): it is created where the command runs, and costs the loop nothing.
        output_path = os.path.join(self.workdir, f"pyrexis-output-{secrets.token_hex(8)}.json")
        inputs_path: str | None = None
        if call.inputs:
            inputs_path = os.path.join(self.workdir, f"pyrexis-inputs-{secrets.token_hex(8)}.json")
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            with os.fdopen(os.open(inputs_path, flags, 0o600), "w", encoding="utf-8") as fh:
                if call.run_as is not None:  # the command reads it as its own user
                    os.fchown(fh.fileno(), call.run_as.uid, call.run_as.gid)
                json.dump(call.inputs, fh, default=repr)
        # Laid over the environment the helper has from the daemon.
        env = dict(command.env) if command.env else {}
        env.update(call.env)
        env["PYREXIS_JOB_ID"] = call.job_id
        env["PYREXIS_ATTEMPT"] = str(call.attempt)
        env["PYREXIS_OUTPUT"] = output_path
        if inputs_path is not None:
            env["PYREXIS_INPUTS"] = inputs_path
        try:
            return await self._run_process(call, command, env, output_path)
        finally:
            for path in (output_path, inputs_path):
                if path is not None:
                    try:
                        os.unlink(path)
                    except OSError:
                        pass

    async def _run_process(
        self, call: JobCall, command: ShellCommand, env: dict[str, str], output_path: str
    ) -> Outcome:
        request = SpawnRequest(command.argv, env, command.cwd, output_path, call.run_as)
        try:
            child = await self.spawner.spawn(request)
        except OSError as exc:
            return Outcome.failure("exception", f"cannot start {command.argv[0]!r}: {exc}", retryable=False)
        except SpawnerLost as exc:
            how = "it was killed" if await self._kill_unreported(call) else "it had not started"
            return Outcome.failure("worker_died", f"{exc} while starting the command: {how}", retryable=True)
        except SpawnerError as exc:
            return Outcome.failure("worker_died", exc.message, retryable=True)
        call.events.spawned(child.pid, child.started)
        loop = asyncio.get_running_loop()
        readers = [_Reader(loop, child.stdout, "stdout", call), _Reader(loop, child.stderr, "stderr", call)]
        killer: list[asyncio.Task[None]] = []
        call.on_cancel(lambda: killer.append(asyncio.ensure_future(self._kill_group(child))))
        lost: SpawnerLost | None = None
        try:
            try:
                code = await child.exited
            except SpawnerLost as exc:
                # Its exit status is gone with the helper, but the command may run on:
                # it must not outlive its attempt.
                lost = exc
                code = -signal.SIGKILL
                await self._kill_group(child)
            pending = [r.done for r in readers if not r.done.done()]
            if pending:
                await asyncio.wait(pending, timeout=DRAIN_AFTER_EXIT)
        except asyncio.CancelledError:
            # The daemon is stopping this attempt: the process group must not outlive it.
            await asyncio.shield(self._kill_group(child))
            raise
        finally:
            for reader in readers:
                reader.close()
            for task in killer:
                await task
        if call.cancelled:
            return CANCELLED
        if lost is not None:
            return Outcome.failure("worker_died", f"{lost} while the command ran: it was killed, its exit status is lost", retryable=True)
        if code != 0:
            how = f"exited with code {code}" if code > 0 else f"killed by signal {-code}"
            return Outcome.failure("exit_code", f"command {how}", retryable=True)
        result: dict[str, Any] = {"exit_code": 0}
        try:
            text = _read_output(output_path, call.run_as, self.max_output)
        except ValueError as exc:
            return Outcome.failure("exception", f"$PYREXIS_OUTPUT {exc}", retryable=False)
        if text.strip():
            try:
                result["output"] = json.loads(text)
            except ValueError as exc:
                return Outcome.failure(
                    "exception", f"$PYREXIS_OUTPUT does not hold valid JSON: {exc}", retryable=False
                )
        return Outcome.success(result)

    async def _kill_unreported(self, call: JobCall) -> bool:
        """The helper died with this attempt's request in hand: it may have started the
        command without telling anyone. Found by the attempt's own variables, it is killed
        (SIGKILL, as an orphan would be), so it never runs beside a retry. True if found."""
        marks = {"PYREXIS_JOB_ID": call.job_id, "PYREXIS_ATTEMPT": str(call.attempt)}
        for pause in UNREPORTED_LOOKS:
            await asyncio.sleep(pause)
            # Off the loop: a busy machine has many processes to look through.
            for pid in await asyncio.to_thread(procs.session_leaders_with_env, marks):
                if _signal_group(pid, signal.SIGKILL):
                    return True
        return False

    async def _kill_group(self, child: Child) -> None:
        """SIGTERM to the whole group, SIGKILL after the grace period if any is left."""
        pgid = child.pid  # a session leader's pid is its group id
        if not _signal_group(pgid, signal.SIGTERM):
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.kill_grace
        while loop.time() < deadline:
            # An exited leader stays a member (a zombie) until the helper reaps it; once
            # the helper is gone, init reaps it.
            if child.exited.done() and not _group_alive(pgid):
                return
            await asyncio.sleep(0.05)
        _signal_group(pgid, signal.SIGKILL)


class _Reader:
    """Reads one of a command's pipes into the log, line by line, from the event loop.

    A callback on the descriptor rather than a stream transport: a command like ``true``
    costs two reads of nothing, and nothing more is built for them.
    """

    __slots__ = ("loop", "fd", "name", "call", "done", "pending", "count", "_paused", "_drain")

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, name: str, call: JobCall) -> None:
        self.loop = loop
        self.fd = fd
        self.name = name
        self.call = call
        self.done: asyncio.Future[None] = loop.create_future()  # resolved at end of file
        self.pending = b""
        self.count = 0  # lines logged since the last wait for the store
        self._paused = False
        self._drain: asyncio.Future[None] | None = None  # kept: a task nobody holds may vanish
        loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            chunk = os.read(self.fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._flush_rest()
            self.close()
            return
        events = self.call.events
        if not events.keeps_logs():
            # Past the log limit: count what is thrown away, do not split it.
            events.skipped_lines(chunk.count(b"\n"))
            self.pending = b""
            return
        pending = self.pending + chunk
        lines = pending.split(b"\n")
        pending = lines.pop()
        name = self.name
        for raw in lines:
            for piece in _cut(raw.removesuffix(b"\r")):
                events.log(name, piece)
                self.count += 1
        while len(pending) >= MAX_LINE:
            events.log(name, pending[:MAX_LINE].decode("utf-8", "replace"))
            pending = pending[MAX_LINE:]
            self.count += 1
        self.pending = pending
        if self.count >= DRAIN_EVERY:
            # Backpressure: stop reading until the lines so far are stored.
            self.count = 0
            self.loop.remove_reader(self.fd)
            self._paused = True
            self._drain = asyncio.ensure_future(events.drain())
            self._drain.add_done_callback(self._resume)

    def _resume(self, _drained: asyncio.Future[None]) -> None:
        self._drain = None
        if self._paused and not self.done.done():
            self._paused = False
            self.loop.add_reader(self.fd, self._readable)

    def _flush_rest(self) -> None:
        if self.pending:
            for piece in _cut(self.pending.removesuffix(b"\r")):
                self.call.events.log(self.name, piece)
        self.pending = b""

    def close(self) -> None:
        """Stop reading (at end of file, or when the attempt gives up on the pipe)."""
        if self.done.done():
            return
        if not self._paused:
            self.loop.remove_reader(self.fd)
        os.close(self.fd)
        self.done.set_result(None)


def _read_output(path: str, run_as: RunAs | None, limit: int) -> str:
    """What the command wrote to ``$PYREXIS_OUTPUT`` ("" when nothing is there), or
    ValueError saying why it is not read: not a regular file of the command's own account
    (a link swapped in to make the daemon read another file), or larger than ``limit``."""
    owner = os.geteuid() if run_as is None else run_as.uid
    try:
        st = os.lstat(path)
    except OSError:
        return ""
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        return ""  # most commands write no output: one lstat instead of an open and a read
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise ValueError(f"cannot be read: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != owner:
            raise ValueError("was replaced by something other than the command's own regular file")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"holds more than {limit} bytes")
    return data.decode("utf-8", "replace")


def _cut(raw: bytes) -> list[str]:
    if len(raw) <= MAX_LINE:
        return [raw.decode("utf-8", "replace")]
    return [raw[i : i + MAX_LINE].decode("utf-8", "replace") for i in range(0, len(raw), MAX_LINE)]


def _signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
