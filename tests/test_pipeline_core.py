"""Pipelines in an in-process core (a real store and a real async executor): the stage
calls' cache hook, and a checkpoint's state matching its stored outputs."""

from __future__ import annotations

import asyncio
import os
import tempfile
from typing import Any

from core_harness import ADMIN, FakeClock

from pyrexisd.config import Config
from pyrexisd.core.assembly import build_core
from pyrexisd.core.pipeline.calls import Cached
from pyrexisd.executors.async_ import AsyncExecutor
from pyrexisd.store import Store
from pyrexisd.tasks.builtin import pipeline_task
from pyrexisd.tasks.registry import Registry, TaskDef, make_task

CALLS: list[int] = []


async def triple(x: int) -> int:
    CALLS.append(x)
    return 3 * x


class DictCache:
    """A result cache as the stages see it: a dict keyed by task name and args."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.hits = 0

    @staticmethod
    def key(task: TaskDef, args: dict[str, Any]) -> str:
        return f"{task.name}:{sorted(args.items())!r}"

    async def lookup(self, task: TaskDef, args: dict[str, Any]) -> Cached | None:
        if self.key(task, args) in self.values:
            self.hits += 1
            return Cached(self.values[self.key(task, args)])
        return None

    def store(self, task: TaskDef, args: dict[str, Any], value: Any) -> None:
        self.values[self.key(task, args)] = value


async def run_twice(path: str, cache: DictCache) -> tuple[list[Any], list[Any], dict[str, Any]]:
    store = Store(path, "normal")
    await store.open()
    registry = Registry()
    registry.add(pipeline_task())
    registry.add(make_task(triple, name="triple"))
    core = build_core(
        Config(socket="/nonexistent/pyrexis-test.sock", db=path), store, registry,
        {"async": AsyncExecutor(10)}, FakeClock(), daemon_uid=ADMIN.uid, pipeline_cache=cache,
    )  # fmt: skip
    await core.load()
    await core.dispatch.start()
    try:
        spec = {"task": "pipeline", "args": {"input": {"items": [1, 2, 3, 4]}, "stages": [{"task": "triple", "concurrency": 2}]}}
        outputs = []
        for _ in range(2):
            job = await core.service.submit(ADMIN, spec)
            done = await asyncio.wait_for(core.service.wait(ADMIN, job["job_id"], None), 30)
            assert done["status"] == "completed", done
            row = await store.reads.get_job(job["job_id"])
            assert row is not None
            outputs.append(sorted(o.value for o in await store.reads.read_outputs(row.seq, 1, 100)))
            # The committed state covers exactly the stored outputs.
            assert row.pipeline is not None and row.pipeline["outputs"] == row.output_seq == 4
        return outputs[0], outputs[1], done
    finally:
        core.stop_taking_work()
        core.ledger.fail_waiters()
        await core.dispatch.close()
        await store.close()


def test_a_stage_asks_the_cache_before_each_call_and_fills_it_after() -> None:
    cache = DictCache()
    CALLS.clear()
    with tempfile.TemporaryDirectory(prefix="pxpc") as tmp:
        first, second, last = asyncio.run(run_twice(os.path.join(tmp, "d.db"), cache))
    assert first == second == [3, 6, 9, 12]
    assert sorted(CALLS) == [1, 2, 3, 4]  # the second pipeline ran no call: all hits
    assert cache.hits == 4
    assert (last["pipeline"]["stages"][0]["calls"], last["pipeline"]["stages"][0]["cached"]) == (0, 4)
