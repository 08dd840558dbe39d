"""The spawn helper, its client and the shell executor in-process: a real helper
process, real commands.

What the shell executor relies on: the pid and start time it records, the pipes it reads,
the exit status it turns into an outcome, a session per command, default signals, no
descriptor leaking into the helper or the commands, and a helper that dies being noticed
and replaced.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import pid_alive

from pyrexisd import procs
from pyrexisd.executors.base import JobCall
from pyrexisd.executors.shell import ShellExecutor
from pyrexisd.executors.spawner import Child, Spawner, SpawnerLost, SpawnRequest
from pyrexisd.tasks import builtin
from pyrexisd.tasks.registry import make_task


@pytest.fixture
async def spawner() -> AsyncIterator[Spawner]:
    sp = Spawner()
    await sp.start()
    yield sp
    await sp.close()


async def read_all(fd: int, timeout: float = 10.0) -> bytes:
    """Everything a command writes to one of its pipes, until end of file; closes ``fd``."""
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        if chunk:
            chunks.append(chunk)
        elif not done.done():
            done.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await asyncio.wait_for(done, timeout)
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return b"".join(chunks)


async def run(spawner: Spawner, request: SpawnRequest) -> tuple[int, bytes, bytes]:
    """Run a command to its end: its exit status, stdout and stderr."""
    child = await spawner.spawn(request)
    out, err = await asyncio.gather(read_all(child.stdout), read_all(child.stderr))
    code = await asyncio.wait_for(child.exited, 10)
    return code, out, err


async def until(predicate: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Poll ``predicate`` on the loop until it holds; fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def close_pipes(child: Child) -> None:
    os.close(child.stdout)
    os.close(child.stderr)


async def test_exit_status_and_both_streams(spawner: Spawner) -> None:
    code, out, err = await run(spawner, SpawnRequest(["sh", "-c", "echo out; echo err >&2; exit 7"], {}))
    assert (code, out, err) == (7, b"out\n", b"err\n")
    code, _, _ = await run(spawner, SpawnRequest(["true"], {}))
    assert code == 0


async def test_pid_start_time_and_session_are_the_commands(spawner: Spawner) -> None:
    """The recorded start time is what /proc says (the orphan killer compares them), for
    many commands (when a clock tick falls inside a spawn the helper reads /proc), and
    each command leads its own session and process group."""
    children = await asyncio.gather(*(spawner.spawn(SpawnRequest(["sleep", "30"], {})) for _ in range(40)))
    try:
        for child in children:
            assert child.started is not None
            assert child.started == procs.start_time(child.pid)
            assert os.getsid(child.pid) == child.pid and os.getpgid(child.pid) == child.pid
    finally:
        for child in children:
            os.killpg(child.pid, signal.SIGKILL)
            close_pipes(child)
    codes = await asyncio.wait_for(asyncio.gather(*(c.exited for c in children)), 10)
    assert codes == [-signal.SIGKILL] * len(children)


async def test_commands_get_default_signals_though_the_helper_ignores_some(spawner: Spawner) -> None:
    """The helper ignores SIGTERM and SIGINT (a Ctrl-C meant for the daemon); a command
    must not inherit that, or cancel would always wait for the SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
        child = await spawner.spawn(SpawnRequest(["sleep", "30"], {}))
        close_pipes(child)
        os.killpg(child.pid, sig)  # spawn returns once the command has been exec'd
        assert await asyncio.wait_for(child.exited, 10) == -sig


async def test_stdin_is_dev_null_and_no_descriptor_leaks_into_the_command(spawner: Spawner) -> None:
    _, out, _ = await run(spawner, SpawnRequest(["readlink", "/proc/self/fd/0"], {}))
    assert out == b"/dev/null\n"
    # ls opens the directory it lists as fd 3: anything beyond that leaked.
    _, out, _ = await run(spawner, SpawnRequest(["ls", "/proc/self/fd"], {}))
    assert sorted(int(x) for x in out.split()) == [0, 1, 2, 3]


async def test_environment_is_laid_over_the_daemons_and_cwd_is_honoured(spawner: Spawner, tmp_path: Path) -> None:
    request = SpawnRequest(["sh", "-c", 'echo "$PYREXIS_T_A|$HOME"; pwd'], {"PYREXIS_T_A": "a b"}, str(tmp_path))
    _, out, _ = await run(spawner, request)
    assert out.decode().splitlines() == [f"a b|{os.environ.get('HOME', '')}", str(tmp_path)]
    # Without a cwd the command starts where the daemon was, not where the last one ran;
    # a relative one is taken from there too.
    _, out, _ = await run(spawner, SpawnRequest(["pwd"], {}))
    assert out.decode().strip() == os.getcwd()
    relative = os.path.relpath(tmp_path)
    for _ in range(2):
        _, out, _ = await run(spawner, SpawnRequest(["pwd"], {}, relative))
        assert out.decode().strip() == str(tmp_path)


