"""A pipeline's input, read lazily in chunks: the spec's items, a JSONL file, or the
stored outputs of another job.

Each item comes with its index (its *origin*: 0-based, in input order), the offset where
it starts and the offset of the next one, so a resume can seek straight back to the
first item it must read again: bytes in a file, indexes otherwise. A file is read and its
lines parsed on a thread, a chunk at a time; blank lines are not items. A line that is
not JSON becomes a :class:`BadItem` at its index, which the item policy then handles.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from pyrexisd.store import Store

CHUNK_BYTES = 256 * 1024  # read from a file at a time
CHUNK_ITEMS = 1000  # items from a list or another job's outputs at a time

Read = tuple[int, int, int, Any]  # (origin, offset, next offset, value or BadItem)


@dataclass(frozen=True, slots=True)
class BadItem:
    """An input line that is not one JSON value."""

    message: str


class SourceError(Exception):
    """The input cannot be read at all (a missing file, another user's file)."""


class Source(Protocol):
    known: int | None  # how many items the input holds, once known

    async def open(self) -> None: ...

    def read(self, origin: int, offset: int) -> AsyncIterator[list[Read]]:
        """Chunks of items from ``origin``, which starts at ``offset``."""
        ...

    def close(self) -> None: ...


class ItemsSource:
    """The items listed in the spec."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items
        self.known: int | None = len(items)

    async def open(self) -> None:
        return None

    async def read(self, origin: int, offset: int) -> AsyncIterator[list[Read]]:
        items = self.items
        for start in range(origin, len(items), CHUNK_ITEMS):
            yield [(i, i, i + 1, items[i]) for i in range(start, min(start + CHUNK_ITEMS, len(items)))]

    def close(self) -> None:
        return None


class JobOutputsSource:
    """The stored outputs of another job (``seq`` n is origin n - 1)."""

    def __init__(self, store: Store, job_id: str) -> None:
        self.store = store
        self.job_id = job_id
        self.known: int | None = None
        self._job_seq = 0

    async def open(self) -> None:
        row = await self.store.reads.get_job(self.job_id)
        if row is None:
            raise SourceError(f"the input job {self.job_id} is gone")
        self._job_seq = row.seq
        self.known = row.output_seq

    async def read(self, origin: int, offset: int) -> AsyncIterator[list[Read]]:
        since = origin + 1
        while True:
            page = await self.store.reads.read_outputs(self._job_seq, since, CHUNK_ITEMS)
            if not page:
                return
            yield [(o.seq - 1, o.seq - 1, o.seq, o.value) for o in page]
            since = page[-1].seq + 1

    def close(self) -> None:
        return None


class JsonlSource:
    """A JSONL file, one item per non-blank line. ``owner``: the uid whose file it must
    be, for a pipeline of a user who is not an admin (checked on the open descriptor)."""

    def __init__(self, path: str, owner: int | None = None) -> None:
        self.path = path
        self.owner = owner
        self.known: int | None = None
        self._fd: int | None = None

    async def open(self) -> None:
        self._fd, self.known = await asyncio.to_thread(self._open_and_count)

    def _open_and_count(self) -> tuple[int, int]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise SourceError(f"cannot open the input {self.path}: {exc.strerror or exc}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise SourceError(f"the input {self.path} is not a regular file")
            if self.owner is not None and st.st_uid != self.owner:
                raise SourceError(f"the input {self.path} is not a file of uid {self.owner}")
            count = 0
            with os.fdopen(os.dup(fd), "rb") as fh:
                for line in fh:
                    if not line.isspace():
                        count += 1
            return fd, count
        except BaseException:
            os.close(fd)
            raise

    async def read(self, origin: int, offset: int) -> AsyncIterator[list[Read]]:
        fd = self._fd
        assert fd is not None, "open() first"
        position = offset
        index = origin
        rest = b""
        while True:
            # Read and parsed on a thread: the loop only hands the items on.
            reads, rest, index, position, eof = await asyncio.to_thread(_next_chunk, fd, rest, index, position)
            if reads:
                yield reads
            if eof:
                return

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _next_chunk(fd: int, rest: bytes, index: int, position: int) -> tuple[list[Read], bytes, int, int, bool]:
    chunk = os.pread(fd, CHUNK_BYTES, position + len(rest))
    reads, rest, index, position = _parse(rest + chunk, index, position, final=not chunk)
    return reads, rest, index, position, not chunk


def _parse(data: bytes, index: int, position: int, final: bool) -> tuple[list[Read], bytes, int, int]:
    """The complete lines of ``data`` (which starts at byte ``position``) as items from
    ``index``; what is left of an unfinished last line, the next index and its position."""
    reads: list[Read] = []
    start = 0
    end = len(data)
    while start < end:
        nl = data.find(b"\n", start)
        if nl < 0:
            if not final:
                break
            nl = end
        line = data[start:nl]
        nxt = nl + 1
        if line.strip():
            try:
                value: Any = json.loads(line)
            except ValueError as exc:
                value = BadItem(f"input line is not one JSON value: {exc}")
            reads.append((index, position + start, position + min(nxt, end), value))
            index += 1
        start = nxt
    consumed = min(start, end)
    return reads, data[consumed:], index, position + consumed


def open_source(spec_input: Any, store: Store, owner: int | None) -> Source:
    """The source a pipeline spec's ``input`` names."""
    if spec_input.items is not None:
        return ItemsSource(spec_input.items)
    if spec_input.path is not None:
        return JsonlSource(spec_input.path, owner)
    return JobOutputsSource(store, spec_input.job)
