"""Where a pipeline's outputs go: stored as the job's outputs, or into a JSONL file.

Outputs wait in the sink until the next checkpoint, which makes them durable in the same
commit as the state that covers them: stored outputs are written with the checkpoint's
row; a file's new lines are written and fsynced first, and the checkpoint records the
file's length. A resume truncates the file to that length, so lines written after the
last checkpoint are written again once, never twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from dataclasses import dataclass, field
from typing import Any, Protocol

from protocol.errors import StorageError
from pyrexisd.core.model import JobRow, OutputItem, stored_problem

# One encoder made once: json.dumps with options builds a new one per call.
JSON_LINE = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


class SinkError(Exception):
    """The output cannot be opened (another user's file, a directory in the way)."""


@dataclass(slots=True)
class Captured:
    """Outputs taken for one checkpoint."""

    count: int = 0
    items: list[OutputItem] = field(default_factory=list)  # stored outputs, seqs assigned
    data: bytes = b""  # file lines


class Sink(Protocol):
    total: int  # outputs kept so far, across attempts
    offset: int  # a file's committed length (0 for stored outputs)

    @property
    def pending(self) -> int:
        """Outputs waiting for the next checkpoint."""
        ...

    async def open(self) -> None: ...

    def accept(self, value: Any) -> str | None:
        """Take ``value``, or say why it cannot be kept."""
        ...

    def capture(self, now: float) -> Captured: ...

    def after(self, captured: Captured) -> tuple[int, int]:
        """The file's length and the outputs kept once ``captured`` is persisted."""
        ...

    async def persist(self, captured: Captured) -> None: ...

    def give_back(self, captured: Captured) -> None:
        """A checkpoint could not commit: its outputs go with the next one."""
        ...

    def close(self) -> None: ...


class StoredSink:
    """Outputs stored with the job, seq by seq, and sent to watchers as ``output`` events."""

    def __init__(self, row: JobRow, max_result: int) -> None:
        self.row = row
        self.max_result = max_result
        self.values: list[Any] = []
        self.retry: list[OutputItem] = []
        self.total = row.output_seq
        self.offset = 0

    @property
    def pending(self) -> int:
        return len(self.values) + len(self.retry)

    async def open(self) -> None:
        return None

    def accept(self, value: Any) -> str | None:
        problem = stored_problem(value, "the output", self.max_result)
        if problem is not None:
            return problem.message
        self.values.append(value)
        return None

    def capture(self, now: float) -> Captured:
        # Seqs are given at the checkpoint, which writes them with the row's output_seq:
        # a seq never committed was never shown, so a resume may give it again.
        row = self.row
        items = self.retry
        self.retry = []
        for value in self.values:
            row.output_seq += 1
            items.append(OutputItem(row.seq, row.output_seq, value, now))
        self.values = []
        self.total = row.output_seq
        return Captured(len(items), items)

    def after(self, captured: Captured) -> tuple[int, int]:
        return 0, self.total

    async def persist(self, captured: Captured) -> None:
        return None

    def give_back(self, captured: Captured) -> None:
        self.retry = captured.items + self.retry

    def close(self) -> None:
        return None


class FileSink:
    """Outputs as JSON lines in a file, from byte ``offset`` (what the last checkpoint
    recorded: anything after it is cut). ``owner``: the uid whose file it must be."""

    def __init__(self, path: str, offset: int, total: int, owner: int | None) -> None:
        self.path = path
        self.offset = offset
        self.total = total
        self.owner = owner
        self._lines: list[str] = []
        self._carry = Captured()  # lines a failed checkpoint did not get into the file
        self._fd: int | None = None

    async def open(self) -> None:
        self._fd = await asyncio.to_thread(self._open)

    def _open(self) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            if self.owner is None:
                fd = os.open(self.path, flags, 0o644)
            else:
                fd = self._open_as_owner(flags)
        except OSError as exc:
            raise SinkError(f"cannot open the output {self.path}: {exc.strerror or exc}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise SinkError(f"the output {self.path} is not a regular file")
            if self.owner is not None:
                if st.st_uid == os.geteuid() and st.st_size == 0 and st.st_uid != self.owner:
                    os.fchown(fd, self.owner, -1)  # made just now, for its owner
                elif st.st_uid != self.owner:
                    raise SinkError(f"the output {self.path} is not a file of uid {self.owner}")
            os.ftruncate(fd, self.offset)
            return fd
        except OSError as exc:
            os.close(fd)
            raise SinkError(f"cannot use the output {self.path}: {exc.strerror or exc}") from None
        except BaseException:
            os.close(fd)
            raise

    def _open_as_owner(self, flags: int) -> int:
        """Open the file in a directory of the owner's, checked on its descriptor: a
        directory swapped for a link since the submit cannot make the daemon create a
        file elsewhere (in /etc, say) and give it to the owner."""
        assert self.owner is not None
        directory = os.open(os.path.dirname(self.path) or "/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if os.fstat(directory).st_uid != self.owner:
                raise SinkError(f"the output {self.path} is not in a directory of uid {self.owner}")
            return os.open(os.path.basename(self.path), flags, 0o644, dir_fd=directory)
        finally:
            os.close(directory)

    def accept(self, value: Any) -> str | None:
        try:
            line = JSON_LINE.encode(value)
        except (TypeError, ValueError) as exc:
            return f"the output is not JSON: {exc}"
        self._lines.append(line)
        return None

    @property
    def pending(self) -> int:
        return len(self._lines) + self._carry.count

    def capture(self, now: float) -> Captured:
        lines, self._lines = self._lines, []
        carry, self._carry = self._carry, Captured()
        data = ("\n".join(lines) + "\n").encode() if lines else b""
        return Captured(carry.count + len(lines), data=carry.data + data)

    def after(self, captured: Captured) -> tuple[int, int]:
        return self.offset + len(captured.data), self.total + captured.count

    async def persist(self, captured: Captured) -> None:
        fd = self._fd
        assert fd is not None, "open() first"
        try:
            # At the committed length: a try that failed half-way is simply written over.
            await asyncio.to_thread(_write_all, fd, captured.data, self.offset)
        except OSError as exc:
            self._carry = captured
            raise StorageError(f"cannot write the output {self.path}: {exc.strerror or exc}") from None
        self.offset += len(captured.data)
        self.total += captured.count

    def give_back(self, captured: Captured) -> None:
        return None  # written: the next checkpoint records a later length

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n
    os.fsync(fd)  # the checkpoint that records this length must not outlive the lines
