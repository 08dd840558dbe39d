"""pyrexisctl: the command line (:mod:`pyrexisctl.cli`) and the Python client library
(:mod:`pyrexisctl.client`, and :mod:`pyrexisctl.aio` for asyncio) of the PYREXIS job daemon.

Importing the package stays cheap (no pydantic, no asyncio), so the CLI starts fast:
``AsyncClient`` is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyrexisctl.client import Client, ConnectionLost, DaemonUnreachable

if TYPE_CHECKING:
    from pyrexisctl.aio import AsyncClient

__all__ = ["AsyncClient", "Client", "ConnectionLost", "DaemonUnreachable"]


def __getattr__(name: str) -> Any:
    # Only on a miss, so that ``import pyrexisctl.cli`` does not import asyncio.
    if name == "AsyncClient":
        from pyrexisctl.aio import AsyncClient

        return AsyncClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
