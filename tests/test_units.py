"""The shipped systemd units: `systemd-analyze verify` has nothing to say about any of
them, and the system unit's exposure score (`systemd-analyze security --offline=true`)
is at most 2.5. Skipped, with the reason, where systemd-analyze is missing or too old to
analyse a unit file offline."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

UNITS = ROOT / "systemd"
ANALYZE = shutil.which("systemd-analyze")
SCORE = re.compile(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)")

needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def _offline_security_supported() -> bool:
    assert ANALYZE is not None
    out = subprocess.run([ANALYZE, "security", "--help"], capture_output=True, text=True, timeout=30)
    return "--offline" in out.stdout


def _installed(unit: Path, into: Path, name: str | None = None) -> Path:
    """A copy of ``unit`` whose ExecStart runs this checkout's pyrexisd (verify checks
    that the program exists; /usr/local/bin/pyrexisd does not on a test machine)."""
    here = shutil.which("pyrexisd", path=os.path.dirname(sys.executable)) or sys.executable
    text = unit.read_text().replace("/usr/local/bin/pyrexisd", here).replace("%h/.local/bin/pyrexisd", here)
    target = into / (name or unit.name)
    target.write_text(text)
    return target


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=60, env=env)


@needs_analyze
def test_verify_prints_nothing_for_the_system_units(tmp_path: Path) -> None:
    for service in ("pyrexisd.service", "pyrexisd-root.service"):
        where = tmp_path / service
        where.mkdir()
        # The root variant is installed under the name pyrexisd.service (its socket's).
        unit = _installed(UNITS / service, where, "pyrexisd.service")
        sock = _installed(UNITS / "pyrexisd.socket", where)
        out = _run(["verify", str(unit), str(sock)])
        assert out.returncode == 0 and out.stdout == "" and out.stderr == "", (service, out)


@needs_analyze
def test_verify_prints_nothing_for_the_user_units(tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    unit = _installed(UNITS / "user" / "pyrexisd.service", tmp_path)
    sock = _installed(UNITS / "user" / "pyrexisd.socket", tmp_path)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    out = _run(["--user", "verify", str(unit), str(sock)], env)
    if "Failed to initialize manager" in out.stderr:
        pytest.skip(f"no user manager can be simulated here: {out.stderr.strip()}")
    assert out.returncode == 0 and out.stdout == "" and out.stderr == "", out


def _score(unit: Path) -> float:
    out = _run(["security", "--offline=true", str(unit)])
    match = SCORE.search(out.stdout + out.stderr)
    assert match, out
    return float(match.group(1))


@needs_analyze
def test_the_system_unit_scores_at_most_2_5_and_the_root_variant_stays_ok(tmp_path: Path) -> None:
    if not _offline_security_supported():
        pytest.skip("this systemd-analyze cannot analyse a unit file offline (--offline needs systemd 250+)")
    assert _score(_installed(UNITS / "pyrexisd.service", tmp_path)) <= 2.5
    root = tmp_path / "root"
    root.mkdir()
    # The root daemon needs a few capabilities and the users' files: "OK" (below 5), not "SAFE".
    assert _score(_installed(UNITS / "pyrexisd-root.service", root, "pyrexisd.service")) < 5.0


def test_each_relaxation_of_the_root_variant_names_the_feature_that_needs_it() -> None:
    """The root unit keeps exactly the capabilities running a job as its submitter needs,
    and says why for each."""
    text = (UNITS / "pyrexisd-root.service").read_text()
    (caps,) = re.findall(r"^CapabilityBoundingSet=(.*)$", text, re.M)
    assert set(caps.split()) == {"CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_DAC_READ_SEARCH", "CAP_KILL"}
    for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_DAC_READ_SEARCH", "CAP_KILL"):
        assert f"({cap}" in text or f"{cap})" in text or f"({cap})" in text, cap
    system = (UNITS / "pyrexisd.service").read_text()
    assert re.search(r"^CapabilityBoundingSet=$", system, re.M)
    assert re.search(r"^RestrictAddressFamilies=AF_UNIX$", system, re.M)


MDWE_WRAPPER = (
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN\n"
    "    sys.exit(77)\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'pyrexisd', *sys.argv[1:]])\n"
)
MDWE_PROBE = (
    "python3 -c 'import ctypes; print(\"mdwe\", ctypes.CDLL(None).prctl(66, 0, 0, 0, 0))'"  # PR_GET_MDWE
)


def test_the_daemon_runs_every_mode_with_memory_that_is_never_writable_and_executable(tmp_path: Path) -> None:
    """MemoryDenyWriteExecute=yes in the unit is right for the daemon: started under the
    kernel's own refusal of writable-and-executable memory (PR_SET_MDWE, inherited by
    every child), it serves thread, process, async and shell jobs on its default loop."""
    from conftest import RawClient, wait_until

    sock, db = str(tmp_path / "s.sock"), str(tmp_path / "d.db")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    log = open(tmp_path / "log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-c", MDWE_WRAPPER, "--socket", sock, "--db", db, "--tasks", "sample_tasks"],
        stdout=log, stderr=log, env=env,
    )
    try:
        wait_until(lambda: proc.poll() is not None or os.path.exists(sock), 30, 0.05, "the daemon's socket")
        if proc.poll() == 77:
            pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
        assert proc.poll() is None, (tmp_path / "log").read_text()
        with RawClient(sock) as c:
            wait_until(lambda: c.request("hello", {"protocol": 1}), 30, 0.05, "hello")
            for task, args, mode in (("echo", {"value": 1}, "thread"), ("echo", {"value": 2}, "process"),
                                     ("echo", {"value": 3}, "async"), ("shell", {"cmd": MDWE_PROBE}, "shell")):
                job = c.submit(task, args, mode=mode)
                done = c.wait(job["job_id"], timeout=60)
                assert done["status"] == "completed", done
            events, _ = c.stream("logs", {"job_id": job["job_id"]})
            assert any(e.get("line") == "mdwe 1" for e in events), events
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run a daemon with a reduced capability set")
def test_a_root_daemon_with_only_the_root_units_capabilities_runs_and_stops_a_users_shell_jobs(
    workdir: str,
) -> None:
    """Given a root daemon whose capabilities are exactly the root unit's
    CapabilityBoundingSet, when nobody submits shell jobs, then they run as nobody, a job
    reads its inputs and writes its output (given to nobody, read back by the daemon),
    and nobody's running job is killed by a cancel: the set is enough."""
    import pwd

    from conftest import Daemon, wait_until
    from test_security import as_nobody

    text = (UNITS / "pyrexisd-root.service").read_text()
    (caps,) = re.findall(r"^CapabilityBoundingSet=(.*)$", text, re.M)
    keep = ",".join("+" + c.removeprefix("CAP_").lower() for c in caps.split())
    setpriv = shutil.which("setpriv")
    assert setpriv is not None

    class Confined(Daemon):
        def command(self) -> list[str]:
            return [setpriv, f"--bounding-set=-all,{keep}", "--inh-caps=-all", "--", *super().command()]

    os.chmod(workdir, 0o711)
    d = Confined(workdir, ("--kill-grace", "1", "--allow-user", "nobody"), socket=os.path.join(workdir, "run", "s.sock"))
    d.start()
    try:
        status = Path(f"/proc/{d.pid}/status").read_text()
        (bounding,) = re.findall(r"^CapBnd:\s*([0-9a-f]+)$", status, re.M)
        assert bin(int(bounding, 16)).count("1") == len(caps.split()), status
        nobody = pwd.getpwnam("nobody")

        def as_user() -> tuple[str, str, str]:
            with RawClient(d.socket, timeout=30) as c:
                a = c.submit("echo", {"value": {"n": 41}}, job_id="caps-a")
                c.wait(a["job_id"], 30)
                b = c.submit("shell", {"cmd": "id -u; python3 -c \"import json,os; n=json.load(open(os.environ['PYREXIS_INPUTS']))"
                                              "['caps-a']['n']; json.dump(n + 1, open(os.environ['PYREXIS_OUTPUT'], 'w'))\""},
                             depends_on=["caps-a"])
                slow = c.submit("shell", {"cmd": f"exec sleep {MARK}"})
                return str(b["job_id"]), str(slow["job_id"]), str(a["job_id"])

        from conftest import RawClient

        b_id, slow_id, _ = as_nobody(as_user)
        with d.client() as c:
            done = c.wait(b_id, 60)
            assert done["status"] == "completed" and done["result"] == {"exit_code": 0, "output": 42}, done
            events, _ = c.stream("logs", {"job_id": b_id})
            assert [e["line"] for e in events if e.get("stream") == "stdout"] == [str(nobody.pw_uid)]
            pid = wait_until(lambda: _sleeper(nobody.pw_uid), 30, 0.05, "nobody's sleep to run")
            assert c.request("cancel", {"job_id": slow_id})["status"] == "cancelled"
            wait_until(lambda: _sleeper(nobody.pw_uid) is None, 30, 0.05, f"nobody's process {pid} to be killed")
    finally:
        d.kill9()


MARK = "60.4242"


def _sleeper(uid: int) -> int | None:
    """The pid of the test's ``sleep MARK`` running as ``uid`` (not a zombie), or None."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        if cmdline[:2] == [b"sleep", MARK.encode()] and f"Uid:\t{uid}\t" in status and "State:\tZ" not in status:
            return int(entry)
    return None
