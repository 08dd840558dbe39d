"""Admission: a raw spec becomes a job row, or a clear error.

Pure given the task registry, the configuration and a clock: validation of the spec and
the task's args (pydantic, once per job: the validated args are what the job runs with),
defaults resolved job → task → daemon, the size budget that keeps a record within a
frame, the identity of a spec for idempotent resubmits, and the checks of a batch's
dependencies and client ids against what the store holds (the caller reads the store and
hands the rows in).

Admission also applies what a caller may submit: a job belongs to the uid that submits
it; a caller that is not an admin may submit only the tasks the operator opened to other
users (``--user-tasks``), may depend only on its own jobs, and never gets another
user's job back from a client ``job_id``. :class:`Quotas` bounds how many jobs wait.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack
from pydantic import BaseModel, TypeAdapter, ValidationError

from protocol.errors import Conflict, InvalidRequest, Overloaded, Unauthorized, UnknownTask
from protocol.models import JobSpec, validation_errors
from protocol.pipeline import PIPELINE_TASK, PipelineSpec
from pyrexisd import dependencies
from pyrexisd.access import Caller
from pyrexisd.config import FRAME_ENVELOPE, Config
from pyrexisd.core.cache import CacheKey, ResultCache
from pyrexisd.core.model import JobRow
from pyrexisd.core.owners import Owners
from pyrexisd.core.pipeline import plan as pipeline_plan
from pyrexisd.packing import pack
from pyrexisd.tasks.registry import Registry, TaskDef


@dataclass(slots=True)
class Admitted:
    """A spec that passed validation, and the row it becomes."""

    spec: JobSpec
    task: TaskDef
    row: JobRow
    # At least the packed size of the row's record as a submit answers it (no result,
    # no error): fixed keys and short strings, then what the spec sent.
    reply_bound: int
    # Where the result cache may hold this job's result, when it may be answered from it.
    cache_key: CacheKey | None = None


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return [[k, _canonical(value[k])] for k in sorted(value, key=repr)]
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def spec_digest(spec: JobSpec) -> bytes:
    """Identity of a spec for idempotent resubmits: fields as sent, defaults filled in."""
    fields = spec.model_dump()
    if fields["cache"]:
        # Fields added since the first release weigh only when not at their default, so
        # that a job stored before they existed is still the same spec.
        del fields["cache"]
    packed = msgpack.packb(_canonical(fields), use_bin_type=True)
    return hashlib.sha256(packed).digest()


def encode_cursor(row: JobRow) -> str:
    """The ``next`` cursor of a ``list`` page that ends with ``row``."""
    raw = msgpack.packb([row.created_at, row.job_id], use_bin_type=True)
    return base64.urlsafe_b64encode(raw).decode("ascii")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        created, job_id = msgpack.unpackb(base64.urlsafe_b64decode(cursor.encode("ascii")))
        return float(created), str(job_id)
    except Exception:
        raise InvalidRequest(
            "invalid cursor", {"errors": [{"loc": ["after"], "msg": "not a cursor from list"}]}
        ) from None


class WaitingCounts(Protocol):
    """The committed counts the quotas need (the daemon's :class:`~pyrexisd.metrics.Metrics`)."""

    waiting: int
    waiting_by_owner: Counter[int]

    def completed_per_s(self, now: float) -> float: ...


class Quotas:
    """How many jobs may wait: ``max_waiting`` in all, ``max_waiting_per_user`` per owner.

    Checked when jobs are about to start waiting (``submit``, ``retry``), against the
    committed counts plus the jobs being admitted right now (reserved here until their
    commit is counted), so concurrent submits cannot slip past a limit together. A job
    that goes back to waiting by itself (an attempt to retry) is never refused.
    """

    def __init__(self, config: Config, counts: WaitingCounts, clock: Callable[[], float]) -> None:
        self.max_waiting = config.max_waiting
        self.per_user = config.max_waiting_per_user
        self.counts = counts
        self.clock = clock
        self._reserved = 0
        self._reserved_by: Counter[int] = Counter()

    def reserve(self, owner: int, count: int) -> None:
        """Room for ``count`` more waiting jobs of ``owner`` until :meth:`release` (their
        commit counts them after), or ``overloaded`` naming the limit. (A pair of calls
        rather than a context manager: this is on the path of every submit.)"""
        counts = self.counts
        if self.max_waiting is not None and counts.waiting + self._reserved + count > self.max_waiting:
            excess = counts.waiting + self._reserved + count - self.max_waiting
            raise Overloaded(
                f"the daemon holds {self.max_waiting} waiting jobs (max_waiting); try again later",
                {"limit": "max_waiting", "value": self.max_waiting, "retry_after": self._retry_after(excess)},
            )
        if self.per_user is not None:
            mine = counts.waiting_by_owner.get(owner, 0) + self._reserved_by.get(owner, 0)
            if mine + count > self.per_user:
                raise Overloaded(
                    f"uid {owner} has {mine} waiting jobs; at most {self.per_user} may wait (max_waiting_per_user)",
                    {"limit": "max_waiting_per_user", "value": self.per_user,
                     "retry_after": self._retry_after(mine + count - self.per_user)},
                )  # fmt: skip
        self._reserved += count
        self._reserved_by[owner] += count

    def release(self, owner: int, count: int) -> None:
        """The jobs :meth:`reserve` made room for are committed (or refused): their room goes."""
        self._reserved -= count
        left = self._reserved_by[owner] - count
        if left:
            self._reserved_by[owner] = left
        else:
            del self._reserved_by[owner]

    def _retry_after(self, excess: int) -> float:
        """Seconds until about ``excess`` waiting jobs have moved on, at the last minute's
        pace (between 1 s and a minute; 5 s when nothing finished lately)."""
        rate = self.counts.completed_per_s(self.clock())
        if rate <= 0:
            return 5.0
        return round(min(60.0, max(1.0, excess / rate)), 1)


def mode_not_run(mode: str) -> str:
    """Why a daemon refuses a job of a mode it does not run."""
    if mode == "dask":
        return (
            "this daemon does not run the dask mode: start pyrexisd with --dask-scheduler ADDRESS or "
            "--dask-local N, which needs the extra pyrexis[dask] (pip install 'pyrexis[dask]')"
        )
    return f"this daemon does not run the {mode} mode"


class Admission:
    """Turns raw specs into rows; every refusal is an :class:`InvalidRequest` family error
    naming the field at fault (and, in a batch, the spec's ``index``)."""

    def __init__(
        self,
        registry: Registry,
        config: Config,
        clock: Callable[[], float],
        owners: Owners | None = None,
        counts: WaitingCounts | None = None,
        cache: ResultCache | None = None,
    ) -> None:
        self.registry = registry
        self.cache = cache
        self.config = config
        self.clock = clock
        self.owners = owners if owners is not None else Owners()
        self._max_spec = config.max_spec
        self.user_tasks = config.tasks_for_users
        self.modes = config.modes
        self.quotas = Quotas(config, counts if counts is not None else _NoCounts(), clock)

    def prepare(self, caller: Caller, raw: Any, index: int | None = None) -> Admitted:
        """Validate one spec of ``caller`` (its task, mode, args and size) and build its row."""
        where = {} if index is None else {"index": index}
        if not isinstance(raw, dict):
            raise InvalidRequest("a job spec must be a map", {"errors": [{"loc": [], "msg": "not a map"}], **where})
        try:
            spec = JobSpec.model_validate(raw)
        except ValidationError as exc:
            raise InvalidRequest("invalid job spec", {"errors": validation_errors(exc), **where}) from None
        return self._admit(caller, spec, where)

    def _admit(
        self, caller: Caller, spec: JobSpec, where: dict[str, int], new_id: str | None = None,
        validated: BaseModel | None = None,
    ) -> Admitted:
        """A valid spec's task, mode, args and size checked; its row built (its job id
        the spec's, else ``new_id``, else a new one; its args ``validated`` already, or
        validated here)."""
        definition = self.registry.get(spec.task)
        if definition is None:
            raise UnknownTask(f"no task named {spec.task!r}", {"task": spec.task, **where})
        if spec.task == PIPELINE_TASK:
            spec = self._admit_pipeline(caller, spec, where)
        elif not caller.admin and spec.task not in self.user_tasks:
            # Python tasks run as the daemon's user: only those the operator opened.
            raise Unauthorized(
                f"task {spec.task!r} is not open to other users of this daemon", {"task": spec.task, **where}
            )
        mode = spec.mode or definition.default_mode
        if mode not in definition.modes:
            raise InvalidRequest(
                f"task {spec.task!r} does not run in {mode} mode",
                {"errors": [{"loc": ["mode"], "msg": f"supported: {', '.join(definition.modes)}"}], **where},
            )
        if mode not in self.modes:
            raise InvalidRequest(mode_not_run(mode), {"errors": [{"loc": ["mode"], "msg": "not run by this daemon"}], **where})
        if spec.job_id is not None and spec.job_id in spec.depends_on:
            raise InvalidRequest(
                f"job {spec.job_id!r} depends on itself",
                {"errors": [{"loc": ["depends_on"], "msg": "a dependency cycle"}], **where},
            )
        try:
            if validated is None:
                validated = definition.validate_args(spec.args)
            kwargs = TaskDef.model_kwargs(validated)
            args_blob = pack(spec.args)
            spec_size = len(args_blob) + (
                len(pack([spec.labels, spec.depends_on]))
                if spec.labels or spec.depends_on else _EMPTY_EXTRAS
            )
        except InvalidRequest as exc:
            exc.details = {**(exc.details or {}), **where}
            raise
        except (ValueError, TypeError, OverflowError) as exc:
            raise InvalidRequest(f"args cannot be stored: {exc}", {"errors": [{"loc": ["args"], "msg": str(exc)}], **where}) from None
        if spec_size > self._max_spec:
            raise InvalidRequest(
                f"the job's args and labels take {spec_size} bytes; at most {self._max_spec} "
                "fit, so that its record fits in a frame with its result",
                {"errors": [{"loc": ["args"], "msg": "too large"}], **where},
            )
        now = self.clock()
        max_retries = spec.max_retries
        if max_retries is None:
            max_retries = definition.max_retries if definition.max_retries is not None else self.config.default_max_retries
        run_at = spec.run_at if spec.run_at is not None else (now + spec.delay if spec.delay is not None else None)
        row = JobRow(
            seq=0,
            job_id=spec.job_id or new_id or _new_job_id(),
            task=spec.task,
            args=spec.args,
            queue=spec.queue,
            priority=spec.priority,
            mode=mode,
            status="pending",
            created_at=now,
            max_retries=max_retries,
            on_interrupt=spec.on_interrupt or definition.on_interrupt,
            dependency_policy=spec.dependency_policy,
            depends_on=list(dict.fromkeys(spec.depends_on)),
            labels=dict(spec.labels),
            timeout=spec.timeout if spec.timeout is not None else definition.timeout,
            run_at=run_at,
            enqueued_at=now,
            # Only a client's own id can be resubmitted, so only then is the digest needed.
            spec_digest=spec_digest(spec) if spec.job_id is not None else b"",
            args_blob=args_blob,
            kwargs=kwargs,
            owner=caller.uid,
        )
        admitted = Admitted(spec, definition, row, RECORD_FIXED + spec_size + len(row.job_id) + len(spec.task) + len(spec.queue))
        if definition.cache and spec.cache and self.cache is not None:
            admitted.cache_key = self._cache_key(definition, validated, row, now)
        return admitted

    def _cache_key(self, definition: TaskDef, validated: BaseModel, row: JobRow, now: float) -> CacheKey | None:
        """The cache key of a job that may be answered from the cache: one that would be
        ready at once. A job that waits (dependencies, a later ``run_at``) runs when due,
        and its result refreshes the cache then."""
        assert self.cache is not None
        if row.depends_on or (row.run_at is not None and row.run_at > now) or not self.cache.enabled:
            return None
        return self.cache.key(definition, validated, row.owner)

    def _admit_pipeline(self, caller: Caller, spec: JobSpec, where: dict[str, int]) -> JobSpec:
        """A pipeline's spec checked against the registry, what the caller may run and
        the files it may name (a pipeline itself is open to everyone: its stages' tasks
        are what must be open)."""
        try:
            PipelineSpec.model_validate(spec.args)
        except ValidationError as exc:
            raise InvalidRequest("invalid pipeline spec", {"errors": validation_errors(exc, ("args",)), **where}) from None
        try:
            return pipeline_plan.admit(spec, self.registry, caller.admin, caller.uid, self.user_tasks)
        except (InvalidRequest, Unauthorized, UnknownTask) as exc:
            exc.details = {**(exc.details or {}), **where}
            raise

    def prepare_batch(self, caller: Caller, raws: Sequence[Any], batch: bool) -> list[Admitted]:
        """Every spec of a submit by ``caller`` (``batch``: of a ``submit_many``, errors
        name the index), checked together: the records fit one reply, no client id twice,
        no cycle."""
        try:
            # One validation of the whole list: much cheaper than one per spec.
            specs = _SPEC_LIST.validate_python(raws)
        except ValidationError:
            admitted = [self.prepare(caller, raw, i if batch else None) for i, raw in enumerate(raws)]
            raise AssertionError("a batch that fails as a list passes spec by spec") from None
        new_ids = _new_job_ids(len(specs))  # at once: cheaper than counting those needed
        admitted = [
            self._admit(caller, spec, {"index": i} if batch else {}, new_id, validated)
            for i, (spec, new_id, validated) in enumerate(
                zip(specs, new_ids, self._args_at_once(caller, specs), strict=True)
            )
        ]
        if batch:
            # A bound of the reply's size, without packing every record twice.
            size = sum(a.reply_bound for a in admitted)
            if size > self.config.max_frame - FRAME_ENVELOPE:
                raise InvalidRequest(
                    f"the batch's records would take {size} bytes, more than a frame holds; "
                    "submit fewer jobs at once",
                    {"errors": [{"loc": ["jobs"], "msg": "too large for one reply"}]},
                )
        seen: set[str] = set()
        for i, a in enumerate(admitted):
            job_id = a.spec.job_id
            if job_id is not None:
                if job_id in seen:
                    raise InvalidRequest(
                        f"job_id {job_id!r} appears twice in the batch",
                        {"errors": [{"loc": ["jobs", i, "job_id"], "msg": "duplicate"}], "index": i},
                    )
                seen.add(job_id)
        if any(a.spec.depends_on for a in admitted):
            problem = dependencies.batch_order_problem(
                [a.spec.job_id for a in admitted], [a.spec.depends_on for a in admitted]
            )
            if problem is not None:
                i, dep = problem
                raise InvalidRequest(
                    f"spec {i} depends on {dep!r}, which is not an earlier spec of the batch (a cycle)",
                    {"errors": [{"loc": ["depends_on"], "msg": "a dependency cycle"}], **_index(i, batch)},
                )
        return admitted

    def _args_at_once(self, caller: Caller, specs: list[JobSpec]) -> list[BaseModel | None]:
        """The specs' args validated one task at a time, each task's in one call; None
        where they were not (a task unknown or not open to ``caller``, a pipeline, or an
        invalid args among its task's: :meth:`_admit` then validates them one by one
        and names the fault)."""
        out: list[BaseModel | None] = [None] * len(specs)
        first = specs[0].task if specs else ""
        by_task: dict[str, Sequence[int]]
        if all(spec.task == first for spec in specs):
            by_task = {first: range(len(specs))}
        else:
            grouped: dict[str, list[int]] = {}
            for i, spec in enumerate(specs):
                grouped.setdefault(spec.task, []).append(i)
            by_task = dict(grouped)
        for name, indexes in by_task.items():
            definition = self.registry.get(name)
            if definition is None or name == PIPELINE_TASK or not (caller.admin or name in self.user_tasks):
                continue
            models = definition.validate_args_many([specs[i].args for i in indexes])
            if models is not None:
                for i, model in zip(indexes, models, strict=True):
                    out[i] = model
        return out

    @staticmethod
    def external_dependencies(admitted: Sequence[Admitted]) -> list[str]:
        """The dependencies that are not specs of this batch: they must exist already."""
        in_batch = {a.spec.job_id for a in admitted if a.spec.job_id is not None}
        return sorted({d for a in admitted for d in a.spec.depends_on if d not in in_batch})

    def check_dependencies(
        self, caller: Caller, admitted: Sequence[Admitted], found: Mapping[str, JobRow], batch: bool
    ) -> dict[str, str]:
        """Refuse unknown dependencies — another user's job is unknown to a caller that is
        not an admin: its result would reach the dependent — and return the statuses of
        the existing ones."""
        in_batch = {a.spec.job_id for a in admitted if a.spec.job_id is not None}
        found = {job_id: row for job_id, row in found.items() if self.owners.sees(caller, row.owner)}
        for i, a in enumerate(admitted):
            for dep in a.spec.depends_on:
                if dep not in in_batch and dep not in found:
                    raise InvalidRequest(
                        f"unknown dependency {dep!r}",
                        {"errors": [{"loc": ["depends_on"], "msg": f"no job {dep!r}"}], **_index(i, batch)},
                    )
        return {job_id: row.status for job_id, row in found.items()}

    @staticmethod
    def client_ids(admitted: Sequence[Admitted]) -> dict[str, int]:
        """Client-chosen job ids → their index in the batch."""
        return {a.spec.job_id: i for i, a in enumerate(admitted) if a.spec.job_id is not None}

    def resubmits(
        self, caller: Caller, admitted: Sequence[Admitted], existing: Mapping[str, JobRow], batch: bool
    ) -> dict[int, dict[str, Any]]:
        """Client ids already in use: the same spec again → that job's record (an
        idempotent resubmit); a different spec → ``conflict``. Client ids are one space
        for all users, and another user's job is never handed back: it is a ``conflict``."""
        out: dict[int, dict[str, Any]] = {}
        for i, a in enumerate(admitted):
            job_id = a.spec.job_id
            if job_id is None or job_id not in existing:
                continue
            row = existing[job_id]
            if row.spec_digest != a.row.spec_digest or not self.owners.sees(caller, row.owner):
                raise Conflict(f"job_id {job_id!r} is already used by a different job", {"job_id": job_id, **_index(i, batch)})
            out[i] = row.record()
        return out

    @staticmethod
    def initial_status(row: JobRow, known: Mapping[str, str], now: float) -> str:
        """Where a new job starts: ``completed`` when the result cache answered it,
        ``blocked`` on dependencies that have not all completed (completed is final: no
        need to block on those), ``scheduled`` until a future ``run_at``, else ``pending``."""
        if row.cached_from is not None:
            return "completed"
        if row.depends_on and not all(known.get(d) == "completed" for d in row.depends_on):
            return "blocked"
        if row.run_at is not None and row.run_at > now:
            return "scheduled"
        return "pending"


# Job ids need to be unique, not secret (a job of another user is refused by its owner,
# not hidden by its id): 64 random bits from a generator seeded once, without a system
# call per job.
_ids = random.Random(os.urandom(16))


def _new_job_id() -> str:
    return f"{_ids.getrandbits(64):016x}"


def _new_job_ids(n: int) -> list[str]:
    """``n`` new job ids, drawn in one call."""
    digits = _ids.randbytes(8 * n).hex()
    return [digits[i : i + 16] for i in range(0, 16 * n, 16)]


class _NoCounts:
    """No jobs counted (an Admission used only to validate specs)."""

    waiting = 0
    waiting_by_owner: Counter[int] = Counter()

    def completed_per_s(self, now: float) -> float:
        return 0.0


_SPEC_LIST = TypeAdapter(list[JobSpec])
_EMPTY_EXTRAS = len(msgpack.packb([{}, []], use_bin_type=True))
# A new job's record besides its args, labels, depends_on, id, task and queue: every key,
# numbers packed as floats, short fixed strings (status, mode, policy, on_interrupt), nils.
RECORD_FIXED = 512


def _index(i: int, batch: bool) -> dict[str, int]:
    return {"index": i} if batch else {}
