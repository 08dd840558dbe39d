"""Extra test tasks for test_modes.py, loaded with ``--tasks sample_tasks --tasks mode_tasks``."""

from __future__ import annotations

from pyrexisd import task


@task(name="modes.unencodable", modes=["thread", "process"], mode="thread")
def unencodable() -> object:
    """Return a value msgpack cannot encode, in thread or process mode."""
    return {"fine": 1, "bad": object()}


@task(name="modes.big", modes=["thread", "process"], mode="process")
def big(size: int) -> str:
    """A string result of ``size`` bytes (process mode by default)."""
    return "y" * size


@task(name="modes.spawner", modes=["process"], mode="process")
def spawner(marker: str) -> int:
    """Start a long-lived child process, write its pid to ``marker``, then wait for it."""
    import subprocess

    child = subprocess.Popen(["sleep", "300"])
    with open(marker, "w") as fh:
        fh.write(str(child.pid))
    return child.wait()


@task(name="modes.switch_interval", modes=["thread"], mode="thread")
def switch_interval(compute: float = 0.0) -> float:
    """Compute in Python for ``compute`` seconds (holding the GIL as CPU-bound code
    does), then return the interpreter's GIL switch interval as this thread sees it."""
    import sys
    import time

    end = time.monotonic() + compute
    while time.monotonic() < end:
        sum(range(200))
    return sys.getswitchinterval()
