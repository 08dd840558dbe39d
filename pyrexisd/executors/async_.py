"""Async mode: a coroutine on the daemon's own event loop.

A plain function declared for async mode runs inline on the loop: only for trivial
functions such as ``echo``, where a thread hop would cost more than the work.
"""

from __future__ import annotations

import asyncio

from pyrexisd.executors.base import CANCELLED, Executor, JobCall, Outcome
from pyrexisd.executors.thread import context_for


class AsyncExecutor(Executor):
    mode = "async"

    async def run(self, call: JobCall) -> Outcome:
        task = call.task
        try:
            kwargs = task.kwargs(call.args)
            if task.ctx_param:
                kwargs[task.ctx_param] = context_for(call, None)
            if not task.is_async:
                return Outcome.success(task.func(**kwargs))
            inner = asyncio.ensure_future(task.func(**kwargs))
        except Exception as exc:
            return Outcome.from_exception(exc)
        call.on_cancel(inner.cancel)
        try:
            result = await inner
        except asyncio.CancelledError:
            if call.cancelled and inner.cancelled():
                return CANCELLED
            raise  # the engine itself is being cancelled
        except Exception as exc:
            return Outcome.from_exception(exc)
        return CANCELLED if call.cancelled else Outcome.success(result)
