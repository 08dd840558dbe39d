"""Start-up recovery: jobs the last daemon left ``running``.

Each follows its ``on_interrupt`` (back to pending with the lost attempt counted, or
failed with ``interrupted``), with a log line saying so; work that outlived the daemon
(recognised by pid and start time) is killed first, so it never runs beside the next
attempt. One commit for all of them, before anything else runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pyrexisd import procs
from pyrexisd.core import model
from pyrexisd.core.ledger import Ledger
from pyrexisd.store import Store

log = logging.getLogger(__name__)


async def recover_interrupted(store: Store, ledger: Ledger, clock: Callable[[], float]) -> None:
    """Apply ``on_interrupt`` to every job stored as running."""
    rows = await store.reads.jobs_with_status("running")
    if not rows:
        return
    last_lines = [await store.reads.max_log_seq(row.seq) for row in rows]
    now = clock()
    async with ledger.change(rows) as change:
        for row, last_line in zip(rows, last_lines, strict=True):
            if row.pid is not None and row.pid_start is not None:
                if procs.kill_if_same(row.pid, row.pid_start, group=row.mode == "shell"):
                    log.warning("killed orphan process %d of job %s", row.pid, row.job_id, extra={"job_id": row.job_id})
            model.interrupt(row, now, "the daemon stopped while the job was running")
            row.log_seq = max(row.log_seq, last_line)
            change.log(row, "log", f"interrupted: {row.error or 'back to pending'}", now)
    log.warning("recovered %d jobs that were running when the daemon stopped", len(rows))
