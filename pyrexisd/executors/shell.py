"""Shell mode: a command in its own session, its output read line by line into the log.

The command runs with ``start_new_session=True`` so the whole tree can be signalled as
one process group: cancel and timeout send SIGTERM to the group, then SIGKILL after the
kill grace period. Lines longer than :data:`MAX_LINE` bytes are split into several lines;
invalid UTF-8 becomes U+FFFD.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import tempfile
from typing import Any

from pyrexisd import procs
from pyrexisd.executors.base import CANCELLED, MAX_LINE, Executor, JobCall, Outcome
from pyrexisd.tasks.builtin import ShellCommand

READ_CHUNK = 64 * 1024
# After the command exits, how long to keep reading output that a background child
# may still hold open, before the attempt ends without it.
DRAIN_AFTER_EXIT = 1.0
DRAIN_EVERY = 512  # lines between waits for the store (backpressure)


class ShellExecutor(Executor):
    mode = "shell"

    def __init__(self, slots: int, kill_grace: float = 5.0, workdir: str | None = None) -> None:
        super().__init__(slots)
        self.kill_grace = kill_grace
        self.workdir = workdir or tempfile.gettempdir()

    async def run(self, call: JobCall) -> Outcome:
        try:
            command = call.task.func(**call.function_kwargs())
            if not isinstance(command, ShellCommand):
                raise TypeError(f"a shell-mode task must return a ShellCommand, not {type(command).__name__}")
        except Exception as exc:
            return Outcome.from_exception(exc)
        fd, output_path = tempfile.mkstemp(prefix="pyrexis-output-", suffix=".json", dir=self.workdir)
        os.close(fd)
        inputs_path: str | None = None
        if call.inputs:
            fd, inputs_path = tempfile.mkstemp(prefix="pyrexis-inputs-", suffix=".json", dir=self.workdir)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(call.inputs, fh, default=repr)
        env = dict(os.environ)
        if command.env:
            env.update(command.env)
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
        try:
            proc = await asyncio.create_subprocess_exec(
                *command.argv,
                cwd=command.cwd,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            return Outcome.failure("exception", f"cannot start {command.argv[0]!r}: {exc}", retryable=False)
        call.events.spawned(proc.pid, procs.start_time(proc.pid))
        killer: list[asyncio.Task[None]] = []
        call.on_cancel(lambda: killer.append(asyncio.ensure_future(self._kill_group(proc))))
        assert proc.stdout is not None and proc.stderr is not None
        readers = [
            asyncio.ensure_future(self._pump(proc.stdout, "stdout", call)),
            asyncio.ensure_future(self._pump(proc.stderr, "stderr", call)),
        ]
        try:
            code = await proc.wait()
            _, pending = await asyncio.wait(readers, timeout=DRAIN_AFTER_EXIT)
            for reader in pending:
                reader.cancel()
        except asyncio.CancelledError:
            # The daemon is stopping this attempt: the process group must not outlive it.
            await asyncio.shield(self._kill_group(proc))
            for reader in readers:
                reader.cancel()
            raise
        finally:
            for task in killer:
                await task
        if call.cancelled:
            return CANCELLED
        if code != 0:
            how = f"exited with code {code}" if code > 0 else f"killed by signal {-code}"
            return Outcome.failure("exit_code", f"command {how}", retryable=True)
        result: dict[str, Any] = {"exit_code": 0}
        try:
            with open(output_path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError:
            text = ""
        if text.strip():
            try:
                result["output"] = json.loads(text)
            except ValueError as exc:
                return Outcome.failure(
                    "exception", f"$PYREXIS_OUTPUT does not hold valid JSON: {exc}", retryable=False
                )
        return Outcome.success(result)

    async def _kill_group(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM to the whole group, SIGKILL after the grace period if any is left."""
        pgid = proc.pid  # a session leader's pid is its group id
        if not _signal_group(pgid, signal.SIGTERM):
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.kill_grace
        while loop.time() < deadline:
            if proc.returncode is not None and not _group_alive(pgid):
                return
            await asyncio.sleep(0.05)
        _signal_group(pgid, signal.SIGKILL)

    async def _pump(self, stream: asyncio.StreamReader, name: str, call: JobCall) -> None:
        events = call.events
        pending = b""
        count = 0
        while True:
            chunk = await stream.read(READ_CHUNK)
            if not chunk:
                break
            if not events.keeps_logs():
                # Past the log limit: count what is thrown away, do not split it.
                events.skipped_lines(chunk.count(b"\n"))
                pending = b""
                continue
            pending += chunk
            lines = pending.split(b"\n")
            pending = lines.pop()
            for raw in lines:
                for piece in _cut(raw.removesuffix(b"\r")):
                    events.log(name, piece)
                    count += 1
            while len(pending) >= MAX_LINE:
                events.log(name, pending[:MAX_LINE].decode("utf-8", "replace"))
                pending = pending[MAX_LINE:]
                count += 1
            if count >= DRAIN_EVERY:
                count = 0
                await events.drain()
        if pending:
            for piece in _cut(pending.removesuffix(b"\r")):
                events.log(name, piece)


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
