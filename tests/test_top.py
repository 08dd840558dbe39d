"""`pyrexisctl top` in a real terminal (a pty): it draws full-screen, updates, quits on
q and gives the terminal back; elsewhere it prints plain frames. And the CLI's polish:
--json on every command, colour only on a terminal and never with NO_COLOR, shell
completion for bash, zsh and fish."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable

import click
import pytest
from conftest import ROOT, Daemon, wait_until

from pyrexisctl import render
from pyrexisctl.cli import main as cli_main
from pyrexisctl.top import ALT_SCREEN_OFF, ALT_SCREEN_ON, CURSOR_ON


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYREXIS_SOCKET", "NO_COLOR")}
    env["PYTHONPATH"] = str(ROOT)
    env["TERM"] = "xterm"
    env.update(extra)
    return env


class Terminal:
    """A pty of 40 x 120 with a process on it, and what it has drawn so far."""

    def __init__(self, argv: list[str]) -> None:
        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.before = termios.tcgetattr(self.slave)
        self.proc = subprocess.Popen(
            argv, stdin=self.slave, stdout=self.slave, stderr=self.slave, env=_env(), start_new_session=True
        )
        self.screen = b""

    def read(self) -> bytes:
        while select.select([self.master], [], [], 0.05)[0]:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                break
            if not chunk:
                break
            self.screen += chunk
        return self.screen

    def expect(self, text: bytes, after: int = 0, timeout: float = 30.0) -> int:
        """Wait until ``text`` is drawn past offset ``after``; where it starts."""
        wait_until(lambda: text in self.read()[after:], timeout, 0.05, f"{text!r} on the screen")
        return self.screen.index(text, after)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self.master)
        os.close(self.slave)


def test_top_draws_updates_quits_on_q_and_restores_the_terminal(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon("--tasks", "sample_tasks")
    term = Terminal([sys.executable, "-m", "pyrexisctl", "--socket", d.socket, "top", "--interval", "0.2"])
    try:
        term.expect(ALT_SCREEN_ON.encode())
        first = term.expect(b"QUEUE")
        term.expect(b"loop lag", first)
        assert termios.tcgetattr(term.slave)[3] & termios.ECHO == 0, "keys are not echoed while it runs"
        with d.client() as c:
            job = c.submit("sleep", {"seconds": 30}, queue="topq")
            # The next frames show the new queue and the running job with its progress.
            term.expect(b"topq", first)
            term.expect(job["job_id"].encode(), first)
            os.write(term.master, b"q")
            assert term.proc.wait(30) == 0
            c.request("cancel", {"job_id": job["job_id"]})
        tail = term.read()[-200:]
        assert (CURSOR_ON + ALT_SCREEN_OFF).encode() in tail
        after = termios.tcgetattr(term.slave)
        assert after[3] == term.before[3], "local modes (echo, canonical input) are back"
    finally:
        term.close()


def _ctl(d: Daemon, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyrexisctl", "--socket", d.socket, *args],
        capture_output=True, text=True, timeout=60, env=_env(**env),
    )


def test_top_once_and_not_a_terminal_print_plain_frames_and_json(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon()
    out = _ctl(d, "top", "--once")
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout
    for part in ("slots", "QUEUE", "RUNNING", "submit->start", "commit", "loop lag", "events", "database"):
        assert part in out.stdout, part
    data = json.loads(_ctl(d, "top", "--once", "--json").stdout)
    assert {"stats", "queues", "running"} <= set(data) and "loop_lag_ms" in data["stats"]
    # Not a terminal: plain frames one after the other, until interrupted.
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyrexisctl", "--socket", d.socket, "top", "--interval", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(),
    )
    try:
        assert proc.stdout is not None
        seen = b""
        deadline = time.monotonic() + 30
        while seen.count(b"QUEUE") < 2 and time.monotonic() < deadline:
            seen += os.read(proc.stdout.fileno(), 65536)
        assert seen.count(b"QUEUE") >= 2 and b"\x1b" not in seen
    finally:
        proc.terminate()
        proc.wait(10)


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    out = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            out += _commands(command, f"{prefix}{name} ")
        else:
            out.append((prefix + name, command))
    return out


def test_every_command_takes_json() -> None:
    missing = [name for name, cmd in _commands(cli_main) if not any("--json" in p.opts for p in cmd.params)]
    assert not missing


def test_colour_only_on_a_terminal_and_never_with_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty:
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert render.use_colour(Tty())  # type: ignore[arg-type]
    assert not render.use_colour(open(os.devnull, "w"))  # noqa: SIM115
    monkeypatch.setenv("NO_COLOR", "1")
    assert not render.use_colour(Tty())  # type: ignore[arg-type]
    jobs = [{"job_id": "a", "task": "echo", "queue": "q", "priority": 0, "status": "failed", "attempts": 1},
            {"job_id": "bb", "task": "echo", "queue": "q", "priority": 0, "status": "completed", "attempts": 1}]
    coloured = render.jobs_table(jobs, now=0, colour=True)
    assert "\x1b[31m" in coloured and "\x1b[32m" in coloured
    assert click.unstyle(coloured) == render.jobs_table(jobs, now=0), "the columns line up the same"


def test_list_in_a_terminal_is_coloured_unless_no_color(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon()
    with d.client() as c:
        c.wait(c.submit("echo", {"value": 1})["job_id"])
    for env, coloured in (({}, True), ({"NO_COLOR": "1"}, False)):
        master, slave = pty.openpty()
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "pyrexisctl", "--socket", d.socket, "list"],
                stdout=slave, stderr=subprocess.PIPE, env=_env(**env), timeout=60,
            )
            assert proc.returncode == 0
            drawn = os.read(master, 65536)
        finally:
            os.close(master)
            os.close(slave)
        assert (b"\x1b[32m" in drawn) == coloured, drawn


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_and_completion_itself(shell: str) -> None:
    out = subprocess.run([sys.executable, "-m", "pyrexisctl", "completion", shell],
                         capture_output=True, text=True, timeout=60, env=_env())
    assert out.returncode == 0 and "_PYREXISCTL_COMPLETE" in out.stdout
    if shell == "bash":
        done = subprocess.run(
            [sys.executable, "-m", "pyrexisctl"], capture_output=True, text=True, timeout=60,
            env=_env(_PYREXISCTL_COMPLETE="bash_complete", COMP_WORDS="pyrexisctl cle", COMP_CWORD="1"),
        )
        assert "plain,clean" in done.stdout, done
