"""Coroutines the core starts and does not await (kept referenced, failures logged), and
work that must run to its end even when whoever awaits it is cancelled."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from protocol.errors import WireError

log = logging.getLogger(__name__)

T = TypeVar("T")


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

    async def to_the_end(self, work: Coroutine[Any, Any, T]) -> T:
        """Await ``work``, which goes on to its end even if the caller is cancelled
        meanwhile (its client went away): it runs in a task of its own, kept here. Its
        outcome is the caller's; once nobody is left to hear of it, a failure is logged.

        Work that queues a write must not stop half-way: the write commits whatever
        happens to its caller, so what follows the commit (the job launched or queued,
        its slot freed, its waiters woken) has to happen too."""
        # Like asyncio.shield, but the work's end answers the caller itself (shield's
        # done-callback would take one more loop turn on every command's path).
        answer: asyncio.Future[T] = asyncio.get_running_loop().create_future()

        async def run() -> None:
            try:
                result = await work
            except asyncio.CancelledError:  # shutdown's cancel_all
                answer.cancel()
                raise
            except Exception as exc:  # the caller's to hear, or the log's once it left
                if not answer.done():
                    answer.set_exception(exc)
                elif not isinstance(exc, WireError):  # wire errors are logged where raised
                    log.error("a command whose caller left failed", exc_info=exc)
            else:
                if not answer.done():
                    answer.set_result(result)

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await answer  # a cancelled caller cancels only this future

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
