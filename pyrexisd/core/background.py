"""Coroutines the core starts and does not await: kept referenced, failures logged."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from protocol.errors import WireError

log = logging.getLogger(__name__)


class Background:
    """Holds the core's fire-and-forget tasks so none is garbage-collected mid-run, logs
    the ones that fail with a bug, and cancels what is left at shutdown."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        # A wire error (a storage error, say) was already logged where it was handled.
        if exc is not None and not isinstance(exc, WireError):
            log.error("background task failed", exc_info=exc)

    def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
