"""The HTTP listener's share of the daemon's start and stop (:mod:`pyrexisd.daemon`).

Checked first (the extra is installed; an address off the loopback comes with a token
file), bound with the protocol's socket before any job runs, served once the core is
ready. Nothing here imports FastAPI or uvicorn until the listener is built, so a daemon
without ``--http`` never loads them. Refusals are ``ValueError`` (bad settings) or
``OSError`` (the bind) with a message for one line; the daemon turns them into its
start-up error.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily, Metric

from pyrexisd.config import Config
from pyrexisd.handlers import Handlers
from pyrexisd.http import missing_extra
from pyrexisd.http.address import HttpAddress, read_token
from pyrexisd.server import Server

if TYPE_CHECKING:  # the listener's modules need the http extra: imported when used
    from pyrexisd.http.listener import HttpListener

log = logging.getLogger("pyrexisd")

SHUTDOWN_MARGIN = 5  # seconds past the daemon's own stop that open requests may take


class HttpSetup:
    """One ``--http`` listener, from its checks to its socket's removal."""

    def __init__(self, address: HttpAddress, token: bytes | None) -> None:
        self.address = address
        self.token = token
        self.sock: socket.socket | None = None
        self.shown = ""  # where it listens, as a URL (the port the kernel chose for port 0)

    def bind(self) -> None:
        """The listening socket (OSError when the address cannot be used)."""
        self.sock = self.address.bind()
        self.shown = self.address.shown(self.sock)

    def unbind(self) -> None:
        """Close the socket, and remove a Unix socket's file."""
        if self.sock is None:
            return
        self.sock.close()
        if self.address.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address.path)

    def listener(self, handlers: Handlers, config: Config, stop_wait: float) -> HttpListener:
        """The server on the bound socket; requests still open ``stop_wait`` seconds after
        the grace period (plus a margin) are cut at the stop."""
        from pyrexisd.http.guard import GuardSettings
        from pyrexisd.http.listener import HttpListener

        assert self.sock is not None
        settings = GuardSettings(
            token=self.token,
            max_body=config.http_max_body,
            rate=config.http_rate,
            check_host=self.token is None and not self.address.is_unix,
        )
        wait = math.ceil(config.grace + stop_wait) + SHUTDOWN_MARGIN
        return HttpListener(self.sock, handlers, settings, config.http_max_streams, wait)


def prepare_http(config: Config) -> HttpSetup:
    """Check ``--http`` before the daemon starts anything: the extra is installed, and an
    address other than the loopback or a Unix path comes with a token file."""
    assert config.http is not None
    hint = missing_extra()
    if hint is not None:
        raise ValueError(hint)
    address = HttpAddress.parse(config.http)
    token = None
    if config.http_token_file is not None:
        token = read_token(config.http_token_file)
    elif not address.is_local:
        raise ValueError(
            f"refusing to serve HTTP on {config.http} without --http-token-file: "
            "only loopback addresses and unix: paths are served without a token"
        )
    if token is None and not address.is_unix and os.geteuid() == 0:
        log.warning("HTTP on %s without a token: every local user may act as root through it "
                    "(use unix:/path or --http-token-file)", config.http)  # fmt: skip
    return HttpSetup(address, token)


def connection_figures(server: Server, http: HttpListener | None) -> list[Metric]:
    """The servers' share of the metrics: connections and streams open now."""
    conns = GaugeMetricFamily("pyrexis_connections", "Client connections open now.", labels=["transport"])
    streams = GaugeMetricFamily("pyrexis_streams", "Streams open now (wait with events, logs, watch).", labels=["transport"])
    conns.add_metric(["socket"], float(len(server.connections)))
    streams.add_metric(["socket"], float(sum(c.open_streams for c in server.connections)))
    if http is not None:
        conns.add_metric(["http"], float(http.connections))
        streams.add_metric(["http"], float(http.slots.metrics.http_streams))
    return [conns, streams]
