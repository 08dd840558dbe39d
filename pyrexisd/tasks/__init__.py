"""Tasks: the registry, the task context, the built-ins and task-module discovery."""

from pyrexisd.tasks.context import Fatal, Retry, TaskContext
from pyrexisd.tasks.registry import REGISTRY, Registry, TaskDef, make_task, task

__all__ = ["REGISTRY", "Fatal", "Registry", "Retry", "TaskContext", "TaskDef", "make_task", "task"]
