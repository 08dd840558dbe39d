"""systemd integration, with this test playing systemd: socket activation, readiness
notification and watchdog pings, over real sockets and a real daemon."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, RawClient


def test_daemon_serves_the_socket_systemd_passes_and_notifies_ready_and_watchdog(workdir: str) -> None:
    """Given a listening socket on fd 3 with LISTEN_FDS/LISTEN_PID, a NOTIFY_SOCKET and a
    WATCHDOG_USEC, when the daemon starts, then it serves that socket (creating no file at
    its --socket path), says READY=1, pings WATCHDOG=1, says STOPPING=1 on SIGTERM, exits
    0 and leaves systemd's socket file alone."""
    path = os.path.join(workdir, "activated.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    notify_path = os.path.join(workdir, "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(10)
    unused = os.path.join(workdir, "unused.sock")

    def put_listener_on_fd3() -> None:
        os.dup2(listener.fileno(), 3)
        os.set_inheritable(3, True)

    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(ROOT),
        LISTEN_FDS="1",
        NOTIFY_SOCKET=notify_path,
        WATCHDOG_USEC="200000",
    )
    # LISTEN_PID must be the daemon's own pid: let a shell set it, then exec the daemon.
    cmd = (
        f'LISTEN_PID=$$ exec "{sys.executable}" -m pyrexisd --socket {unused} '
        f'--db {os.path.join(workdir, "d.db")}'
    )
    log = open(os.path.join(workdir, "log"), "wb")
    proc = subprocess.Popen(["/bin/sh", "-c", cmd], env=env, preexec_fn=put_listener_on_fd3, pass_fds=(3,), stdout=log, stderr=log)
    try:
        messages: list[str] = []

        def got(text: str) -> bool:
            while not any(text in m for m in messages):
                messages.append(notify.recv(4096).decode())
            return True

        assert got("READY=1")
        with RawClient(path) as c:
            job = c.submit("echo", {"value": "activated"})
            assert c.wait(job["job_id"])["result"] == "activated"
        assert not os.path.exists(unused)
        assert got("WATCHDOG=1")
        proc.send_signal(signal.SIGTERM)
        assert got("STOPPING=1")
        assert proc.wait(30) == 0
        assert os.path.exists(path), "the activated socket belongs to systemd"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        listener.close()
        notify.close()


def test_unit_files_name_the_contract_paths() -> None:
    """The shipped units use the contract's root paths and notify-type readiness."""
    service = (Path(ROOT) / "systemd" / "pyrexisd.service").read_text()
    sock = (Path(ROOT) / "systemd" / "pyrexisd.socket").read_text()
    assert "Type=notify" in service and "WatchdogSec=" in service
    assert "/run/pyrexis/pyrexisd.sock" in service and "/var/lib/pyrexis/pyrexis.db" in service
    assert "ListenStream=/run/pyrexis/pyrexisd.sock" in sock and "SocketMode=0600" in sock