async def test_program_is_found_in_the_commands_own_path(spawner: Spawner, tmp_path: Path) -> None:
    script = tmp_path / "pyrexis-hello"
    script.write_text("#!/bin/sh\necho hello from $0\n")
    script.chmod(0o755)
    code, out, _ = await run(spawner, SpawnRequest(["pyrexis-hello"], {"PATH": str(tmp_path)}))
    assert (code, out) == (0, f"hello from {script}\n".encode())
    with pytest.raises(FileNotFoundError):
        await spawner.spawn(SpawnRequest(["true"], {"PATH": str(tmp_path)}))


async def test_a_command_that_cannot_start_raises_like_subprocess(spawner: Spawner, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        await spawner.spawn(SpawnRequest(["pyrexis-no-such-program"], {}))
    assert str(info.value) == "[Errno 2] No such file or directory: 'pyrexis-no-such-program'"
    with pytest.raises(FileNotFoundError) as info:
        await spawner.spawn(SpawnRequest(["true"], {}, str(tmp_path / "missing")))
    assert info.value.filename == str(tmp_path / "missing")
    not_executable = tmp_path / "plain.sh"
    not_executable.write_text("echo hi\n")
    with pytest.raises(PermissionError):
        await spawner.spawn(SpawnRequest([str(not_executable)], {}))
    # The helper is unharmed.
    assert (await run(spawner, SpawnRequest(["true"], {})))[0] == 0


async def test_output_file_is_created_empty_and_owner_only_and_never_reused(spawner: Spawner, tmp_path: Path) -> None:
    output = tmp_path / "out.json"
    code, out, _ = await run(spawner, SpawnRequest(["sh", "-c", 'stat -c %s "$1"', "sh", str(output)], {}, None, str(output)))
    assert (code, out) == (0, b"0\n")
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        await spawner.spawn(SpawnRequest(["true"], {}, None, str(output)))
    output.unlink()
    # A command that cannot start leaves no output file behind.
    with pytest.raises(FileNotFoundError):
        await spawner.spawn(SpawnRequest(["pyrexis-no-such-program"], {}, None, str(output)))
    assert not output.exists()


async def test_a_big_request_crosses_in_several_records(spawner: Spawner) -> None:
    # Three variables: one string may not pass 128 KiB (the kernel's MAX_ARG_STRLEN).
    env = {f"BIG{i}": str(i) * 100_000 for i in range(3)}
    command = 'printf %s "$BIG0$BIG1$BIG2" | wc -c'
    code, out, _ = await run(spawner, SpawnRequest(["sh", "-c", command], env))
    assert (code, out.strip()) == (0, b"300000")


async def test_a_killed_helper_loses_running_commands_and_is_replaced(spawner: Spawner) -> None:
    child = await spawner.spawn(SpawnRequest(["sleep", "30"], {}))
    old = spawner.pid
    assert old is not None
    try:
        os.kill(old, signal.SIGKILL)
        with pytest.raises(SpawnerLost):
            await asyncio.wait_for(child.exited, 10)
        # The command itself lives on: the caller (the shell executor) kills its group.
        assert pid_alive(child.pid)
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        close_pipes(child)
    assert (await run(spawner, SpawnRequest(["sh", "-c", "echo again"], {})))[1] == b"again\n"
    assert spawner.pid not in (None, old)
    assert spawner.restarts == 1


async def test_the_helper_holds_none_of_the_daemons_descriptors_and_exits_when_closed(tmp_path: Path) -> None:
    """Close-on-exec or not, nothing the daemon has open (its database, its socket)
    reaches the helper; closing the spawner ends the helper."""
    leaked = os.open(tmp_path / "daemon.db", os.O_RDWR | os.O_CREAT, 0o600)
    os.set_inheritable(leaked, True)
    sp = Spawner()
    try:
        await sp.start()
        pid = sp.pid
        assert pid is not None
        targets = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        assert not [t for t in targets if "daemon.db" in t]
        assert sum(t.startswith("socket:") for t in targets) == 1
    finally:
        await sp.close()
        os.close(leaked)
    assert not pid_alive(pid)


def running(argv: list[str]) -> list[int]:
    """Live processes whose command line starts with ``argv``."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                if fh.read().split(b"\0")[: len(argv)] == [a.encode() for a in argv] and pid_alive(int(entry)):
                    found.append(int(entry))
        except (OSError, ValueError):
            continue
    return found


async def test_a_cancelled_spawn_kills_the_command_it_started(spawner: Spawner) -> None:
    """A caller cancelled while its command was being started never gets the child: the
    command must not run on unsupervised."""
    argv = ["sleep", "29.5"]  # unique enough to be found in /proc
    task = asyncio.ensure_future(spawner.spawn(SpawnRequest(argv, {})))
    await asyncio.sleep(0)  # the request is sent, its answer not yet read
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The helper answers in order: once a later command ran, the first answer was read.
    assert (await run(spawner, SpawnRequest(["true"], {})))[0] == 0
    await until(lambda: not running(argv), "the abandoned command to be killed")


async def test_closing_right_after_a_cancelled_spawn_still_kills_its_command() -> None:
    """At shutdown the daemon cancels what is left, then closes the spawner at once: the
    answer still due is read before the helper goes, so its command does not survive."""
    argv = ["sleep", "29.25"]
    sp = Spawner()
    await sp.start()
    task = asyncio.ensure_future(sp.spawn(SpawnRequest(argv, {})))
    await asyncio.sleep(0)
    task.cancel()
    await sp.close()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until(lambda: not running(argv), "the abandoned command to be killed")


# --------------------------------------------------------------- the shell executor on top


class Events:
    """The core's side of an attempt, reduced to what the shell executor calls."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self.pids: list[int] = []

    def log(self, stream: str, line: str) -> None:
        self.lines.append((stream, line))

    def progress(self, fraction: float | None, message: str | None) -> None:
        pass

    def output(self, value: Any) -> None:
        pass

    def keeps_logs(self) -> bool:
        return True

    def skipped_lines(self, count: int) -> None:
        pass

    def spawned(self, pid: int, started: int | None) -> None:
        self.pids.append(pid)

    async def drain(self) -> None:
        pass


SHELL = make_task(builtin.shell, mode="shell", on_interrupt="fail")


class ForgetfulSpawner(Spawner):
    """Starts the command, then behaves as if the helper had died before saying so."""

    async def spawn(self, request: SpawnRequest) -> Child:
        child = await super().spawn(request)
        close_pipes(child)
        child.exited.cancel()  # nobody will wait for it
        self.started_pid = child.pid
        raise SpawnerLost("the shell spawner died")


async def test_a_command_whose_start_was_never_reported_is_found_and_killed() -> None:
    """The helper died with the request in hand, after starting the command: the executor
    finds it by the attempt's variables and kills it, so it never runs beside a retry."""
    spawner = ForgetfulSpawner()
    executor = ShellExecutor(1, kill_grace=1.0, spawner=spawner)
    await executor.start()
    try:
        call = JobCall("job-unreported", 3, SHELL, {"cmd": "exec sleep 30"}, Events())
        outcome = await asyncio.wait_for(executor.run(call), 10)
        assert (outcome.ok, outcome.error_type, outcome.retryable) == (False, "worker_died", True)
        assert outcome.message == "the shell spawner died while starting the command: it was killed"
        await until(lambda: not pid_alive(spawner.started_pid), "the unreported command to be killed")
    finally:
        await executor.shutdown()


async def test_the_shell_executor_runs_a_command_to_its_outcome(spawner: Spawner) -> None:
    executor = ShellExecutor(1, kill_grace=1.0, spawner=spawner)
    events = Events()
    call = JobCall("job-1", 1, SHELL, {"cmd": 'echo "$PYREXIS_JOB_ID/$PYREXIS_ATTEMPT"; echo \'[1]\' > "$PYREXIS_OUTPUT"'}, events)
    outcome = await asyncio.wait_for(executor.run(call), 10)
    assert outcome.ok and outcome.result == {"exit_code": 0, "output": [1]}
    assert events.lines == [("stdout", "job-1/1")] and len(events.pids) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="starting a command as another user needs root")
