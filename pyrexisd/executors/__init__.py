"""Executors: thread, process, async, shell and dask, behind one interface."""

from pyrexisd.executors.base import Executor, JobCall, JobEvents, Outcome

__all__ = ["Executor", "JobCall", "JobEvents", "Outcome"]
