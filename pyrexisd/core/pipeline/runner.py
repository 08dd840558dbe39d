"""One attempt of a pipeline job: start (or resume), stream, checkpoint, stop.

The reader puts input items into the first stage's channel; each stage's workers take
an item (or a batch), call the stage's task, and put what it made into the next stage's
channel, or, at the last stage, into the sink. Every channel is bounded, so the reader
runs only as fast as the slowest stage lets it.

Every :data:`CHECKPOINT_EVERY` seconds (sooner when outputs pile up) a checkpoint commits
the outputs gathered so far together with the state that covers them: per-stage figures,
each stage's contiguous watermark, and where a resume starts (the first item never read,
and the items read but not finished). The state is written in the store's group commit
and becomes the row's ``pipeline`` only once durable, so nothing a client reads is ahead
of the disk. After a crash or a stop, the next attempt reads the state back and runs only
the items that had not finished: at-least-once for the items in flight at that moment,
never again for the others.

Cancel, timeout and the daemon's stop come through the attempt's ``JobCall``: every stage
stops (calls in progress are cancelled; a thread is told and abandoned), and a last
checkpoint records where things stand.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from protocol.errors import StorageError, WireError
from protocol.pipeline import spec_from
from pyrexisd.core.attempt import Attempt, AttemptEvents, PublishStored
from pyrexisd.core.model import JobRow
from pyrexisd.core.pipeline.calls import ItemCache, ItemFailure, NoCache, StageCaller, Stopped
from pyrexisd.core.pipeline.channel import Channel, Unit
from pyrexisd.core.pipeline.figures import StageFigures
from pyrexisd.core.pipeline.lineage import Lineage, Resume
from pyrexisd.core.pipeline.plan import PipelinePlan, build_plan
from pyrexisd.core.pipeline.sinks import FileSink, Sink, SinkError, StoredSink
from pyrexisd.core.pipeline.sources import BadItem, Source, SourceError, open_source
from pyrexisd.core.waiting import STORAGE_RETRY
from pyrexisd.executors.base import CANCELLED, Executor, JobCall, Outcome, RunAs
from pyrexisd.store import Store
from pyrexisd.tasks.registry import Registry

log = logging.getLogger(__name__)

CHECKPOINT_EVERY = 0.25  # seconds between checkpoints of a running pipeline
SINK_HIGH = 4096  # outputs waiting in the sink that make a checkpoint due at once
ERRORS_KEPT = 20  # item errors kept in the record (all are counted, and logged)
FINAL_TRIES = (0.05, 0.25, 1.0, 2.0, 5.0)  # pauses between tries of the last checkpoint


@dataclass
class PipelineEnv:
    """What pipeline runs need from the core."""

    store: Store
    publish_stored: PublishStored
    executors: Mapping[str, Executor]
    registry: Registry
    max_result: int
    clock: Callable[[], float]
    is_admin: Callable[[int | None], bool]
    cache_for: Callable[[JobRow], ItemCache] = lambda row: NoCache()  # one pipeline's view of the result cache


class Pipelines:
    """Runs pipeline jobs for dispatch, one :class:`PipelineRun` per attempt."""

    def __init__(self, env: PipelineEnv) -> None:
        self.env = env

    async def run(self, attempt: Attempt, account: RunAs | None | Outcome) -> Outcome:
        """Run (or resume) ``attempt``'s pipeline to its end. ``account``: whose account
        its shell stages run in (an outcome: that owner cannot run commands here)."""
        assert attempt.call is not None and attempt.events is not None
        try:
            plan = build_plan(spec_from(attempt.row.args), self.env.registry)
        except WireError as exc:  # a stage's task was removed across a restart, say
            return Outcome.failure("exception", f"the pipeline cannot run: {exc.message}", retryable=False)
        if plan.uses_shell and isinstance(account, Outcome):
            return account
        run_as = account if isinstance(account, RunAs) else None
        return await PipelineRun(self.env, plan, attempt.call, attempt.events, run_as).run()


class PipelineRun:
    """One attempt of one pipeline."""

    def __init__(self, env: PipelineEnv, plan: PipelinePlan, call: JobCall, events: AttemptEvents, run_as: RunAs | None) -> None:
        self.env = env
        self.plan = plan
        self.call = call
        self.events = events
        self.row = row = events.attempt.row
        spec = plan.spec
        state = row.pipeline or {}
        resume_state = state.get("resume") or {}
        self.resume = Resume.from_record(resume_state)
        items = state.get("items") or {}
        self.done = int(items.get("done", 0))  # input items finished (errors skipped included)
        self.errors = int(items.get("errors", 0))
        self.kept_errors: list[dict[str, Any]] = list(state.get("errors") or [])
        self.elapsed = float(state.get("elapsed", 0.0))
        self.lineage = Lineage(len(plan.stages), self.resume)
        owner = None if env.is_admin(row.owner) else row.owner
        self.source: Source = open_source(spec.input, env.store, owner)
        self.sink: Sink
        if spec.output is not None:
            self.sink = FileSink(spec.output, int(resume_state.get("output_offset", 0)), int(state.get("outputs", 0)), owner)
        else:
            row.output_seq = int(resume_state.get("output_seq", row.output_seq))
            self.sink = StoredSink(row, env.max_result)
        previous = state.get("stages") or []
        self.figures = [StageFigures(previous[i] if i < len(previous) else None) for i in range(len(plan.stages))]
        self.channels = [Channel(stage.buffer) for stage in plan.stages]
        self.in_flight = [0] * len(plan.stages)
        self.callers = [
            StageCaller(
                stage, env.executors[stage.mode], row.job_id, row.attempts, self.figures[stage.index],
                events.log, events.drain, env.cache_for(row), run_as,
            )  # fmt: skip
            for stage in plan.stages
        ]
        self.failure: str | None = None
        self.stopping = False
        self._flow: asyncio.Task[None] | None = None
        self._checkpointing = asyncio.Lock()
        self._ticking = True
        self._tick_wake: asyncio.Future[None] | None = None
        self._started = env.clock()

    # -- the run --------------------------------------------------------------------------
    async def run(self) -> Outcome:
        try:
            await self.source.open()
            await self.sink.open()
        except (SourceError, SinkError) as exc:
            self.source.close()
            self.sink.close()
            return Outcome.failure("exception", str(exc), retryable=False)
        self.call.on_cancel(self._stop)
        if self.call.cancelled:
            self.source.close()
            self.sink.close()
            return CANCELLED
        self._flow = flow = asyncio.ensure_future(self._run_flow())
        ticker = asyncio.ensure_future(self._tick())
        broken: BaseException | None = None
        try:
            await asyncio.wait([flow])
        except asyncio.CancelledError:
            # The daemon is cancelling this attempt outright (its last resort at exit).
            self._stop()
            ticker.cancel()
            raise
        if not flow.cancelled() and flow.exception() is not None:
            broken = flow.exception()
            log.error("pipeline %s broke", self.row.job_id, exc_info=broken)
        self._ticking = False
        self._poke()
        await asyncio.gather(ticker, return_exceptions=True)
        stored = await self._final_checkpoint()
        self.source.close()
        self.sink.close()
        if self.failure is not None:
            return Outcome.failure("exception", self.failure, retryable=False)
        if self.call.cancelled:
            return CANCELLED
        if broken is not None:
            return Outcome.failure("exception", f"internal error in the pipeline: {broken!r}")
        if stored is not None:
            return Outcome.failure("exception", f"the pipeline's last outputs could not be stored: {stored}")
        return Outcome.success(
            {"items": self.source.known, "done": self.done, "errors": self.errors,
             "outputs": self.sink.total, "output": self.plan.spec.output}
        )  # fmt: skip

    def _stop(self) -> None:
        """Every stage stops now (cancel, timeout, the daemon stopping, a failed item)."""
        if self.stopping:
            return
        self.stopping = True
        for caller in self.callers:
            caller.stop()
        if self._flow is not None:
            self._flow.cancel()

    async def _run_flow(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._read())
            for stage in self.plan.stages:
                group.create_task(self._stage(stage.index))

    async def _read(self) -> None:
        lineage = self.lineage
        first = self.channels[0]
        wanted = self.resume.wanted()
        origin, offset = self.resume.start
        async for chunk in self.source.read(origin, offset):
            for origin, offset, end, value in chunk:
                if not wanted(origin):
                    continue  # finished before the last stop
                if isinstance(value, BadItem):
                    lineage.read(origin, offset, end)
                    self._item_failed(origin, None, ItemFailure("exception", value.message))
                    if self.failure is not None:
                        return
                    self.done += 1
                    continue
                lineage.enter(origin, offset, end)
                if not first.offer((origin, value)):
                    await first.put((origin, value))
        first.close()

    async def _stage(self, index: int) -> None:
        stage = self.plan.stages[index]
        async with asyncio.TaskGroup() as group:
            for _ in range(stage.concurrency):
                group.create_task(self._work(index))
        if index + 1 < len(self.channels):
            self.channels[index + 1].close()

    async def _work(self, index: int) -> None:
        stage = self.plan.stages[index]
        inbox = self.channels[index]
        caller = self.callers[index]
        figures = self.figures[index]
        while True:
            units = await inbox.take(stage.take, stage.window)
            if not units:
                return
            figures.items_in += len(units)
            self.in_flight[index] += len(units)
            try:
                made = await caller.call([value for _, value in units])
            except Stopped:
                return
            finally:
                self.in_flight[index] -= len(units)
            if isinstance(made, ItemFailure):
                figures.errors += len(units)
                for origin, _ in units:
                    self._item_failed(origin, index, made)
                    if self.failure is not None:
                        return
                    self._left(origin, index)
                continue
            if index + 1 < len(self.channels):
                await self._hand_on(index, units, made)
            elif not self._keep(index, units, made):
                return
            if self.sink.pending >= SINK_HIGH:
                await self._drain_sink()

    async def _hand_on(self, index: int, units: list[Unit], made: list[list[Any]]) -> None:
        """What the items of one call made at stage ``index`` goes into the next stage."""
        figures = self.figures[index]
        lineage = self.lineage
        nxt = self.channels[index + 1]
        for (origin, _), values in zip(units, made, strict=True):
            lineage.handed_on(origin, index, len(values))
            figures.items_out += len(values)
            for value in values:
                if not nxt.offer((origin, value)):
                    await nxt.put((origin, value))
            self._left(origin, index)

    def _keep(self, index: int, units: list[Unit], made: list[list[Any]]) -> bool:
        """What the items of one call made at the last stage goes into the sink; False if
        the pipeline fails."""
        figures = self.figures[index]
        accept = self.sink.accept
        for (origin, _), values in zip(units, made, strict=True):
            for value in values:
                problem = accept(value)
                if problem is None:
                    figures.items_out += 1
                    continue
                figures.errors += 1
                self._item_failed(origin, index, ItemFailure("exception", problem))
                if self.failure is not None:
                    return False
            self._left(origin, index)
        return True

    async def _drain_sink(self) -> None:
        """The store is the last stage's downstream: wait for it like for a channel (and,
        while it cannot commit, hold the stages back rather than pile outputs up)."""
        async with self._checkpointing:
            while self.sink.pending >= SINK_HIGH and not self.stopping:
                try:
                    await self._checkpoint()
                except StorageError as exc:
                    log.warning("outputs of pipeline %s not stored yet, retrying: %s", self.row.job_id, exc)
                    await asyncio.sleep(STORAGE_RETRY)

    def _left(self, origin: int, index: int) -> None:
        if self.lineage.done_at(origin, index):
            self.done += 1

    def _item_failed(self, origin: int, index: int | None, failure: ItemFailure) -> None:
        """An item failed for good: recorded, then skipped or the end of the pipeline."""
        where = "the input" if index is None else f"stage {index} ({self.plan.stages[index].name})"
        self.errors += 1
        if len(self.kept_errors) < ERRORS_KEPT:
            self.kept_errors.append(
                {"index": origin, "stage": index, "type": failure.error_type, "message": failure.message[:1000]}
            )
        self.events.log("log", f"[pipeline] item {origin} failed in {where}: {failure.message}")
        if self.plan.spec.on_item_error == "fail" and self.failure is None:
            self.failure = f"item {origin} failed in {where}: {failure.message}"
            self._stop()

    # -- checkpoints ----------------------------------------------------------------------
    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while self._ticking:
            self._tick_wake = loop.create_future()
            handle = loop.call_later(CHECKPOINT_EVERY, _resolve, self._tick_wake)
            await self._tick_wake
            handle.cancel()
            if not self._ticking:
                return
            async with self._checkpointing:
                try:
                    await self._checkpoint()
                except StorageError as exc:
                    log.warning("checkpoint of pipeline %s not stored (the next one will be): %s", self.row.job_id, exc)

    def _poke(self) -> None:
        if self._tick_wake is not None:
            _resolve(self._tick_wake)

    async def _final_checkpoint(self) -> str | None:
        """The last checkpoint of this attempt; why it could not be stored, if it could not."""
        problem = ""
        for pause in FINAL_TRIES:
            try:
                async with self._checkpointing:
                    await self._checkpoint()
                return None
            except StorageError as exc:
                problem = str(exc)
                log.error("last checkpoint of pipeline %s not stored, retrying: %s", self.row.job_id, exc)
                await asyncio.sleep(pause)
        return problem

    async def _checkpoint(self) -> None:
        """Commit the outputs gathered so far with the state that covers them."""
        row = self.row
        now = self.env.clock()
        # The state is taken with the outputs, before anything is awaited: items that
        # finish meanwhile have their outputs in the next checkpoint, and must not count
        # as finished in this one.
        captured = self.sink.capture(now)
        state = self._state(now, *self.sink.after(captured))
        progress = self._progress()
        await self.sink.persist(captured)  # StorageError: the sink keeps what it could not write
        try:
            await self.env.store.write(
                outputs=captured.items, checkpoints=[(row.seq, state, progress, row.output_seq)]
            )
        except StorageError:
            self.sink.give_back(captured)
            raise
        row.pipeline = state
        row.progress = progress
        if captured.items:
            self.env.publish_stored(row, (), captured.items)
        self.events.progress(progress["fraction"], progress["message"])

    def _progress(self) -> dict[str, Any]:
        known = self.source.known
        fraction = None if not known else min(1.0, self.done / known)
        if known == 0:
            fraction = 1.0
        message = f"{self.done}/{known if known is not None else '?'} items"
        if self.errors:
            message += f", {self.errors} errors"
        return {"fraction": fraction, "message": message}

    def _state(self, now: float, output_offset: int, outputs: int) -> dict[str, Any]:
        """The pipeline's record: figures per stage, items, and where a resume starts."""
        plan = self.plan
        marks = self.lineage.watermarks()
        stages = []
        for stage in plan.stages:
            figures = self.figures[stage.index].record(len(self.channels[stage.index]), self.in_flight[stage.index])
            stages.append({
                "name": stage.name, "task": stage.task.name, "mode": stage.mode, "concurrency": stage.concurrency,
                "batch": stage.batch, "window": stage.window, "buffer": stage.buffer,
                **figures, "contiguous": marks[stage.index],
            })  # fmt: skip
        resume = self.lineage.resume().record()
        resume["output_offset"] = output_offset
        resume["output_seq"] = self.row.output_seq
        return {
            "stages": stages,
            "items": {"known": self.source.known, "read": self.lineage.next, "done": self.done, "errors": self.errors},
            "outputs": outputs,
            "output": plan.spec.output,
            "on_item_error": plan.spec.on_item_error,
            "errors": self.kept_errors,
            "elapsed": round(self.elapsed + now - self._started, 3),
            "resume": resume,
        }


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
