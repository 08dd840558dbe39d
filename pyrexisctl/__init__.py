"""pyrexisctl: the command line (:mod:`pyrexisctl.cli`) and the Python client library
(:mod:`pyrexisctl.client`) of the PYREXIS job daemon.

Importing the package stays cheap (no pydantic, no asyncio), so the CLI starts fast.
"""

from pyrexisctl.client import AsyncClient, Client, ConnectionLost, DaemonUnreachable

__all__ = ["AsyncClient", "Client", "ConnectionLost", "DaemonUnreachable"]
