"""Dependency rules: ``pyrexisd/dependencies.py`` (``verdict`` and ``batch_order_problem``).

Contract (protocol v1, ``depends_on`` and ``dependency_policy``): under ``all_completed``
(the default) a dependency that fails or is cancelled cancels the job with
``dependency_failed`` naming it; under ``all_terminal`` the job runs once every dependency
is terminal. In ``submit_many`` a spec may depend on specs earlier in the same batch, so a
batch can never hold a cycle.

The expectations below are written from the contract's words (which statuses settle a
dependency under which policy), not from the module's own sets.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyrexisd.dependencies import FAILED, READY, WAIT, batch_order_problem, verdict

FAST = settings(max_examples=300, deadline=None)
POLICIES = ("all_completed", "all_terminal")
STATUSES = (
    "pending", "blocked", "scheduled", "retrying", "held", "running",
    "completed", "failed", "cancelled",
)  # fmt: skip
NOT_DONE = ("pending", "blocked", "scheduled", "retrying", "held", "running")
SETTLING = {
    "all_completed": frozenset({"completed"}),
    "all_terminal": frozenset({"completed", "failed", "cancelled"}),
}


def breaks(policy: str, status: str | None) -> bool:
    """Whether a dependency in ``status`` (None: no such job) fails the job under ``policy``."""
    return status is None or (policy == "all_completed" and status in ("failed", "cancelled"))


# --- verdict: examples ---------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_a_job_whose_dependencies_all_completed_is_ready(policy: str) -> None:
    """Given three dependencies that all completed, when the job is judged under either
    policy, then it is ready, with no culprit and nothing left to wait for."""
    statuses = {"a": "completed", "b": "completed", "c": "completed"}

    got = verdict(["a", "b", "c"], policy, statuses)

    assert got == (READY, None, [])


@pytest.mark.parametrize("policy", POLICIES)
def test_a_job_without_dependencies_is_ready(policy: str) -> None:
    """Given no dependencies at all, then there is nothing to wait for: ready."""
    assert verdict([], policy, {"a": "failed"}) == (READY, None, [])


@pytest.mark.parametrize("bad", ["failed", "cancelled"])
def test_under_all_completed_a_failed_or_cancelled_dependency_fails_the_job_naming_it(
    bad: str,
) -> None:
    """Given dependencies a (completed) and b (failed or cancelled), when the job is judged
    under all_completed, then it fails and b is the culprit."""
    statuses = {"a": "completed", "b": bad}

    got = verdict(["a", "b"], "all_completed", statuses)

    assert got == (FAILED, "b", [])


def test_under_all_completed_a_failure_decides_at_once_even_while_others_still_run() -> None:
    """Given a running dependency listed before a cancelled one, when the job is judged
    under all_completed, then it fails now (naming the cancelled one) instead of waiting
    for the running one: its outcome can no longer change the verdict."""
    statuses = {"a": "running", "b": "cancelled", "c": "pending"}

    got = verdict(["a", "b", "c"], "all_completed", statuses)

    assert got == (FAILED, "b", [])


def test_under_all_completed_the_culprit_is_the_first_broken_dependency_in_order() -> None:
    """Given two failed dependencies, when the job is judged, then the culprit is the one
    that comes first in depends_on, not the first by name."""
    statuses = {"a": "failed", "z": "cancelled"}

    assert verdict(["z", "a"], "all_completed", statuses) == (FAILED, "z", [])


@pytest.mark.parametrize("other", ["failed", "cancelled"])
def test_under_all_terminal_a_failed_or_cancelled_dependency_counts_as_settled(
    other: str,
) -> None:
    """Given dependencies that completed, failed or were cancelled, when the job is judged
    under all_terminal, then every one of them is settled and the job is ready."""
    statuses = {"a": "completed", "b": other}

    got = verdict(["a", "b"], "all_terminal", statuses)

    assert got == (READY, None, [])


def test_under_all_terminal_a_failed_dependency_still_waits_for_the_running_ones() -> None:
    """Given one failed and one running dependency, when the job is judged under
    all_terminal, then it waits for the running one only."""
    statuses = {"a": "failed", "b": "running"}

    assert verdict(["a", "b"], "all_terminal", statuses) == (WAIT, None, ["b"])


@pytest.mark.parametrize("policy", POLICIES)
def test_a_dependency_that_no_longer_exists_fails_the_job_under_either_policy(
    policy: str,
) -> None:
    """Given a dependency with no job behind it (listed after a still-running one), when
    the job is judged, then it fails at once with the missing id as the culprit."""
    statuses = {"a": "running"}

    got = verdict(["a", "gone"], policy, statuses)

    assert got == (FAILED, "gone", [])


@pytest.mark.parametrize("policy", POLICIES)
def test_unsettled_dependencies_are_listed_in_depends_on_order(policy: str) -> None:
    """Given dependencies in every non-terminal status, mixed with a completed one, when
    the job is judged, then it waits for exactly the unsettled ones, in depends_on order."""
    depends_on = ["held", "done", "running", "pending", "scheduled", "retrying", "blocked"]
    statuses = {dep: dep for dep in depends_on if dep != "done"} | {"done": "completed"}

    got = verdict(depends_on, policy, statuses)

    assert got == (WAIT, None, ["held", "running", "pending", "scheduled", "retrying", "blocked"])


# --- verdict: properties -------------------------------------------------------------

DEP_IDS = st.sampled_from(["a", "b", "c", "d", "e"])


@st.composite
def judged_jobs(draw: st.DrawFn) -> tuple[list[str], str, dict[str, str]]:
    """depends_on (repeats allowed), a policy, and statuses for some of the ids (the ones
    left out do not exist), plus unrelated jobs that must not matter."""
    depends_on = draw(st.lists(DEP_IDS, max_size=6))
    statuses = draw(st.dictionaries(DEP_IDS, st.sampled_from(STATUSES)))
    unrelated = draw(st.dictionaries(st.sampled_from(["x", "y"]), st.sampled_from(STATUSES)))
    return depends_on, draw(st.sampled_from(POLICIES)), statuses | unrelated


@FAST
@given(judged_jobs())
def test_ready_iff_every_dependency_exists_and_is_settled_per_the_policy(
    job: tuple[list[str], str, dict[str, str]],
) -> None:
    """Given any dependencies and statuses, then the verdict is ready exactly when every
    dependency exists and is in a status the policy counts as settled."""
    depends_on, policy, statuses = job

    kind, _, _ = verdict(depends_on, policy, statuses)

    settled = all(statuses.get(dep) in SETTLING[policy] for dep in depends_on)
    assert (kind == READY) == settled


@FAST
@given(judged_jobs())
def test_failed_iff_a_dependency_is_missing_or_broken_and_the_culprit_is_the_first_such(
    job: tuple[list[str], str, dict[str, str]],
) -> None:
    """Given any dependencies and statuses, then the verdict is failed exactly when some
    dependency is missing (or, under all_completed, failed or was cancelled); the culprit
    is the first such dependency in order, and nothing is reported as unsettled."""
    depends_on, policy, statuses = job

    kind, culprit, unsettled = verdict(depends_on, policy, statuses)

    broken = [dep for dep in depends_on if breaks(policy, statuses.get(dep))]
    assert (kind == FAILED) == bool(broken)
    if broken:
        assert culprit == broken[0] and unsettled == []
    else:
        assert culprit is None


@FAST
@given(judged_jobs())
def test_a_waiting_job_lists_exactly_its_unsettled_dependencies_in_order(
    job: tuple[list[str], str, dict[str, str]],
) -> None:
    """Given any dependencies and statuses, when the verdict is not failed, then the
    unsettled list is the dependencies still in a non-terminal status, in depends_on order
    (repeats kept), and the verdict is wait exactly when that list is not empty."""
    depends_on, policy, statuses = job

    kind, _, unsettled = verdict(depends_on, policy, statuses)

    if kind != FAILED:
        expected = [dep for dep in depends_on if statuses[dep] in NOT_DONE]
        assert unsettled == expected
        assert (kind == WAIT) == bool(expected)


@FAST
@given(judged_jobs())
def test_all_terminal_is_never_stricter_than_all_completed(
    job: tuple[list[str], str, dict[str, str]],
) -> None:
    """Given a job that is ready under all_completed, then it is ready under all_terminal
    too; and under all_terminal only a missing dependency can fail it."""
    depends_on, _, statuses = job

    strict = verdict(depends_on, "all_completed", statuses)
    lenient = verdict(depends_on, "all_terminal", statuses)

    if strict[0] == READY:
        assert lenient[0] == READY
    if lenient[0] == FAILED:
        assert lenient[1] not in statuses


# --- batch_order_problem: examples ---------------------------------------------------


def test_a_spec_that_depends_on_itself_is_a_problem() -> None:
    """Given a batch whose second spec lists its own job_id, then that spec and id are
    reported."""
    assert batch_order_problem(["a", "b"], [[], ["b"]]) == (1, "b")


def test_a_spec_that_depends_on_a_later_spec_is_a_problem() -> None:
    """Given a batch whose first spec depends on the second, then the first spec is
    reported with the later id: it would be a cycle if the second depended back."""
    assert batch_order_problem(["a", "b"], [["b"], []]) == (0, "b")


def test_dependencies_on_earlier_specs_and_on_existing_jobs_are_fine() -> None:
    """Given a chain a <- b <- c where c also needs an existing job x, then no problem."""
    assert batch_order_problem(["a", "b", "c"], [[], ["a"], ["b", "x", "a"]]) is None


def test_specs_without_a_job_id_cannot_be_depended_on_by_a_batch_sibling() -> None:
    """Given specs with no job_id, then their dependencies are judged against the ids that
    are set: an id no spec carries is an existing job (not this function's concern), a
    later spec's id is still a problem."""
    assert batch_order_problem([None, None], [["a"], []]) is None
    assert batch_order_problem([None, "b"], [["b"], []]) == (0, "b")


def test_the_first_problem_in_batch_order_is_reported() -> None:
    """Given two specs that both point forward, then the earlier spec is reported, with its
    first offending dependency in its own order."""
    ids = ["a", "b", "c", "d"]
    deps: list[list[str]] = [["x", "d", "c"], ["c"], [], []]

    assert batch_order_problem(ids, deps) == (0, "d")


def test_an_empty_batch_has_no_problem() -> None:
    assert batch_order_problem([], []) is None


# --- batch_order_problem: properties -------------------------------------------------


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[str | None], list[list[str]]]:
    """A batch of up to 7 specs: each with job_id ``j<i>`` or none, depending on any
    ``j<k>`` of the batch (with or without an id set) or on outside jobs ``x``/``y``."""
    n = draw(st.integers(0, 7))
    ids: list[str | None] = [draw(st.sampled_from([f"j{i}", None])) for i in range(n)]
    targets = st.sampled_from([f"j{k}" for k in range(n)] + ["x", "y"])
    deps = [draw(st.lists(targets, max_size=4)) for _ in range(n)]
    return ids, deps


@FAST
@given(batches())
def test_no_problem_iff_every_in_batch_dependency_points_strictly_earlier(
    batch: tuple[list[str | None], list[list[str]]],
) -> None:
    """Given any batch, then there is no problem exactly when every dependency naming a
    spec of the batch names one placed strictly before the spec that depends on it."""
    ids, deps = batch

    problem = batch_order_problem(ids, deps)

    where = {job_id: i for i, job_id in enumerate(ids) if job_id is not None}
    forward = [
        (i, dep) for i, spec_deps in enumerate(deps) for dep in spec_deps if where.get(dep, -1) >= i
    ]
    assert (problem is None) == (not forward)
    if forward:
        assert problem == forward[0]
