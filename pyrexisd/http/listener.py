"""uvicorn, run as one task of the daemon's event loop.

The daemon binds the listening socket itself, early (so a port in use or a bad path
fails the start with one line, and a Unix socket's owner-only mode is set by the umask
before any job runs), then hands it to uvicorn. uvicorn installs no signal handlers of
its own here: the daemon's handlers decide when to stop, and :meth:`HttpListener.stop`
tells uvicorn in the daemon's shutdown order (stop accepting with the socket server,
finish in the end, before the store closes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn

from pyrexisd.handlers import Handlers
from pyrexisd.http.app import build_app
from pyrexisd.http.guard import Guard, GuardSettings
from pyrexisd.http.sse import StreamSlots

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handling: the daemon owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpListener:
    """The HTTP API served on one listening socket, inside the running loop."""

    def __init__(self, sock: socket.socket, handlers: Handlers, settings: GuardSettings, max_streams: int,
                 shutdown_wait: int) -> None:  # fmt: skip
        metrics = handlers.service.metrics
        self.sock = sock
        self.slots = StreamSlots(max_streams, metrics)
        app = Guard(build_app(handlers, self.slots), settings, metrics)
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,  # the daemon's logging as it is
            log_level="warning",
            access_log=False,
            proxy_headers=False,  # the peer's address is the one the rate limit counts
            server_header=False,
            timeout_graceful_shutdown=shutdown_wait,
        )
        self.server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def connections(self) -> int:
        return len(self.server.server_state.connections)

    async def start(self) -> None:
        """Serve from now on (returns once the listener accepts)."""
        self._task = asyncio.ensure_future(self.server.serve(sockets=[self.sock]))
        while not self.server.started:
            if self._task.done():
                self._task.result()  # its failure, raised here
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)

    def stop_accepting(self) -> None:
        """Begin the stop: no new connections; requests in flight go on."""
        self.server.should_exit = True

    async def close(self) -> None:
        """End every connection (within the shutdown wait) and the server task."""
        self.server.should_exit = True
        task = self._task
        if task is None:
            self.sock.close()
            return
        try:
            await task
        except Exception:
            log.exception("the HTTP server failed")
