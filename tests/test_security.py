"""Who may use the daemon, and as whom: a real daemon, real peers of other uids.

The other peer is this test process forked and switched to ``nobody`` (setgroups,
setgid, setuid), which needs root: without it these tests are skipped (CI runs as root).
Its socket lives in a directory of its own under the test's directory, which the test
opens to others (0711) so that ``nobody`` can traverse to it; the daemon creates the
socket's own directory with the modes its policy needs.
"""

from __future__ import annotations

import os
import pickle
import pwd
import select
import socket
import stat
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import Daemon, RawClient, expect_error, wait_until
from e2e_helpers import job_logs, wait_terminal

from protocol.errors import WireError, error_from_wire

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root (CI runs as root)")

NOBODY = pwd.getpwnam("nobody") if os.geteuid() == 0 else None


def as_nobody(fn: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Run ``fn`` in a child process switched to ``nobody``; its result, or the error it
    raised (a protocol error comes back as the same WireError)."""
    assert NOBODY is not None
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY.pw_gid)
            os.setuid(NOBODY.pw_uid)
            outcome: tuple[str, Any] = ("ok", fn())
        except WireError as exc:
            outcome = ("wire", exc.to_wire())
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            outcome = ("error", f"{type(exc).__name__}: {exc}")
        try:
            data = pickle.dumps(outcome)
            with os.fdopen(write_end, "wb") as fh:
                fh.write(data)
        finally:
            os._exit(0)
    os.close(write_end)
    chunks = []
    deadline = time.monotonic() + timeout
    with os.fdopen(read_end, "rb") as fh:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fh], [], [], left)[0]:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                raise AssertionError(f"the peer running as nobody did not finish within {timeout} s")
            chunk = os.read(fh.fileno(), 65536)
            if not chunk:
                break
            chunks.append(chunk)
    os.waitpid(pid, 0)
    kind, value = pickle.loads(b"".join(chunks))
    if kind == "wire":
        raise error_from_wire(value)
    if kind == "error":
        raise AssertionError(f"the peer running as nobody failed: {value}")
    return value


@pytest.fixture
def open_dir(workdir: str) -> Iterator[str]:
    """The test's directory, traversable by others (the daemon makes the socket's own)."""
    os.chmod(workdir, 0o711)
    yield workdir


def socket_in(open_dir: str) -> str:
    return os.path.join(open_dir, "run", "s.sock")


def start(start_daemon: Callable[..., Daemon], open_dir: str, *args: str) -> Daemon:
    return start_daemon("--kill-grace", "2", *args, socket=socket_in(open_dir))


def test_a_users_pipeline_runs_only_open_tasks_on_its_own_files(start_daemon: Callable[..., Daemon], open_dir: str) -> None:
    """Given a daemon that allows nobody, then nobody's pipeline may use only the tasks
    open to users, read only its own files and write only into its own directory; a
    pipeline that keeps to that runs, and its output file is nobody's."""
    assert NOBODY is not None
    d = start(start_daemon, open_dir, "--allow-user", "nobody", "--tasks", "pipeline_tasks")
    roots_file = os.path.join(open_dir, "root.jsonl")
    with open(roots_file, "w") as fh:
        fh.write("1\n")
    os.chmod(roots_file, 0o644)
    mine = os.path.join(open_dir, "nobodys")
    os.mkdir(mine)
    os.chown(mine, NOBODY.pw_uid, NOBODY.pw_gid)
    echo = [{"task": "echo", "item": "value"}]

    def as_user() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with RawClient(d.socket, timeout=10) as c:
            for name, spec in (
                ("closed task", {"input": {"items": [1]}, "stages": [{"task": "double"}]}),
                ("roots input", {"input": {"path": roots_file}, "stages": echo}),
                ("roots dir", {"input": {"items": [1]}, "stages": echo, "output": os.path.join(open_dir, "o.jsonl")}),
            ):
                try:
                    c.submit("pipeline", spec)
                    out[name] = "accepted"
                except WireError as exc:
                    out[name] = (exc.code, [e["loc"] for e in (exc.details or {}).get("errors", [])])
            with open(os.path.join(mine, "in.jsonl"), "w") as fh:
                fh.write('"a"\n"b"\n')
            job = c.submit("pipeline", {"input": {"path": os.path.join(mine, "in.jsonl")}, "stages": echo,
                                        "output": os.path.join(mine, "out.jsonl")})  # fmt: skip
            out["done"] = c.wait(job["job_id"], timeout=30)
        return out

    seen = as_nobody(as_user)
    assert seen["closed task"] == ("unauthorized", [])
    assert seen["roots input"] == ("invalid_request", [["args", "input", "path"]])
    assert seen["roots dir"] == ("invalid_request", [["args", "output"]])
    assert seen["done"]["status"] == "completed", seen["done"]
    out = os.path.join(mine, "out.jsonl")
    assert os.stat(out).st_uid == NOBODY.pw_uid
    with open(out) as fh:
        assert fh.read().splitlines() == ['"a"', '"b"']


