"""A task module that loads in the daemon but not in its process workers
(test_process_pool.py): a worker that cannot load its tasks must fail its job with the
reason, and must not be restarted in a loop."""

from __future__ import annotations

import sys

from pyrexisd import task

# The forkserver (and each worker forked from it) runs ``python -c "from
# multiprocessing.forkserver import main; ..."``; the daemon does not. An ImportError is
# what the forkserver's preload passes over, so each worker meets it again.
if "multiprocessing.forkserver" in " ".join(sys.orig_argv):
    raise ImportError("this module refuses to load in a worker")


@task(name="broken.anywhere", modes=["thread", "process"], mode="process")
def anywhere(value: int) -> int:
    return value
