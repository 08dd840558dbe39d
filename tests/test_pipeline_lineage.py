"""The pipeline's lineage (pure): what a checkpoint records and where a resume starts."""

from __future__ import annotations

import asyncio
import random

from hypothesis import given
from hypothesis import strategies as st

from pyrexisd.core.pipeline.channel import Channel
from pyrexisd.core.pipeline.lineage import Lineage, Resume


def test_watermarks_and_resume_follow_the_earliest_unfinished_item() -> None:
    lineage = Lineage(2)
    for origin in range(4):
        lineage.enter(origin, origin * 10, origin * 10 + 10)
    # Item 1 passes stage 0 with two values; item 0 is still in stage 0.
    lineage.handed_on(1, 0, 2)
    assert not lineage.done_at(1, 0)
    assert lineage.watermarks() == [0, 0]
    # Item 0 passes stage 0, dropped: finished. Item 1 is past stage 0, not stage 1.
    assert lineage.done_at(0, 0)
    assert lineage.watermarks() == [2, 1]
    # Item 1's two values leave stage 1: finished. Items 2 and 3 still at stage 0.
    assert not lineage.done_at(1, 1)
    assert lineage.done_at(1, 1)
    assert lineage.watermarks() == [2, 2]
    lineage.handed_on(3, 0, 1)
    assert not lineage.done_at(3, 0)
    assert lineage.watermarks() == [2, 2]
    resume = lineage.resume()
    assert (resume.next, resume.offset, resume.redo, resume.first_offset) == (4, 40, [[2, 4]], 20)
    assert lineage.finished == 2


def test_a_resume_reads_again_only_what_was_in_flight() -> None:
    resume = Resume(next=10, offset=100, redo=[[2, 3], [5, 7]], first_offset=20)
    assert resume.start == (2, 20)
    wanted = resume.wanted()
    assert [i for i in range(2, 14) if wanted(i)] == [2, 5, 6, 10, 11, 12, 13]
    assert Resume.from_record(resume.record()) == resume
    assert Resume.from_record(None).start == (0, 0)


@given(st.integers(1, 4), st.integers(1, 30), st.randoms(use_true_random=False))
def test_any_order_of_work_keeps_the_resume_exact(stages: int, items: int, rnd: random.Random) -> None:
    """Whatever order values are processed in, the unfinished items are exactly the
    resume's redo ranges, and each stage's watermark only counts items past it."""
    lineage = Lineage(stages)
    pending: list[tuple[int, int]] = []  # (origin, stage) of each value in flight
    finished: set[int] = set()
    read = 0
    while read < items or pending:
        if read < items and (not pending or rnd.random() < 0.3):
            lineage.enter(read, read, read + 1)
            pending.append((read, 0))
            read += 1
            continue
        origin, stage = pending.pop(rnd.randrange(len(pending)))
        made = rnd.choice((0, 1, 1, 2)) if stage + 1 < stages else 0
        lineage.handed_on(origin, stage, made)
        pending.extend([(origin, stage + 1)] * made)
        if lineage.done_at(origin, stage):
            finished.add(origin)
        unfinished = {o for o, _ in pending}
        assert finished.isdisjoint(unfinished)
        resume = lineage.resume()
        assert {i for a, b in resume.redo for i in range(a, b)} == unfinished
        assert resume.next == read
        marks = lineage.watermarks()
        assert marks == sorted(marks, reverse=True)
        for s, mark in enumerate(marks):
            assert all(st_ > s for o, st_ in pending if o < mark)
    assert len(lineage) == 0 and lineage.finished == items


async def _take_all(channel: Channel, n: int) -> list[list[int]]:
    out = []
    while batch := await channel.take(n, None):
        out.append([origin for origin, _ in batch])
    return out


def test_a_channel_bounds_what_it_holds_and_hands_out_batches() -> None:
    async def scenario() -> tuple[list[list[int]], list[int]]:
        channel = Channel(3)
        depths: list[int] = []

        async def produce() -> None:
            for i in range(7):
                await channel.put((i, None))
                depths.append(len(channel))
            channel.close()

        producer = asyncio.ensure_future(produce())
        await asyncio.sleep(0)
        assert len(channel) == 3 and not producer.done()  # full: the producer waits
        batches = await _take_all(channel, 2)
        await producer
        return batches, depths

    batches, depths = asyncio.run(scenario())
    assert [i for batch in batches for i in batch] == list(range(7))
    assert max(depths) <= 3 and all(len(b) <= 2 for b in batches)