# --------------------------------------------------------------------- who may connect


def test_by_default_the_socket_is_owner_only_and_another_uid_cannot_even_reach_it(
    start_daemon: Callable[..., Daemon], open_dir: str
) -> None:
    """Given a daemon with the defaults, then its socket is 0600 in a directory it made
    0700, and a peer of another uid cannot connect (the file modes stop it first)."""
    d = start(start_daemon, open_dir)
    assert stat.S_IMODE(os.stat(d.socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(d.socket)).st_mode) == 0o700

    def connect() -> str:
        try:
            RawClient(d.socket, timeout=5).close()
        except PermissionError:
            return "refused by the file system"
        return "connected"

    assert as_nobody(connect) == "refused by the file system"


def test_a_peer_the_policy_does_not_admit_gets_one_unauthorized_frame_and_the_connection_ends(
    start_daemon: Callable[..., Daemon], open_dir: str
) -> None:
    """Given a daemon that lets one other uid in (so its socket is 0666 in a 0711
    directory), when nobody — not that uid — connects and sends a request, then it gets
    exactly one frame, unauthorized with a nil id, and the daemon closes the connection;
    the refusal is logged with nobody's uid and pid, never the payload."""
    d = start(start_daemon, open_dir, "--allow-user", "4321")
    assert stat.S_IMODE(os.stat(d.socket).st_mode) == 0o666
    assert stat.S_IMODE(os.stat(os.path.dirname(d.socket)).st_mode) == 0o711

    def knock() -> tuple[int, list[dict[str, Any]]]:
        with RawClient(d.socket, timeout=10) as c:
            try:
                c.send({"id": 1, "op": "submit", "args": {"task": "echo", "args": {"value": "s3cr3t-payload"}}})
            except OSError:
                pass  # the daemon may have hung up already
            frames = []
            try:
                while True:
                    frames.append(c.recv())
            except (ConnectionError, OSError):
                pass
            return os.getpid(), frames

    pid, frames = as_nobody(knock)
    assert len(frames) == 1, frames
    assert frames[0]["id"] is None and frames[0]["ok"] is False
    assert frames[0]["error"]["code"] == "unauthorized"
    log = wait_until(lambda: "refused a connection" in d.log() and d.log(), what="the refusal in the log")
    assert f"uid {NOBODY.pw_uid} (pid {pid})" in log if NOBODY else False
    assert "s3cr3t-payload" not in log
    with d.client() as c:  # the owner is served as ever
        assert c.request("hello", {"protocol": 1})["protocol"] == 1


