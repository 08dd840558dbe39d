"""A pipeline spec made concrete against the task registry, or a clear refusal.

Admission calls :func:`admit` once per submit, so a bad spec is an ``invalid_request``
naming the field at fault (``["args", "stages", 1, "batch"]``) before anything is
stored; the runner calls :func:`build_plan` again when the job starts (the registry may
have changed across a restart).
"""

from __future__ import annotations

import inspect
import os
import stat
from collections.abc import Collection
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import TypeAdapter, ValidationError

from protocol.errors import InvalidRequest, Unauthorized, UnknownTask
from protocol.models import JobSpec, validation_errors
from protocol.pipeline import PipelineSpec, StageSpec, stage_label
from pyrexisd.retry import Backoff
from pyrexisd.tasks.registry import INPUTS_PARAM, Registry, TaskDef

RETRY_CAP = 60.0  # seconds: the longest pause between two tries of one item


@dataclass(frozen=True, slots=True)
class StagePlan:
    """One stage, ready to run: every default resolved."""

    index: int
    name: str
    task: TaskDef
    mode: str
    args: dict[str, Any]  # the fixed keyword arguments
    item_param: str | None  # None for a shell stage: the item is its stdin
    concurrency: int
    batch: int | None
    window: float | None
    buffer: int
    retries: int
    backoff: Backoff
    timeout: float | None
    fans_out: bool  # a generator task: any number of values per item

    @property
    def batched(self) -> bool:
        """Whether the task gets a list of items per call."""
        return self.batch is not None or self.window is not None

    @property
    def take(self) -> int:
        """How many items one call takes at most."""
        if self.batch is not None:
            return self.batch
        return self.buffer if self.window is not None else 1


@dataclass(frozen=True, slots=True)
class PipelinePlan:
    spec: PipelineSpec
    stages: tuple[StagePlan, ...]

    @property
    def uses_shell(self) -> bool:
        return any(s.mode == "shell" for s in self.stages)


def _refuse(loc: list[Any], msg: str) -> InvalidRequest:
    return InvalidRequest(f"invalid pipeline: {'.'.join(map(str, loc[1:]))}: {msg}", {"errors": [{"loc": loc, "msg": msg}]})


def build_plan(spec: PipelineSpec, registry: Registry) -> PipelinePlan:
    """Every stage's task, mode, item parameter, bounds and defaults, or ``invalid_request``
    (``unknown_task`` for a task that is not registered)."""
    return PipelinePlan(spec, tuple(_stage(i, s, registry) for i, s in enumerate(spec.stages)))


def _stage(index: int, stage: StageSpec, registry: Registry) -> StagePlan:
    loc: list[Any] = ["args", "stages", index]
    definition = registry.get(stage.task)
    if definition is None:
        raise UnknownTask(f"stage {index}: no task named {stage.task!r}", {"task": stage.task, "errors": [{"loc": [*loc, "task"], "msg": "unknown task"}]})
    mode = stage.mode or definition.default_mode
    if mode not in definition.modes:
        raise _refuse([*loc, "mode"], f"task {stage.task!r} does not run in {mode} mode (supported: {', '.join(definition.modes)})")
    fans_out = inspect.isgeneratorfunction(definition.func) or inspect.isasyncgenfunction(definition.func)
    batched = stage.batch is not None or stage.window is not None
    if batched and fans_out:
        raise _refuse([*loc, "batch"], "a batched stage returns one value per item: a generator task cannot be batched")
    buffer = stage.buffer if stage.buffer is not None else 2 * stage.concurrency * (stage.batch or 1)
    if stage.batch is not None and buffer < stage.batch:
        raise _refuse([*loc, "buffer"], f"the buffer ({buffer}) must hold at least one batch ({stage.batch})")
    if mode == "shell":
        if stage.item is not None:
            raise _refuse([*loc, "item"], "a shell stage reads its item on stdin: it has no item parameter")
        item_param = None
        args = _validated(definition, stage.args, [*loc, "args"])
    else:
        item_param = _item_param(definition, stage, loc)
        _check_fixed_args(definition, stage.args, item_param, [*loc, "args"])
        args = dict(stage.args)
    retries = stage.retries if stage.retries is not None else (definition.max_retries or 0)
    return StagePlan(
        index=index,
        name=stage_label(stage),
        task=definition,
        mode=mode,
        args=args,
        item_param=item_param,
        concurrency=stage.concurrency,
        batch=stage.batch,
        window=stage.window,
        buffer=buffer,
        retries=retries,
        backoff=Backoff(base=stage.retry_delay, cap=RETRY_CAP),
        timeout=stage.timeout if stage.timeout is not None else definition.timeout,
        fans_out=fans_out,
    )


