"""The task registry: ``@task`` turns a function into something the daemon can run.

A task's parameters (other than its context) become a pydantic model: it validates a
job's ``args`` at submit time, before anything is stored, and its JSON schema is what
the ``tasks`` op shows.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, get_type_hints

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model

from protocol.errors import InvalidRequest, PyrexisError
from protocol.models import validation_errors
from protocol.status import MODES
from pyrexisd.tasks.context import TaskContext

F = TypeVar("F", bound=Callable[..., Any])


class TaskDefinitionError(PyrexisError):
    """A task cannot be registered: a bad mode, a duplicate name, an odd signature.
    Raised at import time of a task module, never on the wire."""


@dataclass(frozen=True, slots=True)
class TaskDef:
    """A registered task: the function, its options and its args model."""

    name: str
    func: Callable[..., Any]
    modes: tuple[str, ...]
    default_mode: str
    max_retries: int | None
    timeout: float | None
    on_interrupt: str
    description: str
    args_model: type[BaseModel]
    ctx_param: str | None
    inputs_param: str | None
    is_async: bool
    module: str
    schema: dict[str, Any] = field(default_factory=dict)
    # Results are kept in the daemon's result cache (pyrexisd.core.cache), for
    # ``cache_ttl`` seconds (None: until evicted).
    cache: bool = False
    cache_ttl: float | None = None

    def validate_args(self, args: dict[str, Any]) -> BaseModel:
        """The args as the task's model, or ``invalid_request`` with field errors."""
        try:
            return self.args_model.model_validate(args)
        except ValidationError as exc:
            raise InvalidRequest(
                f"invalid args for task {self.name!r}",
                {"errors": validation_errors(exc, ("args",))},
            ) from None

    def kwargs(
        self, args: dict[str, Any], inputs: dict[str, Any] | None = None, validated: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Keyword arguments for the function (without the context): ``validated`` (what
        :meth:`model_kwargs` made of these args) or the args validated now."""
        out = dict(validated) if validated is not None else self.model_kwargs(self.validate_args(args))
        if self.inputs_param is not None:
            out[self.inputs_param] = dict(inputs or {})
        return out

    def validate_args_many(self, many: list[dict[str, Any]]) -> list[BaseModel] | None:
        """The args of several jobs validated in one call (cheaper than one by one), or
        None if any of them is invalid: :meth:`validate_args` then names the fault."""
        adapter = _LIST_ADAPTERS.get(self.args_model)
        if adapter is None:
            adapter = _LIST_ADAPTERS[self.args_model] = TypeAdapter(list[self.args_model])  # type: ignore[name-defined]
        try:
            return adapter.validate_python(many)
        except ValidationError:
            return None

    @staticmethod
    def model_kwargs(model: BaseModel) -> dict[str, Any]:
        """The validated args as the function's keyword arguments."""
        # A model's fields are its instance dict (extras, if a model allowed them, live in
        # ``__pydantic_extra__``); reading ``model_fields`` per job costs more than the copy.
        return dict(model.__dict__)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "modes": list(self.modes),
            "default_mode": self.default_mode,
            "description": self.description,
            "schema": self.schema,
            "cache": self.cache,
            "cache_ttl": self.cache_ttl,
        }


# A task's args model → a validator of a list of them (made at a task's first batch).
_LIST_ADAPTERS: dict[type[BaseModel], TypeAdapter[list[BaseModel]]] = {}


class Registry:
    """Task name → :class:`TaskDef`. One per daemon (and per process worker)."""

    def __init__(self) -> None:
        self._tasks: dict[str, TaskDef] = {}

    def add(self, definition: TaskDef) -> None:
        existing = self._tasks.get(definition.name)
        if existing is not None and existing.func is not definition.func:
            raise TaskDefinitionError(
                f"task name {definition.name!r} is defined twice: in {existing.module} "
                f"and in {definition.module}"
            )
        self._tasks[definition.name] = definition

    def get(self, name: str) -> TaskDef | None:
        return self._tasks.get(name)

    def remove(self, name: str) -> None:
        self._tasks.pop(name, None)

    def all(self) -> list[TaskDef]:
        return sorted(self._tasks.values(), key=lambda t: t.name)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks


REGISTRY = Registry()


INPUTS_PARAM = "inputs"  # a parameter of this name receives the dependencies' results


