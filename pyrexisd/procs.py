"""Identifying processes across daemon restarts, so a recycled pid is never killed.

A pid alone is not an identity: after a crash the kernel may have given it to another
process. A pid together with its start time (field 22 of ``/proc/PID/stat``, in clock
ticks since boot) is.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Mapping

PR_SET_PDEATHSIG = 1


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def kill_orphaned_group(pgid: int) -> bool:
    """SIGKILL what is left of process group ``pgid`` once its leader is gone.

    A group id cannot be reused while any member lives, so the members found are the
    leader's own descendants. True if any were signalled.
    """
    if pgid <= 1 or start_time(pgid) is not None:
        return False  # the leader (or a process reusing its pid) is alive: not orphaned
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def kill_if_same(pid: int, started: int, group: bool) -> bool:
    """SIGKILL ``pid`` (its whole process group if ``group``) if it is still the process
    that started at ``started``. True if something was killed."""
    if pid <= 1 or start_time(pid) != started:
        if not group:
            return False
        # The group leader is gone, but its group may live on (a background child).
        # A process group id cannot be reused while any member lives, so the group is
        # still ours if any process in it remains and the leader's pid is not a new
        # leader's: a new process with that pid would have that start time.
        if start_time(pid) is not None:
            return False
    try:
        if group:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def session_leaders_with_env(entries: Mapping[str, str]) -> list[int]:
    """Processes leading a session of their own whose environment holds every one of
    ``entries``: how a command is found whose pid was never reported (whoever started it
    died in between). Only the session leader matches, not the descendants that
    inherited its environment; killing its process group reaches them."""
    wanted = [f"{name}={value}".encode() for name, value in entries.items()]
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            if os.getsid(pid) != pid:
                continue
            with open(f"/proc/{pid}/environ", "rb") as fh:
                environ = fh.read().split(b"\0")
        except OSError:
            continue
        if all(item in environ for item in wanted):
            found.append(pid)
    return found