def _validated(definition: TaskDef, args: dict[str, Any], loc: list[Any]) -> dict[str, Any]:
    try:
        return TaskDef.model_kwargs(definition.args_model.model_validate(args))
    except ValidationError as exc:
        raise InvalidRequest(
            f"invalid args for the stage's task {definition.name!r}", {"errors": validation_errors(exc, tuple(loc))}
        ) from None


def _item_param(definition: TaskDef, stage: StageSpec, loc: list[Any]) -> str:
    """The parameter that receives each item: named by the stage, else the only required
    parameter the stage's args leave open, else the only open one, else ``item``."""
    fields = definition.args_model.model_fields
    if stage.item is not None:
        if stage.item not in fields:
            raise _refuse([*loc, "item"], f"task {definition.name!r} has no parameter {stage.item!r}")
        return stage.item
    open_params = [name for name in fields if name not in stage.args and name != INPUTS_PARAM]
    required = [name for name in open_params if fields[name].is_required()]
    for candidates in (required, open_params):
        if len(candidates) == 1:
            return candidates[0]
    if "item" in open_params:
        return "item"
    why = "has no parameter left for it" if not open_params else f"leaves {', '.join(open_params)} open"
    raise _refuse([*loc, "item"], f"say which parameter receives the item: task {definition.name!r} {why}")


def _check_fixed_args(definition: TaskDef, args: dict[str, Any], item_param: str, loc: list[Any]) -> None:
    """The stage's fixed args checked now, field by field (the item comes at run time)."""
    fields = definition.args_model.model_fields
    errors: list[dict[str, Any]] = []
    for name, value in args.items():
        if name == item_param:
            errors.append({"loc": [*loc, name], "msg": "this parameter receives the item"})
            continue
        field = fields.get(name)
        if field is None:
            errors.append({"loc": [*loc, name], "msg": f"task {definition.name!r} has no such parameter"})
            continue
        annotation: Any = field.annotation
        adapter: TypeAdapter[Any] = TypeAdapter(Annotated[annotation, *field.metadata] if field.metadata else annotation)
        try:
            adapter.validate_python(value)
        except ValidationError as exc:
            errors.extend(validation_errors(exc, (*loc, name)))
    for name, field in fields.items():
        if field.is_required() and name != item_param and name not in args:
            errors.append({"loc": [*loc, name], "msg": "required by the stage's task"})
    if errors:
        raise InvalidRequest(f"invalid args for the stage's task {definition.name!r}", {"errors": errors})


# -- admission ----------------------------------------------------------------------------
def admit(
    spec: JobSpec, registry: Registry, admin: bool, uid: int, user_tasks: Collection[str]
) -> JobSpec:
    """A pipeline job's spec checked (its args are a valid :class:`PipelineSpec`
    already): its stages against the registry and what the caller may run, its files
    against what the caller may read and write. The outputs of another job make that job
    a dependency of the pipeline: the spec comes back with it in ``depends_on``."""
    pipeline = PipelineSpec.model_validate(spec.args)
    plan = build_plan(pipeline, registry)
    if not admin:
        for stage in plan.stages:
            if stage.task.name not in user_tasks:
                raise Unauthorized(
                    f"task {stage.task.name!r} is not open to other users of this daemon", {"task": stage.task.name}
                )
        _check_files(pipeline, uid)
    source = pipeline.input.job
    if source is not None and source not in spec.depends_on:
        return spec.model_copy(update={"depends_on": [*spec.depends_on, source]})
    return spec


def _check_files(spec: PipelineSpec, uid: int) -> None:
    """A caller that is not an admin names only files of its own: the daemon reads and
    writes them with its own rights, which may be more than the caller's."""
    if spec.input.path is not None:
        problem = owned_file_problem(spec.input.path, uid, must_exist=True)
        if problem:
            raise _refuse(["args", "input", "path"], problem)
    if spec.output is not None:
        problem = owned_file_problem(spec.output, uid, must_exist=False)
        if problem:
            raise _refuse(["args", "output"], problem)


def owned_file_problem(path: str, uid: int, must_exist: bool) -> str | None:
    """Why ``uid`` may not have the daemon use ``path`` (None if it may): an input must be
    a regular file of ``uid`` (not a link); an output must be made in a directory of
    ``uid``, and, if it is there already, be a regular file of ``uid``."""
    if not must_exist:
        try:
            parent = os.stat(os.path.dirname(path) or "/")
        except OSError as exc:
            return f"its directory cannot be used: {exc.strerror}"
        if not stat.S_ISDIR(parent.st_mode) or parent.st_uid != uid:
            return "not in a directory of yours"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "no such file" if must_exist else None
    except OSError as exc:
        return f"cannot be read: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid != uid:
        return "not your file"
    return None
