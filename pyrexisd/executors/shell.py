"""Shell mode: a command in its own session, its output read line by line into the log.

The command runs with ``start_new_session=True`` so the whole tree can be signalled as
one process group: cancel and timeout send SIGTERM to the group, then SIGKILL after the
kill grace period. Lines longer than :data:`MAX_LINE` bytes are split into several lines;
invalid UTF-8 becomes U+FFFD.

A call with a ``run_as`` account (a root daemon running another user's job) runs with
that account's uid, gid and groups, and none of the daemon's environment but the
locale, the time zone and a standard PATH; HOME, USER, LOGNAME and SHELL are the
account's. The switch is made by a small trampoline (:data:`SWITCH`, run by this
Python, isolated): it drops to the account, *then* enters the working directory (so a
job can only start in a directory its user may enter), then ``exec``s the command, which
keeps the trampoline's pid and its own session. The ``$PYREXIS_OUTPUT`` and
``$PYREXIS_INPUTS`` files are handed to the account, and the output is read back only if
it is still a regular file of that account (not a link to somebody else's file) and no
larger than ``max_output``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
import tempfile
from typing import Any

from pyrexisd import procs
from pyrexisd.executors.base import CANCELLED, MAX_LINE, Executor, JobCall, Outcome, RunAs
from pyrexisd.tasks.builtin import ShellCommand

READ_CHUNK = 64 * 1024
# After the command exits, how long to keep reading output that a background child
# may still hold open, before the attempt ends without it.
DRAIN_AFTER_EXIT = 1.0
DRAIN_EVERY = 512  # lines between waits for the store (backpressure)
MAX_OUTPUT = 16 * 1024 * 1024  # bytes of $PYREXIS_OUTPUT read back, by default
# What a command run as another account keeps of the daemon's environment: nothing that
# could carry the operator's secrets.
KEPT_FOR_OTHERS = ("LANG", "LANGUAGE", "TZ", "TERM")
STANDARD_PATH = "/usr/local/bin:/usr/bin:/bin"
# Run as another account, the command is started through this trampoline (argv: uid gid
# groups cwd keep-LC_CTYPE command...): every id is dropped (real, effective and saved),
# then the directory is entered with the account's rights, then the command replaces
# the trampoline (same pid, same session). Python's start-up may add LC_CTYPE to the
# environment (PEP 538); it is removed again unless the job's environment had it.
# Exit 126: the directory cannot be entered; 127: the command cannot be started.
SWITCH = """\
import os, sys
uid, gid, groups, cwd, keep_ctype, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6:]
os.setgroups([int(g) for g in groups.split(",") if g])
os.setresgid(gid, gid, gid)
os.setresuid(uid, uid, uid)
if keep_ctype != "1":
    os.environ.pop("LC_CTYPE", None)
try:
    os.chdir(cwd)
except OSError as exc:
    sys.stderr.write(f"pyrexis: cannot enter {cwd}: {exc.strerror}\\n")
    os._exit(126)
try:
    os.execvp(argv[0], argv)
except OSError as exc:
    sys.stderr.write(f"pyrexis: cannot start {argv[0]}: {exc.strerror}\\n")
    os._exit(127)
"""


class ShellExecutor(Executor):
    mode = "shell"

    def __init__(
        self, slots: int, kill_grace: float = 5.0, workdir: str | None = None, max_output: int = MAX_OUTPUT
    ) -> None:
        super().__init__(slots)
        self.kill_grace = kill_grace
        self.workdir = workdir or tempfile.gettempdir()
        self.max_output = max_output

    async def run(self, call: JobCall) -> Outcome:
        try:
            command = call.task.func(**call.function_kwargs())
            if not isinstance(command, ShellCommand):
                raise TypeError(f"a shell-mode task must return a ShellCommand, not {type(command).__name__}")
        except Exception as exc:
            return Outcome.from_exception(exc)
        run_as = call.run_as
        fd, output_path = tempfile.mkstemp(prefix="pyrexis-output-", suffix=".json", dir=self.workdir)
        try:
            if run_as is not None:
                os.fchown(fd, run_as.uid, run_as.gid)  # the command writes it as its own user
        finally:
            os.close(fd)
        inputs_path: str | None = None
        if call.inputs:
            fd, inputs_path = tempfile.mkstemp(prefix="pyrexis-inputs-", suffix=".json", dir=self.workdir)
            if run_as is not None:
                os.fchown(fd, run_as.uid, run_as.gid)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(call.inputs, fh, default=repr)
        env = _environment(run_as)
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
        run_as = call.run_as
        argv = list(command.argv)
        cwd = command.cwd
        if run_as is not None:
            # Entered after the switch (by the trampoline): entered by the daemon, as
            # root, it would let the user start in a directory it may not enter.
            where = cwd if cwd is not None else (run_as.home if os.path.isdir(run_as.home) else "/")
            groups = ",".join(str(g) for g in run_as.groups)
            keep_ctype = "1" if "LC_CTYPE" in env else "0"
            argv = [sys.executable, "-I", "-S", "-c", SWITCH, str(run_as.uid), str(run_as.gid), groups, where, keep_ctype, *argv]
            cwd = None
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
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
            text = _read_output(output_path, run_as, self.max_output)
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


def _environment(run_as: RunAs | None) -> dict[str, str]:
    """The environment a command starts from: the daemon's own, or for another account
    a clean one (see the module docstring)."""
    if run_as is None:
        return dict(os.environ)
    env = {k: v for k, v in os.environ.items() if k in KEPT_FOR_OTHERS or k.startswith("LC_")}
    env.update(
        PATH=STANDARD_PATH, HOME=run_as.home, USER=run_as.user, LOGNAME=run_as.user, SHELL=run_as.shell
    )
    return env


def _read_output(path: str, run_as: RunAs | None, limit: int) -> str:
    """What the command wrote to ``$PYREXIS_OUTPUT`` ("" when nothing is there), or
    ValueError saying why it is not read: not a regular file of the command's own account
    (a link swapped in to make the daemon read another file), or larger than ``limit``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise ValueError(f"cannot be read: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        owner = os.geteuid() if run_as is None else run_as.uid
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
