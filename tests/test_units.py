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

pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


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


def test_verify_prints_nothing_for_the_system_units(tmp_path: Path) -> None:
    for service in ("pyrexisd.service", "pyrexisd-root.service"):
        where = tmp_path / service
        where.mkdir()
        # The root variant is installed under the name pyrexisd.service (its socket's).
        unit = _installed(UNITS / service, where, "pyrexisd.service")
        sock = _installed(UNITS / "pyrexisd.socket", where)
        out = _run(["verify", str(unit), str(sock)])
        assert out.returncode == 0 and out.stdout == "" and out.stderr == "", (service, out)


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
