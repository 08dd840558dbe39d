"""Pydantic models of the contract's JobSpec and Job record.

Imported only where validation is needed (the daemon, and clients that want typed
records); ``protocol/__init__`` does not import it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Mode = Literal["thread", "process", "async", "shell", "dask", "pipeline"]
DependencyPolicy = Literal["all_completed", "all_terminal"]
OnInterrupt = Literal["retry", "fail"]

MAX_ID_LENGTH = 200
MAX_NAME_LENGTH = 200


class JobSpec(BaseModel):
    """What a client asks to run. Unknown keys are ignored (protocol evolution rules)."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    task: str = Field(min_length=1, max_length=MAX_NAME_LENGTH)
    args: dict[str, Any] = Field(default_factory=dict)
    job_id: str | None = Field(default=None, min_length=1, max_length=MAX_ID_LENGTH)
    priority: int = Field(default=0, ge=-1000, le=1000)
    queue: str = Field(default="default", min_length=1, max_length=MAX_NAME_LENGTH)
    mode: Mode | None = None
    timeout: float | None = Field(default=None, gt=0)
    max_retries: int | None = Field(default=None, ge=0, le=10_000)
    depends_on: list[str] = Field(default_factory=list)
    dependency_policy: DependencyPolicy = "all_completed"
    run_at: float | None = None
    delay: float | None = Field(default=None, ge=0)
    labels: dict[str, str] = Field(default_factory=dict)
    on_interrupt: OnInterrupt | None = None
    # False: not answered from the task's result cache (the job runs; its result still
    # refreshes the cache). An agreed addition to the contract.
    cache: bool = True

    @model_validator(mode="after")
    def _run_at_or_delay(self) -> JobSpec:
        if self.run_at is not None and self.delay is not None:
            raise ValueError("give run_at or delay, not both")
        return self


class JobError(BaseModel):
    type: str
    message: str
    retryable: bool


class Progress(BaseModel):
    fraction: float | None = None
    message: str | None = None


class Job(BaseModel):
    """A job record as the daemon sends it; every key is present, nil when it does not apply."""

    model_config = ConfigDict(extra="ignore")

    job_id: str
    task: str
    args: dict[str, Any]
    queue: str
    priority: int
    mode: str
    status: str
    attempts: int
    max_retries: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    run_at: float | None
    result: Any = None
    error: JobError | None
    progress: Progress | None
    depends_on: list[str]
    dependency_policy: str
    labels: dict[str, str]
    on_interrupt: str
    timeout: float | None = None
    cached: bool = False
    cached_from: str | None = None


def validation_errors(exc: Any, prefix: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """A pydantic ``ValidationError`` as the contract's ``details.errors`` list."""
    return [
        {"loc": [*prefix, *err.get("loc", ())], "msg": str(err.get("msg", ""))}
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]
