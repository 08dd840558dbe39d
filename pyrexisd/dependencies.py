"""Dependency rules between jobs, as pure functions (no I/O, no clock)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from protocol.status import TERMINAL

READY = "ready"
WAIT = "wait"
FAILED = "failed"


def verdict(
    depends_on: Sequence[str], policy: str, statuses: Mapping[str, str]
) -> tuple[str, str | None, list[str]]:
    """What a blocked job should do, given its dependencies' current statuses.

    Returns ``(verdict, culprit, unsettled)``: ``failed`` with the dependency that failed
    or was cancelled (``all_completed`` only; a dependency that no longer exists counts
    as failed), ``ready`` when every dependency satisfies the policy, else ``wait`` with
    the dependencies still to settle.
    """
    unsettled: list[str] = []
    for dep in depends_on:
        status = statuses.get(dep)
        if status is None:
            return FAILED, dep, []
        if status == "completed":
            continue
        if status in TERMINAL:
            if policy == "all_completed":
                return FAILED, dep, []
            continue
        unsettled.append(dep)
    return (WAIT if unsettled else READY), None, unsettled


def batch_order_problem(job_ids: Sequence[str | None], depends_on: Sequence[Sequence[str]]) -> tuple[int, str] | None:
    """The first spec of a batch that depends on itself or on a later spec of the batch.

    Specs may depend only on jobs that exist already or on specs earlier in the same
    batch, so a graph submitted in one batch can never hold a cycle.
    """
    position = {job_id: i for i, job_id in enumerate(job_ids) if job_id is not None}
    for i, deps in enumerate(depends_on):
        for dep in deps:
            j = position.get(dep)
            if j is not None and j >= i:
                return i, dep
    return None