def test_a_group_allowed_in_gets_a_group_socket_and_its_members_are_served(
    start_daemon: Callable[..., Daemon], open_dir: str
) -> None:
    """Given --allow-group nogroup, then the socket is 0660 and its directory 0750, both
    of that group, and nobody (a member) is served."""
    assert NOBODY is not None
    d = start(start_daemon, open_dir, "--allow-group", "nogroup")
    for path, mode in ((d.socket, 0o660), (os.path.dirname(d.socket), 0o750)):
        st = os.stat(path)
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (mode, NOBODY.pw_gid), path

    def hello() -> int:
        with RawClient(d.socket, timeout=10) as c:
            return int(c.request("hello", {"protocol": 1})["protocol"])

    assert as_nobody(hello) == 1


def test_a_socket_directory_that_others_can_write_is_refused(start_daemon: Callable[..., Daemon], open_dir: str) -> None:
    """Given a socket path whose directory is world-writable (like /tmp itself) or a
    symlink, then the daemon refuses to start, saying why."""
    shared = os.path.join(open_dir, "shared")
    os.mkdir(shared)
    os.chmod(shared, 0o1777)
    d = start_daemon("--socket", os.path.join(shared, "s.sock"), wait=False)
    assert d.proc is not None and d.proc.wait(30) == 1
    assert "writable by others" in d.log()
    real = os.path.join(open_dir, "real")
    os.mkdir(real, 0o700)
    link = os.path.join(open_dir, "link")
    os.symlink(real, link)
    d = start_daemon("--socket", os.path.join(link, "s.sock"), wait=False, subdir="second")
    assert d.proc is not None and d.proc.wait(30) == 1
    assert "not a directory the daemon can use" in d.log()
    assert os.listdir(real) == []


# ----------------------------------------------------------------- whose jobs are whose


def test_an_allowed_user_sees_and_controls_only_its_own_jobs(start_daemon: Callable[..., Daemon], open_dir: str) -> None:
    """Given a daemon that allows nobody, and a waiting job of root's, then nobody's own
    job carries its uid; nobody lists only its own job, and root's job is not_found to it
    for get, cancel and wait; all_users and queue settings are refused to it; its stats
    count its own job only; and root lists everybody's jobs with all_users."""
    assert NOBODY is not None
    d = start(start_daemon, open_dir, "--allow-user", "nobody")
    with d.client() as c:
        roots = c.submit("echo", {"value": 1}, delay=600)
    assert roots["owner"] == 0

    def as_user() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with RawClient(d.socket, timeout=10) as c:
            mine = c.submit("echo", {"value": 2}, delay=600)
            out["mine"] = mine
            out["listed"] = [j["job_id"] for j in c.request("list")["jobs"]]
            for op in ("get", "cancel", "hold", "wait"):
                try:
                    c.request(op, {"job_id": roots["job_id"], **({"timeout": 0.1} if op == "wait" else {})})
                    out[op] = "answered"
                except WireError as exc:
                    out[op] = (exc.code, exc.details)
            for op, args in (("list", {"all_users": True}), ("pause", {}), ("configure_queue", {"queue": "q", "weight": 2})):
                try:
                    c.request(op, args)
                    out[op] = "answered"
                except WireError as exc:
                    out[op] = exc.code
            out["stats"] = c.request("stats")["by_status"]
            out["tasks"] = sorted(t["name"] for t in c.request("tasks")["tasks"])
        return out

    seen = as_nobody(as_user)
    assert seen["mine"]["owner"] == NOBODY.pw_uid
    assert seen["listed"] == [seen["mine"]["job_id"]]
    for op in ("get", "cancel", "hold", "wait"):
        assert seen[op] == ("not_found", {"job_id": roots["job_id"]}), op
    assert (seen["list"], seen["pause"], seen["configure_queue"]) == ("unauthorized",) * 3
    assert seen["stats"] == {"scheduled": 1}
    # pipeline is open to all: what its stages run is checked against the open tasks.
    assert seen["tasks"] == ["echo", "pipeline", "shell", "sleep"]
    with d.client() as c:
        assert [j["job_id"] for j in c.request("list")["jobs"]] == [roots["job_id"]]
        everyone = c.request("list", {"all_users": True})["jobs"]
        assert {(j["job_id"], j["owner"]) for j in everyone} == {
            (roots["job_id"], 0), (seen["mine"]["job_id"], NOBODY.pw_uid),
        }  # fmt: skip
        assert c.get(seen["mine"]["job_id"])["owner"] == NOBODY.pw_uid  # admins see everything


