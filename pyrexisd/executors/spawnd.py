"""The spawn helper: a small process that starts shell commands for the daemon.

Why a helper: starting a command from the daemon means forking the daemon, and a daemon
that holds a million waiting jobs is a big process to fork for every ``true``. This helper
is started once, while the daemon is still small, as a fresh interpreter that imports
nothing but the standard library (``python -I -S spawnd.py PARENT_PID FD``). It runs
no asyncio and opens no database: it owns one socket to the daemon and its children.

For each request it first creates the request's output file (empty, owner-only, never
an existing file), then starts the command with ``posix_spawn`` in a session of its own
(the command leads a new process group, so the daemon can signal the whole tree), stdin
from ``/dev/null``, stdout and stderr on two fresh pipes, every signal at its default
disposition and unblocked, and the environment the helper inherited from the daemon with
the request's variables laid over it. It answers with the pid, the start time and,
attached with ``SCM_RIGHTS``, the read ends of the two pipes; the daemon reads them in
its own event loop. Being the commands' parent, it reaps them and reports each exit
status. It never signals a command: cancel and timeout are the daemon's, sent to the
process group.

The helper dies with the daemon (``PR_SET_PDEATHSIG``), exits when the daemon closes the
socket, and ignores SIGINT and SIGTERM (a Ctrl-C meant for the daemon's terminal must not
take the exit statuses of running commands with it; the daemon decides when they stop).

The wire (both sides are this interpreter, so the format needs no versioning):
``SOCK_SEQPACKET``, one JSON object per message. A message from the daemon may be longer
than one record: every record but the last starts with :data:`MORE`, the last with
:data:`LAST`. Messages from the helper are one record each, without that byte.

- daemon → helper: ``{"op": "spawn", "id": N, "argv": [...], "env": {...}, "cwd": str|null,
  "output": str|null, "user": {...}|absent}`` (``env``: the variables laid over the
  helper's environment). ``user`` — ``{"uid", "gid", "groups", "name", "home",
  "shell"}`` — runs the command as that account (see :func:`Helper.spawn`); the helper
  refuses fields it does not know, so a request asking for a user switch can never run
  as the helper's own user by mistake.
- helper → daemon: ``{"op": "ready", "pid": P}`` once, first;
  ``{"op": "spawned", "id": N, "pid": P, "started": T|null}`` with the two pipe ends;
  ``{"op": "failed", "id": N, "errno": E, "error": "...", "filename": str|null}`` when the
  command could not be started (the daemon raises it as ``OSError``);
  ``{"op": "exited", "exits": [[pid, code], ...]}`` where ``code`` is an exit status, or
  minus the signal that killed the command.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

MORE = b"+"
LAST = b"."
RECORD = 32 * 1024  # bytes of a message per record (well under the socket's buffer)
RECV_SIZE = RECORD + 1
EXITS_PER_MESSAGE = 1000  # keeps a helper → daemon message within one record
SPAWN_FIELDS = frozenset({"op", "id", "argv", "env", "cwd", "output", "user"})
# What a command run as another account keeps of the helper's (the daemon's) environment:
# nothing that could carry the operator's secrets.
KEPT_FOR_OTHERS = ("LANG", "LANGUAGE", "TZ", "TERM")
STANDARD_PATH = "/usr/local/bin:/usr/bin:/bin"
# A command run as another account is started through this trampoline (argv: uid gid
# groups cwd keep-LC_CTYPE command...), run by this interpreter, isolated: every id is
# dropped (real, effective and saved), *then* the directory is entered, with the
# account's rights, then the command replaces the trampoline (same pid, same session).
# posix_spawn can neither switch ids nor enter a directory after switching, and entered
# by the helper, as root, a directory would let the user start where it may not go.
# Python's start-up may add LC_CTYPE to the environment (PEP 538); it is removed again
# unless the job's environment had it. Once switched, the account may not be able to
# read Python's own library, so nothing is imported after the switch (hence the PATH
# search by hand: os.execvp imports a module). Exit 126: the directory cannot be
# entered; 127: the command cannot be started.
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
program = argv[0]
if "/" not in program:
    for directory in os.environ.get("PATH", "/usr/bin:/bin").split(":"):
        candidate = (directory or ".") + "/" + program
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            program = candidate
            break
try:
    os.execv(program, argv)
except OSError as exc:
    sys.stderr.write(f"pyrexis: cannot start {argv[0]}: {exc.strerror}\\n")
    os._exit(127)
"""
PR_SET_PDEATHSIG = 1
TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")  # a clock tick of /proc/PID/stat
# Every signal a command could find ignored or handled here goes back to its default.
DEFAULT_SIGNALS = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}


