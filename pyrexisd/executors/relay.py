"""Events of attempts that run elsewhere (a worker process, a Dask worker), relayed to
the core in the order they were sent, and counted so that an attempt can be settled only
once its last event has arrived (the events and the result travel separately)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pyrexisd.executors.base import JobCall

log = logging.getLogger(__name__)

CATCH_UP = 5.0  # seconds to wait for a finished attempt's last events


class EventRelay:
    """Attempts by token; ``deliver`` hands each event to its attempt's events."""

    def __init__(self, what: str) -> None:
        self.what = what  # for the warning when events are lost
        self.calls: dict[int, JobCall] = {}
        self._received: dict[int, int] = {}  # token -> events delivered
        self._caught_up: dict[int, tuple[int, asyncio.Future[None]]] = {}

    def add(self, token: int, call: JobCall) -> None:
        self.calls[token] = call

    def remove(self, token: int) -> None:
        del self.calls[token]
        self._received.pop(token, None)

    def deliver(self, token: int, kind: str, payload: Any) -> None:
        call = self.calls.get(token)
        if call is None:
            return  # an attempt already ended (cancelled, its worker lost)
        count = self._received[token] = self._received.get(token, 0) + 1
        waiting = self._caught_up.get(token)
        if waiting is not None and count >= waiting[0] and not waiting[1].done():
            waiting[1].set_result(None)
        if call.cancelled:
            return
        if kind == "progress":
            call.events.progress(*payload)
        elif kind == "log":
            call.events.log("log", payload)
        elif kind == "output":
            call.events.output(payload)

    async def catch_up(self, token: int, sent: int) -> None:
        """Wait until the ``sent`` events of attempt ``token`` have been delivered."""
        if self._received.get(token, 0) >= sent:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._caught_up[token] = (sent, fut)
        try:
            await asyncio.wait_for(fut, CATCH_UP)
        except TimeoutError:
            log.warning("events of a %s job were lost on the way", self.what)
        finally:
            self._caught_up.pop(token, None)
