"""The asyncio client library: :class:`AsyncClient` and :class:`AsyncStream`.

The same methods as the blocking :class:`~pyrexisctl.client.Client` (whose module
docstring describes both), as coroutines. This module imports ``asyncio``; the blocking
client, and the CLI with it, does not import this module, and
``pyrexisctl.client.AsyncClient`` still reaches it on first use.
"""

from __future__ import annotations

from pyrexisctl._async_io import AsyncStream
from pyrexisctl._async_ops import _AsyncOps

__all__ = ["AsyncClient", "AsyncStream"]


class AsyncClient(_AsyncOps):
    """An asyncio client on one Unix socket connection, with pipelining.

    Any number of coroutines may call it at once; each request gets its own id and the
    reader task matches answers to callers, so a slow ``wait`` never holds up a ``get``.
    It connects on first use (or with :meth:`connect` / ``async with AsyncClient() as c``).
    ``socket_path`` defaults to the contract's resolution: ``PYREXIS_SOCKET``, then the
    per-user default. Use it from one event loop at a time.
    """
