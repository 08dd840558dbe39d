"""Admission: a raw spec becomes a job row, or a clear error.

Pure given the task registry, the configuration and a clock: validation of the spec and
the task's args (pydantic, once per job: the validated args are what the job runs with),
defaults resolved job → task → daemon, the size budget that keeps a record within a
frame, the identity of a spec for idempotent resubmits, and the checks of a batch's
dependencies and client ids against what the store holds (the caller reads the store and
hands the rows in).
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
from pydantic import TypeAdapter, ValidationError

from protocol.errors import Conflict, InvalidRequest, UnknownTask
from protocol.models import JobSpec, validation_errors
from pyrexisd import dependencies
from pyrexisd.config import FRAME_ENVELOPE, Config
from pyrexisd.core.model import JobRow
from pyrexisd.tasks.registry import Registry, TaskDef


@dataclass(slots=True)
class Admitted:
    """A spec that passed validation, and the row it becomes."""

    spec: JobSpec
    task: TaskDef
    row: JobRow


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return [[k, _canonical(value[k])] for k in sorted(value, key=repr)]
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def spec_digest(spec: JobSpec) -> bytes:
    """Identity of a spec for idempotent resubmits: fields as sent, defaults filled in."""
    packed = msgpack.packb(_canonical(spec.model_dump()), use_bin_type=True)
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


class Admission:
    """Turns raw specs into rows; every refusal is an :class:`InvalidRequest` family error
    naming the field at fault (and, in a batch, the spec's ``index``)."""

    def __init__(self, registry: Registry, config: Config, clock: Callable[[], float]) -> None:
        self.registry = registry
        self.config = config
        self.clock = clock
        self._max_spec = config.max_spec

    def prepare(self, raw: Any, index: int | None = None) -> Admitted:
        """Validate one spec (its task, mode, args and size) and build its row."""
        where = {} if index is None else {"index": index}
        if not isinstance(raw, dict):
            raise InvalidRequest("a job spec must be a map", {"errors": [{"loc": [], "msg": "not a map"}], **where})
        try:
            spec = JobSpec.model_validate(raw)
        except ValidationError as exc:
            raise InvalidRequest("invalid job spec", {"errors": validation_errors(exc), **where}) from None
        return self._admit(spec, where)

    def _admit(self, spec: JobSpec, where: dict[str, int]) -> Admitted:
        """A valid spec's task, mode, args and size checked; its row built."""
        definition = self.registry.get(spec.task)
        if definition is None:
            raise UnknownTask(f"no task named {spec.task!r}", {"task": spec.task, **where})
        mode = spec.mode or definition.default_mode
        if mode not in definition.modes:
            raise InvalidRequest(
                f"task {spec.task!r} does not run in {mode} mode",
                {"errors": [{"loc": ["mode"], "msg": f"supported: {', '.join(definition.modes)}"}], **where},
            )
        if spec.job_id is not None and spec.job_id in spec.depends_on:
            raise InvalidRequest(
                f"job {spec.job_id!r} depends on itself",
                {"errors": [{"loc": ["depends_on"], "msg": "a dependency cycle"}], **where},
            )
        try:
            kwargs = TaskDef.model_kwargs(definition.validate_args(spec.args))
            args_blob = msgpack.packb(spec.args, use_bin_type=True)
            spec_size = len(args_blob) + (
                len(msgpack.packb([spec.labels, spec.depends_on], use_bin_type=True))
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
            job_id=spec.job_id or _new_job_id(),
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
        )
        return Admitted(spec, definition, row)

    def prepare_batch(self, raws: Sequence[Any], batch: bool) -> list[Admitted]:
        """Every spec of a submit (``batch``: of a ``submit_many``, errors name the index),
        checked together: the records fit one reply, no client id twice, no cycle."""
        try:
            # One validation of the whole list: much cheaper than one per spec.
            specs = _SPEC_LIST.validate_python(raws)
        except ValidationError:
            admitted = [self.prepare(raw, i if batch else None) for i, raw in enumerate(raws)]
            raise AssertionError("a batch that fails as a list passes spec by spec") from None
        admitted = [self._admit(spec, {"index": i} if batch else {}) for i, spec in enumerate(specs)]
        if batch:
            # An upper bound of the reply's size, without packing every record twice.
            size = sum(record_size_bound(a.row) for a in admitted)
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

    @staticmethod
    def external_dependencies(admitted: Sequence[Admitted]) -> list[str]:
        """The dependencies that are not specs of this batch: they must exist already."""
        in_batch = {a.spec.job_id for a in admitted if a.spec.job_id is not None}
        return sorted({d for a in admitted for d in a.spec.depends_on if d not in in_batch})

    @staticmethod
    def check_dependencies(admitted: Sequence[Admitted], found: Mapping[str, JobRow], batch: bool) -> dict[str, str]:
        """Refuse unknown dependencies; the statuses of the existing ones."""
        in_batch = {a.spec.job_id for a in admitted if a.spec.job_id is not None}
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

    @staticmethod
    def resubmits(admitted: Sequence[Admitted], existing: Mapping[str, JobRow], batch: bool) -> dict[int, dict[str, Any]]:
        """Client ids already in use: the same spec again → that job's record (an
        idempotent resubmit); a different spec → ``conflict``."""
        out: dict[int, dict[str, Any]] = {}
        for i, a in enumerate(admitted):
            job_id = a.spec.job_id
            if job_id is None or job_id not in existing:
                continue
            row = existing[job_id]
            if row.spec_digest != a.row.spec_digest:
                raise Conflict(f"job_id {job_id!r} is already used by a different job", {"job_id": job_id, **_index(i, batch)})
            out[i] = row.record()
        return out

    @staticmethod
    def initial_status(row: JobRow, known: Mapping[str, str], now: float) -> str:
        """Where a new job starts waiting: ``blocked`` on dependencies that have not all
        completed (completed is final: no need to block on those), ``scheduled`` until a
        future ``run_at``, else ``pending``."""
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


_SPEC_LIST = TypeAdapter(list[JobSpec])
_EMPTY_EXTRAS = len(msgpack.packb([{}, []], use_bin_type=True))
# A new job's record besides its args, labels, depends_on and ids: every key, numbers
# packed as floats, short fixed strings (status, mode, policy, on_interrupt), nils.
RECORD_FIXED = 512


def record_size_bound(row: JobRow) -> int:
    """At least the packed size of a just-admitted job's record (no result, no error)."""
    args = len(row.args_blob) if row.args_blob is not None else len(msgpack.packb(row.args, use_bin_type=True))
    extras = len(msgpack.packb([row.labels, row.depends_on], use_bin_type=True)) if row.labels or row.depends_on else _EMPTY_EXTRAS
    return RECORD_FIXED + args + extras + len(row.job_id) + len(row.task) + len(row.queue)


def _index(i: int, batch: bool) -> dict[str, int]:
    return {"index": i} if batch else {}
