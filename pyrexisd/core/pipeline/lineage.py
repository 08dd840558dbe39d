"""Which input items are in flight, and how far each stage's output is contiguous.

Every value travelling through a pipeline descends from one input item, its *origin*
(the item's 0-based index in the input). For each origin still in flight the lineage
keeps how many of its descendants wait at or in each stage; an origin with none left is
finished. Counts move up downstream before they move down here, so an origin is never
counted finished while one of its values is being handed on.

From that follow what a checkpoint records: for each stage, how many origins from the
start have all their values past it (its contiguous *watermark*), and where a resume
starts: the origins still in flight (as ranges: they are few and mostly adjacent) and
the first origin not read yet. Nothing here does I/O; the runner calls it on the loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Resume:
    """Where a pipeline starts again: ``next`` is the first origin never read (at
    ``offset`` in the input), ``redo`` the ranges ``[start, end)`` of origins read but not
    finished, the first of them at ``first_offset``."""

    next: int = 0
    offset: int = 0
    redo: list[list[int]] = field(default_factory=list)
    first_offset: int = 0

    def record(self) -> dict[str, Any]:
        return {"next": self.next, "offset": self.offset, "redo": self.redo, "first_offset": self.first_offset}

    @classmethod
    def from_record(cls, data: dict[str, Any] | None) -> Resume:
        if not data:
            return cls()
        return cls(int(data["next"]), int(data["offset"]), [list(r) for r in data["redo"]], int(data["first_offset"]))

    @property
    def start(self) -> tuple[int, int]:
        """The first origin to read again, and its offset in the input."""
        if self.redo:
            return self.redo[0][0], self.first_offset
        return self.next, self.offset

    def wanted(self) -> RedoFilter:
        return RedoFilter(self.redo, self.next)


class RedoFilter:
    """Tells, for origins read in order from :attr:`Resume.start`, which to run again."""

    __slots__ = ("_ranges", "_i", "_next")

    def __init__(self, ranges: list[list[int]], next_origin: int) -> None:
        self._ranges = ranges
        self._i = 0
        self._next = next_origin

    def __call__(self, origin: int) -> bool:
        if origin >= self._next:
            return True
        ranges = self._ranges
        while self._i < len(ranges) and ranges[self._i][1] <= origin:
            self._i += 1
        return self._i < len(ranges) and ranges[self._i][0] <= origin


class Lineage:
    """The origins in flight through ``stages`` stages, in the order they were read."""

    __slots__ = ("stages", "_flight", "next", "next_offset", "finished")

    def __init__(self, stages: int, resume: Resume | None = None) -> None:
        self.stages = stages
        # origin -> [its offset in the input, count at stage 0, ..., count at stage n-1]
        self._flight: dict[int, list[int]] = {}
        self.next = resume.next if resume is not None else 0  # first origin never read
        self.next_offset = resume.offset if resume is not None else 0
        self.finished = 0  # origins finished during this run

    def read(self, origin: int, offset: int, end: int) -> None:
        """Origin ``origin`` (at ``offset``, the next one at ``end``) was read and is not run."""
        if origin >= self.next:
            self.next = origin + 1
            self.next_offset = end

    def enter(self, origin: int, offset: int, end: int) -> None:
        """Origin ``origin`` was read and goes into the first stage."""
        record = [0] * (self.stages + 1)
        record[0] = offset
        record[1] = 1
        self._flight[origin] = record
        self.read(origin, offset, end)

    def handed_on(self, origin: int, stage: int, count: int) -> None:
        """``count`` values of ``origin`` go from ``stage`` into the next stage."""
        if count and stage + 1 < self.stages:
            self._flight[origin][stage + 2] += count

    def done_at(self, origin: int, stage: int) -> bool:
        """A value of ``origin`` left ``stage`` (its values handed on, or dropped). True
        when that finished the origin."""
        record = self._flight[origin]
        record[stage + 1] -= 1
        for count in record[1:]:
            if count:
                return False
        del self._flight[origin]
        self.finished += 1
        return True

    def __len__(self) -> int:
        return len(self._flight)

    def in_flight(self) -> Iterator[int]:
        return iter(self._flight)

    def watermarks(self) -> list[int]:
        """For each stage, how many origins from the start have all their values past it
        (the origins before a resume's start count as past every stage)."""
        marks = [self.next] * self.stages
        open_stages = self.stages
        for origin, record in self._flight.items():
            # The earliest origin still at or before a stage bounds that stage's mark.
            first_busy = next((i for i in range(self.stages) if record[i + 1]), self.stages)
            for stage in range(first_busy, open_stages):
                marks[stage] = origin
            open_stages = min(open_stages, first_busy)
            if open_stages == 0:
                break
        return marks

    def resume(self) -> Resume:
        """Where to start again from this moment."""
        ranges: list[list[int]] = []
        first_offset = self.next_offset
        for origin, record in self._flight.items():
            if not ranges:
                first_offset = record[0]
            if ranges and ranges[-1][1] == origin:
                ranges[-1][1] = origin + 1
            else:
                ranges.append([origin, origin + 1])
        return Resume(self.next, self.next_offset, ranges, first_offset)


def count_ranges(ranges: Iterable[list[int]]) -> int:
    return sum(end - start for start, end in ranges)
