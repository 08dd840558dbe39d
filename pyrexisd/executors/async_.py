"""Async mode: a coroutine on the daemon's own event loop.

A plain function declared for async mode runs inline on the loop: only for trivial
functions such as ``echo``, where a thread hop would cost more than the work.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from typing import Any

from pyrexisd.executors.base import (
    CANCELLED,
    Executor,
    JobCall,
    Outcome,
    TaskExit,
    contained,
    generator_result,
)
from pyrexisd.executors.thread import context_for


async def _drain_async_generator(gen: AsyncIterator[Any], call: JobCall) -> list[Any]:
    items: list[Any] = []
    async for item in gen:
        items.append(item)
        call.events.output(item)
    return items


class AsyncExecutor(Executor):
    mode = "async"

    async def run(self, call: JobCall) -> Outcome:
        task = call.task
        try:
            kwargs = call.function_kwargs()
            if task.ctx_param:
                kwargs[task.ctx_param] = context_for(call, None)
            try:
                produced = task.func(**kwargs)
            except (SystemExit, KeyboardInterrupt) as exc:
                raise TaskExit(exc) from exc
            if inspect.isgenerator(produced):
                # Inline on the loop, like any plain function declared for async mode.
                items: list[Any] = []
                try:
                    while True:
                        item = next(produced)
                        items.append(item)
                        call.events.output(item)
                except StopIteration as stop:
                    return Outcome.success(generator_result(items, stop.value))
                except (SystemExit, KeyboardInterrupt) as exc:
                    raise TaskExit(exc) from exc
            if inspect.isasyncgen(produced):
                inner = asyncio.ensure_future(contained(_drain_async_generator(produced, call)))
            elif inspect.isawaitable(produced):
                inner = asyncio.ensure_future(contained(produced))
            else:
                return Outcome.success(produced)
        except Exception as exc:
            return Outcome.from_exception(exc)
        call.on_cancel(inner.cancel)
        try:
            result = await inner
        except asyncio.CancelledError:
            if call.cancelled and inner.cancelled():
                return CANCELLED
            raise  # dispatch itself is being cancelled (shutdown)
        except Exception as exc:
            return Outcome.from_exception(exc)
        return CANCELLED if call.cancelled else Outcome.success(result)
