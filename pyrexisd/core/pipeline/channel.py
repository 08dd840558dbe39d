"""The bounded queue in front of a stage: the pipeline's backpressure.

A producer that finds the channel full waits until the stage takes something: a slow
stage slows the ones before it, and in the end the reader of the input, so memory holds
at most the channels' capacities whatever the number of items. A stage takes one item,
a batch of ``n``, or whatever arrived within a window; :meth:`close` says no more will
come, and takers then get what is left and finally an empty list.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

Unit = tuple[int, Any]  # (origin, value)


class Channel:
    __slots__ = ("capacity", "_items", "_closed", "_takers", "_putters")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[Unit] = deque()
        self._closed = False
        self._takers: list[asyncio.Future[None]] = []
        self._putters: list[asyncio.Future[None]] = []

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def offer(self, unit: Unit) -> bool:
        """Add ``unit`` if there is room now (the hot path: no coroutine); False if full."""
        if len(self._items) >= self.capacity:
            return False
        self._items.append(unit)
        if self._takers:
            _wake(self._takers)
        return True

    async def put(self, unit: Unit) -> None:
        """Add ``unit``, waiting while the channel is full."""
        while len(self._items) >= self.capacity:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._putters.append(fut)
            await fut
        self._items.append(unit)
        if self._takers:
            _wake(self._takers)

    def close(self) -> None:
        """Nothing more will be put: takers get what is left, then an empty list."""
        self._closed = True
        _wake(self._takers)

    async def take(self, n: int, window: float | None) -> list[Unit]:
        """Up to ``n`` units: as soon as ``n`` are there (or the channel is closed), or,
        with a ``window``, whatever arrived within ``window`` seconds of the first.
        An empty list means closed and drained."""
        items = self._items
        while not items and not self._closed:
            await self._wait_for_items(None)
        if n > 1 and len(items) < n and not self._closed:
            loop = asyncio.get_running_loop()
            deadline = None if window is None else loop.time() + window
            while len(items) < n and not self._closed:
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    break
                await self._wait_for_items(left)
        count = min(n, len(items))
        taken = [items.popleft() for _ in range(count)]
        if taken and self._putters:
            _wake(self._putters)
        return taken

    async def _wait_for_items(self, timeout: float | None) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._takers.append(fut)
        if timeout is None:
            await fut
            return
        handle = asyncio.get_running_loop().call_later(timeout, _resolve, fut)
        try:
            await fut
        finally:
            handle.cancel()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _wake(waiters: list[asyncio.Future[None]]) -> None:
    """Wake every waiter: each looks again (there are at most a stage's workers)."""
    pending = waiters[:]
    waiters.clear()
    for fut in pending:
        _resolve(fut)