def records(message: dict[str, Any]) -> list[bytes]:
    """``message`` as the records of one daemon → helper message."""
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) <= RECORD:
        return [LAST + data]
    out = [MORE + data[i : i + RECORD] for i in range(0, len(data), RECORD)]
    out[-1] = LAST + out[-1][1:]
    return out


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (as ``pyrexisd.procs``)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def find_program(name: str, env: dict[str, str]) -> str:
    """The file ``name`` runs: looked up in the command's own ``PATH`` (not the helper's),
    as ``subprocess`` does, when it holds no slash."""
    if "/" in name:
        return name
    for directory in env.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)


class Helper:
    """The helper's state: its socket to the daemon, the environment and the directory it
    started with."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.env = dict(os.environ)
        self.home = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.home_path = os.getcwd()  # relative directories of other accounts' commands
        self.moved = False  # the last command started elsewhere than home
        self.partial: list[bytes] = []

    def send(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        """One message to the daemon, with ``fds`` attached. Blocking: if the daemon falls
        behind reading, the helper waits for it rather than drop an answer."""
        data = json.dumps(message, separators=(",", ":")).encode()
        if fds:
            socket.send_fds(self.sock, [data], fds)
        else:
            self.sock.send(data)

    def serve(self) -> None:
        """Answer requests and report exits until the daemon closes the socket."""
        wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        # The handler does nothing: the wake-up byte is what the poll below waits for.
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        poller.register(wake_r, select.POLLIN)
        self.send({"op": "ready", "pid": os.getpid()})
        while True:
            try:
                poller.poll()
            except InterruptedError:
                continue
            while True:
                try:
                    if not os.read(wake_r, 4096):
                        break
                except BlockingIOError:
                    break
            if not self.read_requests():
                return
            self.reap()

    def read_requests(self) -> bool:
        """Handle every request waiting on the socket; False once the daemon is gone."""
        while True:
            try:
                record = self.sock.recv(RECV_SIZE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return True
            except ConnectionError:
                return False
            if not record:
                return False
            self.partial.append(record[1:])
            if record[:1] == MORE:
                continue
            data = b"".join(self.partial)
            self.partial = []
            self.handle(json.loads(data))

    def handle(self, request: dict[str, Any]) -> None:
        """Answer one request: the command started, or why it could not be."""
        ident = request.get("id")
        try:
            if request.get("op") != "spawn":
                raise OSError(errno.EINVAL, f"unknown request {request.get('op')!r}")
            unknown = set(request) - SPAWN_FIELDS
            if unknown:
                raise OSError(errno.EINVAL, f"unsupported spawn fields {sorted(unknown)}")
            pid, started, out_r, err_r = self.spawn(
                request["argv"], request["env"], request.get("cwd"), request.get("output"), request.get("user")
            )
        except (OSError, ValueError, TypeError) as exc:
            code = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EINVAL
            text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            filename = exc.filename if isinstance(exc, OSError) else None
            self.send({"op": "failed", "id": ident, "errno": code, "error": text,
                       "filename": None if filename is None else str(filename)})
            return
        try:
            self.send({"op": "spawned", "id": ident, "pid": pid, "started": started}, [out_r, err_r])
        finally:
            os.close(out_r)
            os.close(err_r)

    def spawn(
        self,
        argv: list[str],
        overlay: dict[str, str],
        cwd: str | None,
        output: str | None,
        user: dict[str, Any] | None = None,
    ) -> tuple[int, int | None, int, int]:
        """Start one command: its pid, start time, and the read ends of its stdout and
        stderr. With ``user``, as that account (:meth:`spawn_as`)."""
        if user is not None:
            return self.spawn_as(argv, overlay, cwd, output, user)
        # Single-threaded, so the helper may move itself: the command inherits the
        # directory (posix_spawn cannot set one), and relative paths resolve from there.
        # Entered afresh each time (the directory may have been replaced since), and a
        # relative one from where the daemon is, as subprocess would.
        if cwd is not None:
            if not os.path.isabs(cwd) and self.moved:
                os.fchdir(self.home)
                self.moved = False
            os.chdir(cwd)
            self.moved = True
        elif self.moved:
            os.fchdir(self.home)
            self.moved = False
        env = {**self.env, **overlay} if overlay else self.env
        if "/" in argv[0] or env.get("PATH") == self.env.get("PATH"):
            # posix_spawnp searches the helper's own PATH, the command's too here.
            program, spawn = argv[0], os.posix_spawnp
        else:
            program, spawn = find_program(argv[0], env), os.posix_spawn
        if output is not None:
            os.close(os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        try:
            return self._start(spawn, program, argv, env)
        except BaseException:
            if output is not None:
                os.unlink(output)
            raise

    def spawn_as(
        self, argv: list[str], overlay: dict[str, str], cwd: str | None, output: str | None, user: dict[str, Any]
    ) -> tuple[int, int | None, int, int]:
        """Start one command as another account: its uid, gid and groups; of the helper's
        environment only the locale, the time zone and a standard PATH, with the
        account's HOME, USER, LOGNAME and SHELL, then the request's variables; its
        directory (default: its home, or ``/``) entered after the switch; the output file
        made the account's."""
        uid, gid, groups = int(user["uid"]), int(user["gid"]), [int(g) for g in user["groups"]]
        name, home, shell = str(user["name"]), str(user["home"]), str(user["shell"])
        if uid < 0 or gid < 0:
            raise ValueError("a uid and a gid are >= 0")
        if cwd is None:
            cwd = home if os.path.isdir(home) else "/"
        elif not os.path.isabs(cwd):
            cwd = os.path.join(self.home_path, cwd)
        env = {k: v for k, v in self.env.items() if k in KEPT_FOR_OTHERS or k.startswith("LC_")}
        env.update(PATH=STANDARD_PATH, HOME=home, USER=name, LOGNAME=name, SHELL=shell)
        env.update(overlay)
        keep_ctype = "1" if "LC_CTYPE" in env else "0"
        trampoline = [
            sys.executable, "-I", "-S", "-c", SWITCH, str(uid), str(gid), ",".join(map(str, groups)), cwd,
            keep_ctype, *argv,
        ]  # fmt: skip
        if output is not None:
            fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.fchown(fd, uid, gid)  # the command writes it as its own user
            finally:
                os.close(fd)
        try:
            return self._start(os.posix_spawn, sys.executable, trampoline, env)
        except BaseException:
            if output is not None:
                os.unlink(output)
            raise

    def _start(
        self, spawn: Callable[..., int], program: str, argv: list[str], env: dict[str, str]
    ) -> tuple[int, int | None, int, int]:
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        try:
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
        except OSError:
            os.close(out_r)
            os.close(out_w)
            raise
        try:
            # The daemon's ends do not block (it reads them in its event loop); the
            # command's ends do, as programs expect of their stdout.
            os.set_blocking(out_r, False)
            os.set_blocking(err_r, False)
            before = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
            pid = spawn(
                program,
                argv,
                env,
                file_actions=[(os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2)],
                setsid=True,
                setsigdef=DEFAULT_SIGNALS,
                setsigmask=(),
            )
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        # The start time /proc shows is the boot-time clock at the fork, in ticks. When no
        # tick began while posix_spawn ran, it is known without reading /proc/PID/stat,
        # which waits for the command's exec to finish. (The command cannot be reaped, so
        # its pid reused, before the helper waits for it.)
        after = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        started = before // TICK_NS if before // TICK_NS == after // TICK_NS else start_time(pid)
        return pid, started, out_r, err_r

    def reap(self) -> None:
        """Collect the exit status of every command that ended, in one message."""
        exits: list[list[int]] = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            exits.append([pid, os.waitstatus_to_exitcode(status)])
        for i in range(0, len(exits), EXITS_PER_MESSAGE):
            self.send({"op": "exited", "exits": exits[i : i + EXITS_PER_MESSAGE]})


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when the daemon dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes  # only here: the helper pays for it once, at start

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def main(argv: list[str]) -> int:
    """``spawnd.py PARENT_PID FD``: serve the daemon ``PARENT_PID`` on the socket ``FD``."""
    parent, fd = int(argv[1]), int(argv[2])
    die_with_parent()
    if os.getppid() != parent:
        return 0  # the daemon died before the line above could take effect
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    # Commands inherit stdin: make sure it is /dev/null whatever the helper was given.
    null = os.open(os.devnull, os.O_RDONLY)
    if null != 0:
        os.dup2(null, 0)
        os.close(null)
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)
    Helper(sock).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
