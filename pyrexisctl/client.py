"""The Python library for talking to ``pyrexisd``: :class:`Client` and :class:`AsyncClient`.

Both speak protocol v1 (``shared/design/protocol-v1.md``) over one Unix socket connection
and offer the same methods. :class:`AsyncClient` (in :mod:`pyrexisctl.aio`) pipelines:
any number of requests may be in flight at once, and a reader task hands each response
and stream event to whoever waits for that id. :class:`Client` is a plain blocking socket
for scripts; it sends one request at a time but still keeps streams it has opened fed
while it waits for other answers.

Errors the daemon answers with are raised as the classes of :mod:`protocol.errors`
(``NotFound``, ``InvalidState``, ...: the ``WireError`` family, each with its ``code``). A
daemon that cannot be reached raises :class:`DaemonUnreachable`; a connection that breaks
afterwards raises :class:`ConnectionLost` (a subclass, so one ``except DaemonUnreachable``
covers both). Both are :class:`~protocol.errors.PyrexisError` but not ``WireError``: the
daemon never sent them, so they have no code.

Streaming ops return a :class:`Stream` (an iterator of event maps; :class:`AsyncStream` for
``async for``) whose ``result`` holds the final frame's result once iteration stops:
:meth:`Client.wait_events` (the job's events, then its terminal record),
:meth:`Client.follow_logs` (log lines as they are written, then ``{"next": seq}``) and
:meth:`Client.watch` (matching events until closed). ``stream.close()`` ends one early.

Neither client is thread-safe: use one per thread (or per event loop).

How the code is laid out: the ops are written once, as coroutines, in ``_async_ops``; the
blocking ones in ``_sync_ops`` are generated from them (``python -m
pyrexisctl._generate_sync``). Each sits on a hand-written connection core, ``_async_io``
or ``_sync_io``, and both cores share the I/O-free ``_wire``. This module imports
neither ``asyncio`` nor the asyncio client until ``AsyncClient`` or ``AsyncStream`` is
first looked up here, so the CLI starts without them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyrexisctl._sync_io import Stream
from pyrexisctl._sync_ops import _SyncOps
from pyrexisctl._wire import (
    DEFAULT_CONNECT_TIMEOUT,
    UNSET,
    ConnectionLost,
    DaemonUnreachable,
    Event,
    Record,
    RecordList,
)

if TYPE_CHECKING:
    from pyrexisctl.aio import AsyncClient, AsyncStream

# DEFAULT_CONNECT_TIMEOUT and RecordList were importable from here when this module held
# everything; listed so that they stay so.
__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "UNSET",
    "AsyncClient",
    "AsyncStream",
    "Client",
    "ConnectionLost",
    "DaemonUnreachable",
    "Event",
    "Record",
    "RecordList",
    "Stream",
]


class Client(_SyncOps):
    """A blocking client on one Unix socket connection.

    It connects on first use (or explicitly with :meth:`connect` / ``with Client() as c``).
    ``socket_path`` defaults to the contract's resolution: ``PYREXIS_SOCKET``, then the
    per-user default. Not thread-safe.
    """


_ASYNC_NAMES = frozenset({"AsyncClient", "AsyncStream"})


def __getattr__(name: str) -> Any:
    # Only on a miss: the asyncio client costs the import of asyncio, which a script that
    # uses the blocking client (and the CLI) never pays for.
    if name in _ASYNC_NAMES:
        from pyrexisctl import aio

        return getattr(aio, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
