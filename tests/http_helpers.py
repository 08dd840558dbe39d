"""Helpers of the HTTP tests: where a daemon's listener is, and reading Server-Sent Events."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
from conftest import Daemon, wait_until

HTTP_TASKS = ("--tasks", "sample_tasks", "--tasks", "http_tasks")


def http_url(daemon: Daemon, timeout: float = 30.0) -> str:
    """The URL the daemon's log says its HTTP listener serves (port 0 → the kernel's)."""

    def find() -> str | None:
        match = re.search(r"HTTP API and dashboard on (\S+)", daemon.log())
        return match.group(1) if match else None

    return wait_until(find, timeout, 0.02, "the HTTP listener's address in the log")  # type: ignore[no-any-return]


def sse_events(response: httpx.Response) -> Iterator[tuple[str, Any, str | None]]:
    """``(event name, data, id)`` of each message of an SSE response, as they come."""
    name, data, ident = "message", "", None
    for line in response.iter_lines():
        if line == "":
            if data:
                yield name, json.loads(data), ident
            name, data, ident = "message", "", None
        elif line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data += line[6:]
        elif line.startswith("id: "):
            ident = line[4:]


def read_until_end(response: httpx.Response) -> tuple[list[tuple[str, Any, str | None]], dict[str, Any]]:
    """Every event of a stream and the data of its ``end`` message."""
    events = []
    for name, data, ident in sse_events(response):
        if name == "end":
            return events, data
        events.append((name, data, ident))
    raise AssertionError(f"the stream broke off without an end message after {events}")
