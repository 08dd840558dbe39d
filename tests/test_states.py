"""The status state machine: ``protocol/status.py`` and ``JobRow.move`` in ``pyrexisd/core/model.py``.

The expected truth is the contract's table (protocol-v1.md, "Statuses"), copied here by
hand so that a wrong ``TRANSITIONS`` cannot vouch for itself.
"""

from __future__ import annotations

import itertools

import pytest

from protocol.errors import Internal, PyrexisError
from protocol.status import ALL_STATUSES, TERMINAL, TRANSITIONS, WAITING, Status, is_legal
from pyrexisd.core.model import IllegalTransition, JobRow

# protocol-v1.md, "Statuses": | from | to |, with the agreed addition that a hit of the
# result cache completes a job at once (submit -> completed, the job never runs).
CONTRACT_TABLE: dict[str | None, set[str]] = {
    None: {"pending", "blocked", "scheduled", "running", "completed"},  # (submit)
    "pending": {"running", "held", "cancelled"},
    "blocked": {"pending", "cancelled", "held"},
    "scheduled": {"pending", "held", "cancelled"},
    "retrying": {"pending", "held", "cancelled"},
    "held": {"pending", "blocked", "scheduled", "cancelled"},
    "running": {"completed", "failed", "retrying", "cancelled", "pending"},
    "failed": {"pending", "blocked", "scheduled"},
    "cancelled": {"pending", "blocked", "scheduled"},
    "completed": set(),
}
CONTRACT_STATUSES = (
    "pending", "blocked", "scheduled", "retrying", "held",
    "running", "completed", "failed", "cancelled",
)
ALL_PAIRS = list(itertools.product(CONTRACT_STATUSES, CONTRACT_STATUSES))


def make_row(status: str) -> JobRow:
    return JobRow(
        seq=1,
        job_id="j-1",
        task="echo",
        args={"value": 1},
        queue="default",
        priority=0,
        mode="thread",
        status=status,
        created_at=1.0,
        max_retries=0,
        on_interrupt="retry",
    )


def test_the_status_sets_are_the_contracts() -> None:
    """Given the contract's nine statuses, then the code knows exactly these, with the
    contract's waiting and terminal sets."""
    assert set(ALL_STATUSES) == set(CONTRACT_STATUSES)
    assert len(ALL_STATUSES) == len(CONTRACT_STATUSES)
    assert {s.value for s in Status} == set(CONTRACT_STATUSES)
    assert WAITING == {"pending", "blocked", "scheduled", "retrying", "held"}
    assert TERMINAL == {"completed", "failed", "cancelled"}
    assert str(Status.RETRYING) == "retrying"


def test_transitions_table_equals_the_contract_table() -> None:
    """Given TRANSITIONS, then it has a row for submit and for every status, each equal to
    the contract's row."""
    assert set(TRANSITIONS) == set(CONTRACT_TABLE)
    for old, allowed in CONTRACT_TABLE.items():
        assert set(TRANSITIONS[old]) == allowed, f"row {old!r}"


@pytest.mark.parametrize(("old", "new"), ALL_PAIRS)
def test_is_legal_matches_the_contract_for_every_pair(old: str, new: str) -> None:
    """Given any (from, to) pair of statuses, then is_legal says yes exactly when the
    contract's table lists it."""
    assert is_legal(old, new) is (new in CONTRACT_TABLE[old])


@pytest.mark.parametrize("new", CONTRACT_STATUSES)
def test_submit_may_create_only_the_contract_statuses(new: str) -> None:
    """Given a job not yet stored, then submit may create pending, blocked, scheduled,
    running, or completed (a result cache hit), and nothing else (no retrying or held
    job, no failed or cancelled one out of nowhere)."""
    assert is_legal(None, new) is (new in {"pending", "blocked", "scheduled", "running", "completed"})


@pytest.mark.parametrize("status", CONTRACT_STATUSES)
def test_no_status_changes_to_itself(status: str) -> None:
    """Given any status, then a change to the same status is not a legal change."""
    assert is_legal(status, status) is False


def test_completed_has_no_exits() -> None:
    """Given a completed job, then no status (and not even a retry) may follow."""
    for new in CONTRACT_STATUSES:
        assert not is_legal("completed", new)
    row = make_row("completed")
    for new in CONTRACT_STATUSES:
        with pytest.raises(IllegalTransition):
            row.move(new)
        assert row.status == "completed"


@pytest.mark.parametrize("old", ["failed", "cancelled"])
def test_failed_and_cancelled_leave_only_by_retry_to_a_waiting_status(old: str) -> None:
    """Given a failed or cancelled job, then it may only become pending, blocked or
    scheduled (the retry op), never running, held or another terminal status directly."""
    legal = {new for new in CONTRACT_STATUSES if is_legal(old, new)}
    assert legal == {"pending", "blocked", "scheduled"}


def test_unknown_statuses_are_never_legal() -> None:
    """Given a status the contract does not have, then it is never a legal source or target."""
    for name in ("", "done", "PENDING", "running ", "unknown"):
        assert not is_legal(name, "pending")
        assert not is_legal("pending", name)
        assert not is_legal(None, name)


@pytest.mark.parametrize(("old", "new"), ALL_PAIRS)
def test_jobrow_move_obeys_the_contract_for_every_pair(old: str, new: str) -> None:
    """Given a job row in status ``old``, when it moves to ``new``, then a legal change
    updates the status and an illegal one raises IllegalTransition (an Internal error,
    code ``internal``, details naming the current status) and leaves the status as it was."""
    row = make_row(old)
    if new in CONTRACT_TABLE[old]:
        row.move(new)
        assert row.status == new
        assert row.terminal is (new in {"completed", "failed", "cancelled"})
    else:
        with pytest.raises(IllegalTransition) as info:
            row.move(new)
        assert row.status == old
        err = info.value
        assert isinstance(err, Internal) and isinstance(err, PyrexisError)
        assert err.code == "internal"
        assert err.details == {"status": old}
        assert old in err.message and new in err.message
        assert err.to_wire()["code"] == "internal"


def test_illegal_transition_is_an_internal_error() -> None:
    """Given the IllegalTransition class, then it is a subclass of protocol.errors.Internal."""
    assert issubclass(IllegalTransition, Internal)
    assert IllegalTransition.code == "internal"


def test_a_job_can_walk_a_long_legal_path() -> None:
    """Given a submitted job, when it walks a legal path through held, retries, a daemon
    death and a client retry, then every step succeeds and it ends completed."""
    path = [
        "blocked", "held", "scheduled", "pending", "running", "retrying", "held",
        "pending", "running", "pending", "running", "failed", "scheduled", "cancelled",
        "pending", "running", "completed",
    ]
    row = make_row("blocked")
    assert is_legal(None, "blocked")
    for old, new in itertools.pairwise(path):
        assert row.status == old
        row.move(new)
    assert row.status == "completed" and row.terminal


def test_every_status_is_reachable_from_submit_and_every_job_can_end() -> None:
    """Given the contract's table, then every status is reachable from submit, and from
    every status some terminal status is reachable (no trap other than terminal ones)."""
    reach: set[str] = set()
    frontier = set(TRANSITIONS[None])
    while frontier:
        s = frontier.pop()
        if s not in reach:
            reach.add(s)
            frontier |= set(TRANSITIONS[s])
    assert reach == set(CONTRACT_STATUSES)
    for start in CONTRACT_STATUSES:
        seen, todo = {start}, [start]
        while todo:
            for nxt in TRANSITIONS[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        assert seen & {"completed", "failed", "cancelled"}, start
