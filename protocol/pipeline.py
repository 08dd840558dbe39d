"""The pipeline spec: the ``args`` of a job whose task is ``pipeline``.

A pipeline is one job: it reads items from its input, passes each through an ordered
list of stages, and keeps what the last stage produces. These models are shared by the
daemon (which validates the spec at submit, then checks the stages against its task
registry) and by clients that want to check a spec before sending it. Like a task's
args, a pipeline spec refuses unknown keys: a typo such as ``concurency`` is an error,
not a silently ignored setting.

Imported only where validation is needed; ``protocol/__init__`` does not import it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from protocol.status import PIPELINE_MODE, PIPELINE_TASK

__all__ = ["PIPELINE_MODE", "PIPELINE_TASK", "InputSpec", "PipelineSpec", "StageSpec", "spec_from", "stage_label"]

StageMode = Literal["thread", "process", "async", "shell"]
OnItemError = Literal["fail", "skip"]

MAX_STAGES = 32
MAX_CONCURRENCY = 1024
MAX_BATCH = 100_000
MAX_BUFFER = 1_000_000
MAX_PATH = 4096


class InputSpec(BaseModel):
    """Where the items come from: exactly one of ``items``, ``path`` or ``job``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    items: list[Any] | None = None  # the items themselves
    path: str | None = Field(default=None, min_length=1, max_length=MAX_PATH)  # a JSONL file the daemon reads
    job: str | None = Field(default=None, min_length=1, max_length=200)  # the outputs of this job

    @model_validator(mode="after")
    def _exactly_one(self) -> InputSpec:
        given = [name for name in ("items", "path", "job") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of items, path or job" + (f" (got {', '.join(given)})" if given else "")
            )
        return self


class StageSpec(BaseModel):
    """One stage: a registered task applied to each item (or each batch of items)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str = Field(min_length=1, max_length=200)
    name: str | None = Field(default=None, min_length=1, max_length=200)  # shown in figures; default: the task's name
    args: dict[str, Any] = Field(default_factory=dict)  # fixed keyword arguments of every call
    item: str | None = Field(default=None, min_length=1, max_length=200)  # the parameter that receives the item
    mode: StageMode | None = None  # default: the task's own
    concurrency: int = Field(default=1, ge=1, le=MAX_CONCURRENCY)
    batch: int | None = Field(default=None, ge=1, le=MAX_BATCH)
    window: float | None = Field(default=None, gt=0, le=3600)
    buffer: int | None = Field(default=None, ge=1, le=MAX_BUFFER)
    retries: int | None = Field(default=None, ge=0, le=100)  # default: the task's max_retries, else 0
    retry_delay: float = Field(default=0.1, ge=0, le=300)  # the first retry's pause; doubles, capped at 60 s
    timeout: float | None = Field(default=None, gt=0)  # per call


class PipelineSpec(BaseModel):
    """A pipeline: an input, ordered stages, where the outputs go, and the item policy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: InputSpec
    stages: list[StageSpec] = Field(min_length=1, max_length=MAX_STAGES)
    output: str | None = Field(default=None, min_length=1, max_length=MAX_PATH)  # a JSONL file; default: stored
    on_item_error: OnItemError = "fail"

    @model_validator(mode="after")
    def _absolute_paths(self) -> PipelineSpec:
        # The daemon has its own working directory: a relative path would mean another
        # file than the client meant. Clients resolve paths before they send them.
        for what, path in (("input.path", self.input.path), ("output", self.output)):
            if path is not None and not path.startswith("/"):
                raise ValueError(f"{what} must be an absolute path")
        return self


def stage_label(stage: StageSpec) -> str:
    """How a stage is named in figures and errors: its ``name``, else its task's."""
    return stage.name or stage.task


def spec_from(args: dict[str, Any]) -> PipelineSpec:
    """A pipeline job's args as its spec (they were validated at submit)."""
    return PipelineSpec.model_validate(args)