async def test_a_command_asked_to_run_as_another_account_runs_as_it(workdir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a helper started with a secret in the daemon's environment, and a request
    with an account (nobody), then the command runs with the account's ids, HOME and USER
    and its own variables but not the secret, in "/" (its home does not exist); the output
    file is the account's; and a directory it may not enter (/root) stops the command
    with exit 126 before it runs."""
    from pyrexisd.executors.base import RunAs

    nobody = RunAs.account(65534)
    assert nobody is not None
    monkeypatch.setenv("PYREXIS_T_SECRET", "from the daemon")
    os.chmod(workdir, 0o711)  # the account must reach its output file
    output = os.path.join(workdir, "out.json")
    spawner = Spawner()
    await spawner.start()
    try:
        script = 'id -u; id -g; echo "$HOME $USER ${PYREXIS_T_SECRET:-none} $PYREXIS_T_OWN"; pwd; echo 7 > "$1"'
        request = SpawnRequest(["sh", "-c", script, "sh", output], {"PYREXIS_T_OWN": "mine"}, None, output, nobody)
        code, out, err = await run(spawner, request)
        assert code == 0, err
        assert out.decode().splitlines() == ["65534", str(nobody.gid), f"{nobody.home} nobody none mine", "/"]
        st = os.stat(output)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (65534, nobody.gid, 0o600)
        code, _, err = await run(spawner, SpawnRequest(["ls"], {}, "/root", None, nobody))
        assert code == 126 and b"cannot enter /root" in err
        # Without an account, the same helper's command does see the daemon's variable.
        _, out, _ = await run(spawner, SpawnRequest(["sh", "-c", "echo $PYREXIS_T_SECRET"], {}))
        assert out == b"from the daemon\n"
    finally:
        await spawner.close()