def _args_model(name: str, func: Callable[..., Any]) -> tuple[type[BaseModel], str | None, str | None]:
    sig = inspect.signature(func)
    try:
        hints = get_type_hints(func, include_extras=True)
    except Exception:  # unresolvable forward references: treat as Any
        hints = {}
    fields: dict[str, Any] = {}
    ctx_param: str | None = None
    inputs_param: str | None = None
    for pname, param in sig.parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TaskDefinitionError(f"task {name!r}: *args/**kwargs are not supported")
        annotation = hints.get(pname, Any)
        if annotation is TaskContext or pname == "ctx":
            ctx_param = pname
            continue
        if pname == INPUTS_PARAM:
            inputs_param = pname
            continue
        default = ... if param.default is param.empty else param.default
        fields[pname] = (annotation, default)
    model_name = "".join(part.capitalize() for part in name.replace("-", "_").split("_")) + "Args"
    model = create_model(
        model_name or "TaskArgs",
        __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=False),
        **fields,
    )
    return model, ctx_param, inputs_param


def make_task(
    func: Callable[..., Any],
    *,
    name: str | None = None,
    mode: str | None = None,
    modes: tuple[str, ...] | list[str] | None = None,
    max_retries: int | None = None,
    timeout: float | None = None,
    on_interrupt: str | None = None,
    description: str | None = None,
    cache: bool = False,
    cache_ttl: float | None = None,
) -> TaskDef:
    """Build the :class:`TaskDef` of ``func`` (see :func:`task` for the options)."""
    task_name = name or func.__name__
    is_async = inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)
    default_mode = mode or ("async" if is_async else "thread")
    allowed = tuple(modes) if modes else (default_mode,)
    for m in (*allowed, default_mode):
        if m not in MODES:
            raise TaskDefinitionError(f"task {task_name!r}: unknown mode {m!r}")
    if default_mode not in allowed:
        allowed = (default_mode, *allowed)
    if is_async and set(allowed) - {"async"}:
        raise TaskDefinitionError(f"task {task_name!r}: a coroutine function runs in async mode only")
    if on_interrupt not in (None, "retry", "fail"):
        raise TaskDefinitionError(f"task {task_name!r}: on_interrupt must be 'retry' or 'fail'")
    if cache_ttl is not None and not cache_ttl > 0:
        raise TaskDefinitionError(f"task {task_name!r}: cache_ttl must be a number of seconds > 0")
    if (cache or cache_ttl is not None) and not hasattr(inspect.unwrap(func), "__code__"):
        # The cache's key is a digest of the function's code: there must be some.
        raise TaskDefinitionError(f"task {task_name!r}: a cached task must be a Python function")
    model, ctx_param, inputs_param = _args_model(task_name, func)
    doc = description if description is not None else inspect.getdoc(func) or ""
    return TaskDef(
        name=task_name,
        func=func,
        modes=allowed,
        default_mode=default_mode,
        max_retries=max_retries,
        timeout=timeout,
        on_interrupt=on_interrupt or "retry",
        description=doc.strip().splitlines()[0] if doc.strip() else "",
        args_model=model,
        ctx_param=ctx_param,
        inputs_param=inputs_param,
        is_async=is_async,
        module=getattr(func, "__module__", "?"),
        schema=model.model_json_schema(),
        cache=cache or cache_ttl is not None,
        cache_ttl=cache_ttl,
    )


def task(
    name: str | Callable[..., Any] | None = None,
    *,
    mode: str | None = None,
    modes: tuple[str, ...] | list[str] | None = None,
    max_retries: int | None = None,
    timeout: float | None = None,
    on_interrupt: str | None = None,
    description: str | None = None,
    cache: bool = False,
    cache_ttl: float | None = None,
    registry: Registry | None = None,
) -> Callable[[F], F]:
    """Register a function or coroutine function as a PYREXIS task.

    ``mode`` is the default execution mode (``async`` for a coroutine function, else
    ``thread``); ``modes`` lists every mode a job may ask for. ``max_retries``,
    ``timeout`` and ``on_interrupt`` are the defaults for jobs that do not set them.
    ``cache=True`` keeps the task's results in the daemon's result cache, keyed by the
    task's code and its validated args: a job with the same args, submitted while the
    code is unchanged, completes at once with the stored result. ``cache_ttl`` (seconds)
    limits how long a result is reused, and implies ``cache``.
    The function itself is returned unchanged, so it can still be called directly and
    pickled by reference for process mode. ``@task`` without parentheses works too.
    """
    if callable(name):
        return task()(name)

    def decorate(func: F) -> F:
        (registry or REGISTRY).add(
            make_task(
                func,
                name=name if isinstance(name, str) else None,
                mode=mode,
                modes=modes,
                max_retries=max_retries,
                timeout=timeout,
                on_interrupt=on_interrupt,
                description=description,
                cache=cache,
                cache_ttl=cache_ttl,
            )
        )
        return func

    return decorate
