"""The ops of the contract as client methods, written once: this is the asyncio version.

``_sync_ops.py``, the blocking version, is generated from this file by
:mod:`pyrexisctl._generate_sync` (``python -m pyrexisctl._generate_sync``), and a test
fails while it is stale: edit this file, never that one.

Each method builds its argument map with a helper of :mod:`pyrexisctl._wire`, sends it
through the connection core's ``request`` or ``stream``, and shapes the answer. So that
the conversion stays mechanical, this module keeps to what has a plain counterpart:
``async def``, ``await``, ``async for`` and the names listed in the generator's
``SYNC_NAMES`` (``AsyncStream``, ``AsyncIterator``, ...). I/O and anything else that
differs between the two clients belongs to the cores, ``_async_io`` and ``_sync_io``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

from protocol.status import PIPELINE_TASK
from pyrexisctl._async_io import AsyncStream, _AsyncConnection
from pyrexisctl._wire import (
    UNSET,
    Record,
    RecordList,
    _BackupFile,
    _cache_args,
    _clean_args,
    _hello_args,
    _job_args,
    _list_args,
    _logs_args,
    _logs_page,
    _outputs_page,
    _queue_arg,
    _queue_config,
    _record,
    _rows,
    _schedule_args,
    _since_filter,
    _spec,
    _submit_many_args,
    _Unset,
    _update_args,
    _wait_args,
    _watch_args,
)


class _AsyncOps(_AsyncConnection):
    """Every op of protocol v1, on top of the connection core's ``request`` and ``stream``."""

    async def hello(self, client: str | None = None) -> Record:
        """Handshake: ``{protocol, server, max_frame, ops}``, also kept in :attr:`server`."""
        result = await self.request("hello", _hello_args(client or self.client_name))
        return self._accept_hello(_record(result))

    async def submit(self, task: str, args: Mapping[str, Any] | None = None, **spec: Any) -> Record:
        """Submit one job, return its record. ``spec``: JobSpec fields (``None`` = not given)."""
        return _record(await self.request("submit", _spec(task, args, spec)))

    async def submit_many(self, specs: Iterable[Mapping[str, Any]]) -> RecordList:
        """Submit a batch all-or-nothing; returns the records in the same order."""
        return _rows(await self.request("submit_many", _submit_many_args(specs)), "jobs")

    async def get(self, job_id: str) -> Record:
        """The job's record (``NotFound`` when there is none)."""
        return _record(await self.request("get", _job_args(job_id)))

    async def list(
        self,
        status: str | Sequence[str] | None = None,
        task: str | None = None,
        queue: str | None = None,
        limit: int | None = None,
        after: str | None = None,
        all_users: bool = False,
        since: float | None = None,
    ) -> Record:
        """One page of jobs, oldest first: ``{"jobs": [...], "next": cursor or None}``.

        Only the caller's own jobs, unless ``all_users`` (an admin's right: root and the
        daemon's uid; anyone else gets ``Unauthorized``); with ``since`` (a time), only
        those created at that time or later."""
        args = _list_args(status, task, queue, limit, after, all_users, since)
        page = _record(await self.request("list", args))
        if since is not None:
            page["jobs"] = _since_filter(page.get("jobs"), since)
        return page

    async def iter_jobs(
        self,
        status: str | Sequence[str] | None = None,
        task: str | None = None,
        queue: str | None = None,
        page_size: int | None = None,
        all_users: bool = False,
        since: float | None = None,
    ) -> AsyncIterator[Record]:
        """Every matching job, oldest first, walking all pages of ``list``."""
        # One page in memory at a time: ``export`` streams a million jobs through this.
        after: str | None = None
        while True:
            page = await self.list(status, task, queue, page_size, after, all_users, since)
            # No "yield from" in an asynchronous generator, so the generated copy loops too.
            for job in page.get("jobs") or []:  # noqa: UP028
                yield job
            after = page.get("next")
            if after is None:
                return

    async def cancel(self, job_id: str) -> Record:
        """Cancel a job; returns its ``cancelled`` record (``InvalidState`` if already terminal)."""
        return _record(await self.request("cancel", _job_args(job_id)))

    async def retry(self, job_id: str) -> Record:
        """Start a new round of a ``failed`` or ``cancelled`` job; returns its record."""
        return _record(await self.request("retry", _job_args(job_id)))

    async def wait(self, job_id: str, timeout: float | None = None) -> Record:
        """Wait until the job is terminal; returns its record (``Timeout`` after ``timeout`` s)."""
        return _record(await self.request("wait", _wait_args(job_id, timeout)))

    async def wait_events(self, job_id: str, timeout: float | None = None) -> AsyncStream:
        """Wait for the job while streaming its events.

        The stream opens with a ``state`` event of the job's current status (and its
        latest ``progress``), then yields its live ``state``, ``progress``, ``log`` and
        ``output`` events. Iteration stops once the job is terminal; ``stream.result`` is
        then its record. After ``timeout`` s iteration raises ``Timeout``. Closing the
        stream early leaves ``result`` as the record at that moment.
        """
        return await self.stream("wait", _wait_args(job_id, timeout, events=True))

    async def logs(self, job_id: str, since: int = 1, follow: bool = False) -> Record:
        """The job's log lines with ``seq >= since``: ``{"lines": [log events], "next": seq}``.

        With ``follow`` it returns once the job is terminal and its log drained; to
        process lines as they come, iterate :meth:`follow_logs` instead.
        """
        stream = await self.stream("logs", _logs_args(job_id, since, follow))
        lines = [event async for event in stream if event.get("kind") == "log"]
        return _logs_page(lines, stream.result, since)

    async def follow_logs(self, job_id: str, since: int = 1) -> AsyncStream:
        """The job's ``log`` events with ``seq >= since``: the stored ones, then live ones.

        Iteration stops once the job is terminal and its log drained; ``stream.result``
        is then ``{"next": seq}`` (the ``since`` to resume from). ``stream.aclose()``
        detaches early; the job is not affected.
        """
        return await self.stream("logs", _logs_args(job_id, since, True))

    async def submit_pipeline(self, pipeline: Mapping[str, Any], **spec: Any) -> Record:
        """Submit a pipeline job: ``pipeline`` is its spec (``input``, ``stages``,
        ``output``, ``on_item_error``; see docs/pipelines.md), ``spec`` the job's own
        JobSpec fields (``queue``, ``priority``, ``timeout``, ``labels``, ``job_id``...).
        Returns its record; the ``pipeline`` key carries its figures once it runs."""
        return _record(await self.request("submit", _spec(PIPELINE_TASK, pipeline, spec)))

    async def outputs(self, job_id: str, since: int = 1, follow: bool = False) -> Record:
        """The job's stored outputs with ``seq >= since``: ``{"outputs": [output events], "next": seq}``.

        With ``follow`` it returns once the job is terminal and its outputs drained; to
        process them as they come, iterate :meth:`follow_outputs` instead.
        """
        stream = await self.stream("outputs", _logs_args(job_id, since, follow))
        items = [event async for event in stream if event.get("kind") == "output"]
        return _outputs_page(items, stream.result, since)

    async def follow_outputs(self, job_id: str, since: int = 1) -> AsyncStream:
        """The job's ``output`` events with ``seq >= since``: the stored ones, then live ones.

        Iteration stops once the job is terminal and its outputs drained; ``stream.result``
        is then ``{"next": seq}``. ``stream.aclose()`` detaches early.
        """
        return await self.stream("outputs", _logs_args(job_id, since, True))

    async def watch(
        self,
        job_id: str | None = None,
        task: str | None = None,
        queue: str | None = None,
        kinds: Sequence[str] | None = None,
    ) -> AsyncStream:
        """Stream the events matching every given filter, from now on, until closed.

        ``kinds``: event kinds (``state``, ``progress``, ``log``, ``output``). With
        ``job_id`` the stream opens with the job's current ``state`` (and ``progress``).
        The subscription is in effect for any request sent after this returns.
        """
        return await self.stream("watch", _watch_args(job_id, task, queue, kinds))

    async def hold(self, job_id: str) -> Record:
        """Keep a waiting job from starting until :meth:`release`; returns its ``held`` record."""
        return _record(await self.request("hold", _job_args(job_id)))

    async def release(self, job_id: str) -> Record:
        """Let a ``held`` job wait again (``pending``, ``blocked`` or ``scheduled``); its record."""
        return _record(await self.request("release", _job_args(job_id)))

    async def update(
        self, job_id: str, priority: int | None = None, queue: str | None = None
    ) -> Record:
        """Change a waiting (or held) job's priority and/or queue; returns its record."""
        return _record(await self.request("update", _update_args(job_id, priority, queue)))

    async def stats(self) -> Record:
        """Counters of the daemon: ``uptime``, ``by_status``, ``slots``, latencies, ..."""
        return _record(await self.request("stats"))

    async def metrics(self) -> str:
        """Every metric of the daemon in the Prometheus text format (admins only)."""
        return str((await self.request("metrics"))["text"])

    async def tasks(self) -> RecordList:
        """The registered tasks: ``{name, modes, default_mode, description, schema}`` each."""
        return _rows(await self.request("tasks"), "tasks")

    async def queues(self) -> RecordList:
        """Queue rows: ``{queue, paused, weight, max_concurrency, aging, waiting, running}``."""
        return _rows(await self.request("queues"), "queues")

    async def pause(self, queue: str | None = None) -> RecordList:
        """Pause one queue, or all (future ones too) when ``queue`` is None; returns queue rows."""
        return _rows(await self.request("pause", _queue_arg(queue)), "queues")

    async def resume(self, queue: str | None = None) -> RecordList:
        """Undo :meth:`pause` for one queue, or for every queue; returns queue rows."""
        return _rows(await self.request("resume", _queue_arg(queue)), "queues")

    async def configure_queue(
        self,
        queue: str,
        *,
        weight: float | None = None,
        max_concurrency: int | None | _Unset = UNSET,
        aging: float | None = None,
    ) -> Record:
        """Set a queue's fair-share ``weight``, ``max_concurrency`` and ``aging``; its queue row.

        Arguments left out keep their value; ``max_concurrency=None`` removes the cap.
        The queue is created if it does not exist yet. The setting is durable.
        """
        args = _queue_config(queue, weight, max_concurrency, aging)
        return _record(await self.request("configure_queue", args))

    async def schedule_add(
        self,
        name: str,
        task: str,
        args: Mapping[str, Any] | None = None,
        *,
        cron: str | None = None,
        every: float | None = None,
        **spec: Any,
    ) -> Record:
        """Submit a job of ``task`` by ``cron`` (5 fields, the daemon's local time) or ``every`` s.

        Give exactly one of ``cron`` and ``every``. ``spec``: JobSpec fields except
        ``job_id``, ``run_at``, ``delay`` and ``depends_on``. Returns the schedule record
        ``{name, cron, every, job, next_run, last_run, last_job_id}``; a name in use is
        ``Conflict``.
        """
        schedule = _schedule_args(name, task, args, cron, every, spec)
        return _record(await self.request("schedule_add", schedule))

    async def schedule_list(self) -> RecordList:
        """Every schedule record, by name."""
        return _rows(await self.request("schedule_list"), "schedules")

    async def schedule_remove(self, name: str) -> None:
        """Delete a schedule (``NotFound`` when there is none); jobs it submitted stay."""
        await self.request("schedule_remove", {"name": name})

    async def clean(
        self,
        older_than: float | None = None,
        status: str | Sequence[str] | None = None,
        queue: str | None = None,
        all_users: bool = False,
    ) -> Record:
        """Remove finished jobs (with their logs and outputs) now: ``{"removed", "kept"}``.

        Only those that ended ``older_than`` seconds ago or more, with one of ``status``
        (``completed``, ``failed``, ``cancelled``), in ``queue``, when given; only the
        caller's own unless ``all_users`` (admins). ``kept``: jobs the retention rules keep
        (someone waits on them, a waiting job depends on them)."""
        return _record(await self.request("clean", _clean_args(older_than, status, queue, all_users)))

    async def backup(self, path: str) -> Record:
        """Copy the daemon's database, as of one commit, to the local file ``path`` while
        the daemon runs (SQLite's backup API; admins only): ``{"bytes", "path"}``.

        The file is written as ``path + ".part"`` and renamed once complete."""
        stream = await self.stream("backup")
        with _BackupFile(path) as out:
            async for event in stream:
                out.write(event)
            out.done()
        return {"bytes": out.written, "path": path}

    async def reload(self) -> Record:
        """Make the daemon read its configuration file again (as SIGHUP does; admins only):
        ``{"file", "changed": [keys applied], "restart_needed": [keys]}``."""
        return _record(await self.request("reload"))

    async def cache_stats(self, task: str | None = None) -> Record:
        """The result cache's figures: ``{entries, bytes, max_entries, max_bytes, tasks}``,
        ``tasks`` a list of ``{task, entries, bytes, hits, misses, evictions}`` (of
        ``task`` only, when given). A caller that is not an admin sees its own entries."""
        return _record(await self.request("cache_stats", _cache_args(task)))

    async def cache_clear(self, task: str | None = None) -> Record:
        """Remove cached results (of ``task``, when given): ``{removed, bytes}``. An admin
        clears every user's, anyone else its own."""
        return _record(await self.request("cache_clear", _cache_args(task)))