def test_an_allowed_user_is_held_to_its_quota_and_to_the_tasks_opened_to_users(
    start_daemon: Callable[..., Daemon], open_dir: str
) -> None:
    """Given --max-waiting-per-user 2 and --user-tasks echo, then nobody's third waiting
    job is overloaded naming the limit and its value, a sleep job is unauthorized, and
    root (whose own quota is untouched) still submits."""
    d = start(start_daemon, open_dir, "--allow-user", "nobody", "--max-waiting-per-user", "2", "--user-tasks", "echo")

    def as_user() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with RawClient(d.socket, timeout=10) as c:
            out["accepted"] = [c.submit("echo", delay=600)["status"] for _ in range(2)]
            for name, task, args in (("third", "echo", {"value": 1}), ("sleep", "sleep", {"seconds": 1})):
                try:
                    c.submit(task, args, delay=600)
                    out[name] = "accepted"
                except WireError as exc:
                    out[name] = (exc.code, exc.details)
        return out

    seen = as_nobody(as_user)
    assert seen["accepted"] == ["scheduled", "scheduled"]
    code, details = seen["third"]
    assert code == "overloaded" and (details["limit"], details["value"]) == ("max_waiting_per_user", 2)
    assert details["retry_after"] > 0
    assert seen["sleep"] == ("unauthorized", {"task": "sleep"})
    with d.client() as c:
        assert c.submit("sleep", {"seconds": 0}, delay=600)["status"] == "scheduled"


def test_a_root_daemon_runs_a_users_shell_job_as_that_user(start_daemon: Callable[..., Daemon], open_dir: str) -> None:
    """Given a root daemon that allows nobody, when nobody submits a shell job, then the
    command runs with nobody's uid, gid and groups, its HOME and USER, none of the
    daemon's environment, and starts in "/" (its home does not exist); a cwd nobody may
    not enter (/root) fails the attempt; root's own job runs as root."""
    assert NOBODY is not None
    d = start_daemon(
        "--kill-grace", "2", "--allow-user", "nobody", socket=socket_in(open_dir), env={"DAEMON_SECRET": "hunter2"}
    )
    script = 'id -u; id -g; id -G; echo "home=$HOME user=$USER"; pwd; echo "secret=${DAEMON_SECRET:-none}"'

    def as_user() -> tuple[str, str]:
        with RawClient(d.socket, timeout=30) as c:
            job = c.submit("shell", {"cmd": script})
            walled = c.submit("shell", {"cmd": "ls", "cwd": "/root"})
            return job["job_id"], walled["job_id"]

    job_id, walled_id = as_nobody(as_user)
    with d.client() as c:
        assert wait_terminal(c, job_id, 30)["status"] == "completed"
        lines = [e["line"] for e in job_logs(c, job_id) if e["stream"] == "stdout"]
        assert lines == [
            str(NOBODY.pw_uid), str(NOBODY.pw_gid), str(NOBODY.pw_gid),
            f"home={NOBODY.pw_dir} user=nobody", "/", "secret=none",
        ]  # fmt: skip
        walled = wait_terminal(c, walled_id, 30)
        assert walled["status"] == "failed" and walled["error"]["type"] == "exit_code"
        assert "126" in walled["error"]["message"]
        mine = c.submit("shell", {"cmd": "id -u"})
        assert wait_terminal(c, mine["job_id"], 30)["status"] == "completed"
        assert [e["line"] for e in job_logs(c, mine["job_id"]) if e["stream"] == "stdout"] == ["0"]


