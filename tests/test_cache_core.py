"""The result cache in the core, in-process (``tests/core_harness.py``): a real store, an
executor the test finishes, a clock the test moves.

What the daemon tests cannot steer: the TTL against a fake clock, and a cached result
whose commit fails (the disk's write lock held elsewhere) — it is neither served nor
counted until the end it rides with is committed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from core_harness import (
    ADMIN,
    DAEMON_UID,
    CoreHarness,
    make_registry,
    running_core,
    user,
    work,
    writer_blocked,
)

from pyrexisd.core.cache import StageCache
from pyrexisd.executors.base import Outcome
from pyrexisd.tasks.registry import Registry, make_task


def cached_registry() -> Registry:
    """The harness's tasks, and ``work`` again with its results cached for a minute."""
    registry = make_registry()
    registry.add(make_task(work, name="cached_work", mode="thread", cache_ttl=60))
    return registry


@pytest.fixture
async def h(tmp_path: Any) -> AsyncIterator[CoreHarness]:
    async with running_core(os.path.join(tmp_path, "core.db"), registry=cached_registry()) as harness:
        yield harness


async def complete(h: CoreHarness, x: int, result: Any) -> dict[str, Any]:
    """A job of ``cached_work`` that runs and completes with ``result``: its record."""
    job = await h.service.submit(ADMIN, {"task": "cached_work", "args": {"x": x}})
    await h.started(job["job_id"])
    h.executor.finish(job["job_id"], Outcome.success(result))
    return await h.service.wait(ADMIN, job["job_id"], 5)  # type: ignore[no-any-return]


async def test_a_hit_is_served_until_the_ttl_runs_out_on_the_clock(h: CoreHarness) -> None:
    """Given a result cached for 60 s, then a repeat 59 s later is stored completed with
    it, and a repeat after 60 s waits for a slot like any job."""
    first = await complete(h, 1, {"r": 1})
    h.clock.advance(59)
    hit = await h.service.submit(ADMIN, {"task": "cached_work", "args": {"x": 1}})
    assert (hit["status"], hit["cached_from"], hit["result"]) == ("completed", first["job_id"], {"r": 1})
    assert (await h.stored(hit["job_id"])).status == "completed"

    h.clock.advance(2)
    miss = await h.service.submit(ADMIN, {"task": "cached_work", "args": {"x": 1}})
    assert miss["status"] == "running" and miss["cached"] is False
    stats = h.service.cache_stats(ADMIN, None)
    assert stats["entries"] == 0 and stats["tasks"][0]["hits"] == 1


async def test_one_users_results_never_answer_anothers(tmp_path: Any) -> None:
    """Given a result cached for one user, then the same call by another user runs, and
    each sees (and clears) only its own entries."""
    path = os.path.join(tmp_path, "core.db")
    async with running_core(path, registry=cached_registry(), user_tasks=("cached_work",)) as h:
        await _two_users(h)


async def _two_users(h: CoreHarness) -> None:
    await complete(h, 2, "admin's")
    alice = user(1001)
    job = await h.service.submit(alice, {"task": "cached_work", "args": {"x": 2}})
    assert job["status"] == "running" and job["cached"] is False
    await h.started(job["job_id"])
    h.executor.finish(job["job_id"], Outcome.success("alice's"))
    await h.service.wait(alice, job["job_id"], 5)
    assert h.service.cache_stats(alice, None)["entries"] == 1
    assert h.service.cache_stats(ADMIN, None)["entries"] == 2
    assert (await h.service.cache_clear(alice, None))["removed"] == 1
    assert h.service.cache_stats(ADMIN, None)["entries"] == 1


async def test_a_result_whose_commit_fails_is_cached_once_its_end_commits(h: CoreHarness) -> None:
    """Given a cached task's job that completes while the disk's write lock is held
    elsewhere (its end's commits fail and are retried), then meanwhile a repeat is not
    answered from the cache; once the end commits, the result is cached exactly once."""
    job = await h.service.submit(ADMIN, {"task": "cached_work", "args": {"x": 3}})
    await h.started(job["job_id"])
    await h.writer_busy_timeout(20)
    with writer_blocked(h.path) as release:
        h.executor.finish(job["job_id"], Outcome.success("late"))
        await asyncio.sleep(0.3)  # several failed commits and retries
        assert (await h.stored(job["job_id"])).status == "running"
        cache = h.core.cache
        assert cache is not None
        key = cache.key_of_args(h.service.registry.get("cached_work"), {"x": 3}, DAEMON_UID)
        assert await cache.lookup_many([key]) == {}
        release()
        record = await h.service.wait(ADMIN, job["job_id"], 10)
    assert record["result"] == "late"
    await h.writer_busy_timeout(5000)
    hit = await h.service.submit(ADMIN, {"task": "cached_work", "args": {"x": 3}})
    assert (hit["status"], hit["cached_from"]) == ("completed", job["job_id"])
    stats = h.service.cache_stats(ADMIN, "cached_work")
    assert stats["entries"] == 1 and stats["bytes"] == len(b"\xa4late")


async def test_a_pipeline_stage_asks_the_same_cache_per_call(h: CoreHarness) -> None:
    """Given the cache as a stage sees it, then a call of a cached task misses, is kept,
    then hits (counted with the task's figures); another owner's calls and a task
    without ``cache`` are never answered."""
    cache = h.core.cache
    assert cache is not None
    cached, plain = h.service.registry.get("cached_work"), h.service.registry.get("work")
    stage = StageCache(cache, DAEMON_UID, "pipe-1")
    assert await stage.lookup(cached, {"x": 5}) is None
    stage.store(cached, {"x": 5}, [25])
    stage.store(plain, {"x": 5}, [25])
    assert cache.stats()["entries"] == 1
    digest = cache.key(cached, {"x": 5}, DAEMON_UID).digest
    for _ in range(500):  # its write is a lazy one: committed within milliseconds
        if await h.store.reads.cache_results([digest]):
            break
        await asyncio.sleep(0.01)

    hit = await stage.lookup(cached, {"x": 5})
    assert hit is not None and (hit.value, hit.job_id) == ([25], "pipe-1")
    assert await stage.lookup(plain, {"x": 5}) is None
    assert await StageCache(cache, 1001).lookup(cached, {"x": 5}) is None
    figures = cache.stats(task="cached_work")["tasks"][0]
    assert (figures["hits"], figures["misses"], figures["entries"]) == (1, 2, 1)
