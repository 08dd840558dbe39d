"""Tasks that misbehave towards the process pool's channel (test_process_pool.py).

Loaded with ``--tasks sample_tasks --tasks pool_tasks``. They reach the worker's socket to
the daemon through the worker module, as a buggy or hostile task could.
"""

from __future__ import annotations

import os
import signal
import struct
import time

from pyrexisd import task
from pyrexisd.executors import worker


def _mark(marker: str) -> None:
    with open(marker + ".tmp", "w") as fh:
        fh.write(str(os.getpid()))
    os.rename(marker + ".tmp", marker)  # read whole or not at all


def _channel_send(data: bytes) -> None:
    channel = worker._channel
    assert channel is not None, "not in a process worker"
    channel.sendall(data)


@task(name="pool.half_frame", modes=["process"], mode="process")
def half_frame(marker: str) -> None:
    """Write the start of a frame announcing 1,000 bytes, then die (SIGKILL) mid-frame."""
    _mark(marker)
    _channel_send(struct.pack(">I", 1000) + b"\x93\xa2ok" + b"x" * 10)
    os.kill(os.getpid(), signal.SIGKILL)


@task(name="pool.garbage", modes=["process"], mode="process")
def garbage(marker: str, how: str) -> str:
    """Write a frame that no worker of ours sends, then wait (the daemon kills it)."""
    _mark(marker)
    frames = {
        "not-msgpack": struct.pack(">I", 3) + b"\xc1\xc1\xc1",
        "not-an-array": worker.frame({"kind": "ok"}),  # type: ignore[arg-type]  # the point
        "unknown-kind": worker.frame(["hello", 0, None]),
        "huge-length": struct.pack(">I", 0xFFFFFFFF) + b"\x00" * 16,
    }
    _channel_send(frames[how])
    time.sleep(60)
    return "not killed"


@task(name="pool.deaf", modes=["process"], mode="process")
def deaf(marker: str, seconds: float = 60) -> str:
    """Ignore SIGTERM (a task that never answers a cancel), then sleep."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _mark(marker)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
    return "finished"