def test_a_users_shell_job_writes_its_output_and_reads_its_inputs(start_daemon: Callable[..., Daemon], open_dir: str) -> None:
    """Given nobody's job B depending on its job A, then B, running as nobody, reads A's
    result from $PYREXIS_INPUTS and writes its own through $PYREXIS_OUTPUT."""
    d = start(start_daemon, open_dir, "--allow-user", "nobody")

    def as_user() -> str:
        with RawClient(d.socket, timeout=30) as c:
            a = c.submit("echo", {"value": {"n": 41}}, job_id="users-a")
            c.wait(a["job_id"], 30)
            b = c.submit(
                "shell",
                {"cmd": 'python3 -c "import json,os; n=json.load(open(os.environ[\'PYREXIS_INPUTS\']))[\'users-a\'][\'n\']; '
                 'json.dump(n + 1, open(os.environ[\'PYREXIS_OUTPUT\'], \'w\'))"'},
                depends_on=["users-a"],
            )
            return str(b["job_id"])

    b_id = as_nobody(as_user)
    with d.client() as c:
        done = wait_terminal(c, b_id, 30)
        assert done["status"] == "completed", done
        assert done["result"] == {"exit_code": 0, "output": 42}


def test_a_refused_peer_does_not_disturb_the_others(start_daemon: Callable[..., Daemon], open_dir: str) -> None:
    """Given a daemon serving root, when 50 refused peers knock at once, then root's jobs
    keep completing and the daemon lives."""
    d = start(start_daemon, open_dir, "--allow-user", "4321")

    def knock_many() -> int:
        refused = 0
        socks = []
        for _ in range(50):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(d.socket)
            socks.append(s)
        for s in socks:
            data = s.recv(65536)
            refused += b"unauthorized" in data
            s.close()
        return refused

    assert as_nobody(knock_many) == 50
    with d.client() as c:
        job = c.submit("echo", {"value": "still here"})
        assert c.wait(job["job_id"])["result"] == "still here"
    expect_error("not_found", lambda: RawClient(d.socket).get("nope"))


def test_the_cli_lists_your_own_jobs_with_their_owner_and_all_users_for_admins(
    start_daemon: Callable[..., Daemon], open_dir: str
) -> None:
    """Given jobs of root and of nobody, then ``pyrexisctl list`` shows each user its own
    jobs with an OWNER column, ``list --all-users`` shows root everybody's and is refused
    to nobody (exit 1, unauthorized), and ``status`` names the owner."""
    from click.testing import CliRunner

    from pyrexisctl.cli import main

    d = start(start_daemon, open_dir, "--allow-user", "nobody")

    def cli(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(main, ["--socket", d.socket, *args], env={"COLUMNS": "200"})
        return result.exit_code, result.output

    with d.client() as c:
        roots = c.submit("echo", {"value": 1}, delay=600)["job_id"]

    def as_user() -> dict[str, Any]:
        with RawClient(d.socket, timeout=10) as c:
            mine = c.submit("echo", {"value": 2}, delay=600)["job_id"]
        return {"mine": mine, "list": cli("list"), "all": cli("list", "--all-users"), "status": cli("status", mine)}

    seen = as_nobody(as_user)
    code, out = seen["list"]
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[-1] == "OWNER", out
    assert [ln.split()[0] for ln in lines[1:]] == [seen["mine"]] and lines[1].split()[-1] == "nobody"
    code, out = seen["all"]
    assert code == 1 and "unauthorized" in out.lower(), out
    code, out = seen["status"]
    assert code == 0 and any(ln.split() == ["owner", "nobody"] for ln in out.splitlines()), out
    code, out = cli("list", "--all-users")
    owners = {ln.split()[0]: ln.split()[-1] for ln in out.splitlines()[1:]}
    assert code == 0 and owners == {roots: "root", seen["mine"]: "nobody"}, out
    code, out = cli("list")
    assert [ln.split()[0] for ln in out.splitlines()[1:]] == [roots]
