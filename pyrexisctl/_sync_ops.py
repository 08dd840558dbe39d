# Generated from pyrexisctl/_async_ops.py by pyrexisctl/_generate_sync.py: do not edit.
# Edit _async_ops.py instead, then regenerate this file with:
#     python -m pyrexisctl._generate_sync
# tests/test_client.py fails while this file is stale.
"""The ops of the contract as methods of the blocking client, generated from
:mod:`pyrexisctl._async_ops` (see there, and :mod:`pyrexisctl._generate_sync`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from protocol.status import PIPELINE_TASK
from pyrexisctl._sync_io import Stream, _SyncConnection
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


class _SyncOps(_SyncConnection):
    """Every op of protocol v1, on top of the connection core's ``request`` and ``stream``."""

    def hello(self, client: str | None = None) -> Record:
        """Handshake: ``{protocol, server, max_frame, ops}``, also kept in :attr:`server`."""
        result = self.request("hello", _hello_args(client or self.client_name))
        return self._accept_hello(_record(result))

    def submit(self, task: str, args: Mapping[str, Any] | None = None, **spec: Any) -> Record:
        """Submit one job, return its record. ``spec``: JobSpec fields (``None`` = not given)."""
        return _record(self.request("submit", _spec(task, args, spec)))

    def submit_many(self, specs: Iterable[Mapping[str, Any]]) -> RecordList:
        """Submit a batch all-or-nothing; returns the records in the same order."""
        return _rows(self.request("submit_many", _submit_many_args(specs)), "jobs")

    def get(self, job_id: str) -> Record:
        """The job's record (``NotFound`` when there is none)."""
        return _record(self.request("get", _job_args(job_id)))

    def list(
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
        page = _record(self.request("list", args))
        if since is not None:
            page["jobs"] = _since_filter(page.get("jobs"), since)
        return page

    def iter_jobs(
        self,
        status: str | Sequence[str] | None = None,
        task: str | None = None,
        queue: str | None = None,
        page_size: int | None = None,
        all_users: bool = False,
        since: float | None = None,
    ) -> Iterator[Record]:
        """Every matching job, oldest first, walking all pages of ``list``."""
        # One page in memory at a time: ``export`` streams a million jobs through this.
        after: str | None = None
        while True:
            page = self.list(status, task, queue, page_size, after, all_users, since)
            # No "yield from" in an asynchronous generator, so the generated copy loops too.
            for job in page.get("jobs") or []:  # noqa: UP028
                yield job
            after = page.get("next")
            if after is None:
                return

    def cancel(self, job_id: str) -> Record:
        """Cancel a job; returns its ``cancelled`` record (``InvalidState`` if already terminal)."""
        return _record(self.request("cancel", _job_args(job_id)))

    def retry(self, job_id: str) -> Record:
        """Start a new round of a ``failed`` or ``cancelled`` job; returns its record."""
        return _record(self.request("retry", _job_args(job_id)))

    def wait(self, job_id: str, timeout: float | None = None) -> Record:
        """Wait until the job is terminal; returns its record (``Timeout`` after ``timeout`` s)."""
        return _record(self.request("wait", _wait_args(job_id, timeout)))

    def wait_events(self, job_id: str, timeout: float | None = None) -> Stream:
        """Wait for the job while streaming its events.

        The stream opens with a ``state`` event of the job's current status (and its
        latest ``progress``), then yields its live ``state``, ``progress``, ``log`` and
        ``output`` events. Iteration stops once the job is terminal; ``stream.result`` is
        then its record. After ``timeout`` s iteration raises ``Timeout``. Closing the
        stream early leaves ``result`` as the record at that moment.
        """
        return self.stream("wait", _wait_args(job_id, timeout, events=True))

    def logs(self, job_id: str, since: int = 1, follow: bool = False) -> Record:
        """The job's log lines with ``seq >= since``: ``{"lines": [log events], "next": seq}``.

        With ``follow`` it returns once the job is terminal and its log drained; to
        process lines as they come, iterate :meth:`follow_logs` instead.
        """
        stream = self.stream("logs", _logs_args(job_id, since, follow))
        lines = [event for event in stream if event.get("kind") == "log"]
        return _logs_page(lines, stream.result, since)

    def follow_logs(self, job_id: str, since: int = 1) -> Stream:
        """The job's ``log`` events with ``seq >= since``: the stored ones, then live ones.

        Iteration stops once the job is terminal and its log drained; ``stream.result``
        is then ``{"next": seq}`` (the ``since`` to resume from). ``stream.close()``
        detaches early; the job is not affected.
        """
        return self.stream("logs", _logs_args(job_id, since, True))

    def submit_pipeline(self, pipeline: Mapping[str, Any], **spec: Any) -> Record:
        """Submit a pipeline job: ``pipeline`` is its spec (``input``, ``stages``,
        ``output``, ``on_item_error``; see docs/pipelines.md), ``spec`` the job's own
        JobSpec fields (``queue``, ``priority``, ``timeout``, ``labels``, ``job_id``...).
        Returns its record; the ``pipeline`` key carries its figures once it runs."""
        return _record(self.request("submit", _spec(PIPELINE_TASK, pipeline, spec)))

    def outputs(self, job_id: str, since: int = 1, follow: bool = False) -> Record:
        """The job's stored outputs with ``seq >= since``: ``{"outputs": [output events], "next": seq}``.

        With ``follow`` it returns once the job is terminal and its outputs drained; to
        process them as they come, iterate :meth:`follow_outputs` instead.
        """
        stream = self.stream("outputs", _logs_args(job_id, since, follow))
        items = [event for event in stream if event.get("kind") == "output"]
        return _outputs_page(items, stream.result, since)

    def follow_outputs(self, job_id: str, since: int = 1) -> Stream:
        """The job's ``output`` events with ``seq >= since``: the stored ones, then live ones.

        Iteration stops once the job is terminal and its outputs drained; ``stream.result``
        is then ``{"next": seq}``. ``stream.close()`` detaches early.
        """
        return self.stream("outputs", _logs_args(job_id, since, True))

    def watch(
        self,
        job_id: str | None = None,
        task: str | None = None,
        queue: str | None = None,
        kinds: Sequence[str] | None = None,
    ) -> Stream:
        """Stream the events matching every given filter, from now on, until closed.

        ``kinds``: event kinds (``state``, ``progress``, ``log``, ``output``). With
        ``job_id`` the stream opens with the job's current ``state`` (and ``progress``).
        The subscription is in effect for any request sent after this returns.
        """
        return self.stream("watch", _watch_args(job_id, task, queue, kinds))

    def hold(self, job_id: str) -> Record:
        """Keep a waiting job from starting until :meth:`release`; returns its ``held`` record."""
        return _record(self.request("hold", _job_args(job_id)))

    def release(self, job_id: str) -> Record:
        """Let a ``held`` job wait again (``pending``, ``blocked`` or ``scheduled``); its record."""
        return _record(self.request("release", _job_args(job_id)))

    def update(
        self, job_id: str, priority: int | None = None, queue: str | None = None
    ) -> Record:
        """Change a waiting (or held) job's priority and/or queue; returns its record."""
        return _record(self.request("update", _update_args(job_id, priority, queue)))

    def stats(self) -> Record:
        """Counters of the daemon: ``uptime``, ``by_status``, ``slots``, latencies, ..."""
        return _record(self.request("stats"))

    def metrics(self) -> str:
        """Every metric of the daemon in the Prometheus text format (admins only)."""
        return str((self.request("metrics"))["text"])

    def tasks(self) -> RecordList:
        """The registered tasks: ``{name, modes, default_mode, description, schema}`` each."""
        return _rows(self.request("tasks"), "tasks")

    def queues(self) -> RecordList:
        """Queue rows: ``{queue, paused, weight, max_concurrency, aging, waiting, running}``."""
        return _rows(self.request("queues"), "queues")

    def pause(self, queue: str | None = None) -> RecordList:
        """Pause one queue, or all (future ones too) when ``queue`` is None; returns queue rows."""
        return _rows(self.request("pause", _queue_arg(queue)), "queues")

    def resume(self, queue: str | None = None) -> RecordList:
        """Undo :meth:`pause` for one queue, or for every queue; returns queue rows."""
        return _rows(self.request("resume", _queue_arg(queue)), "queues")

    def configure_queue(
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
        return _record(self.request("configure_queue", args))

    def schedule_add(
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
        return _record(self.request("schedule_add", schedule))

    def schedule_list(self) -> RecordList:
        """Every schedule record, by name."""
        return _rows(self.request("schedule_list"), "schedules")

    def schedule_remove(self, name: str) -> None:
        """Delete a schedule (``NotFound`` when there is none); jobs it submitted stay."""
        self.request("schedule_remove", {"name": name})

    def clean(
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
        return _record(self.request("clean", _clean_args(older_than, status, queue, all_users)))

    def backup(self, path: str) -> Record:
        """Copy the daemon's database, as of one commit, to the local file ``path`` while
        the daemon runs (SQLite's backup API; admins only): ``{"bytes", "path"}``.

        The file is written as ``path + ".part"`` and renamed once complete."""
        stream = self.stream("backup")
        with _BackupFile(path) as out:
            for event in stream:
                out.write(event)
            out.done()
        return {"bytes": out.written, "path": path}

    def reload(self) -> Record:
        """Make the daemon read its configuration file again (as SIGHUP does; admins only):
        ``{"file", "changed": [keys applied], "restart_needed": [keys]}``."""
        return _record(self.request("reload"))

    def cache_stats(self, task: str | None = None) -> Record:
        """The result cache's figures: ``{entries, bytes, max_entries, max_bytes, tasks}``,
        ``tasks`` a list of ``{task, entries, bytes, hits, misses, evictions}`` (of
        ``task`` only, when given). A caller that is not an admin sees its own entries."""
        return _record(self.request("cache_stats", _cache_args(task)))

    def cache_clear(self, task: str | None = None) -> Record:
        """Remove cached results (of ``task``, when given): ``{removed, bytes}``. An admin
        clears every user's, anyone else its own."""
        return _record(self.request("cache_clear", _cache_args(task)))
