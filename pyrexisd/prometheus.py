"""The daemon's figures as Prometheus metrics: what ``GET /metrics`` and the ``metrics`` op
return.

The hot path only counts (:mod:`pyrexisd.metrics`); this collector turns the counts into
metric families when someone scrapes, and prometheus-client writes the text format. One
:class:`Exporter` per daemon owns its own registry (never the library's global one), so
two cores in one process — tests — never mix their figures.

Names follow the Prometheus conventions: a ``pyrexis_`` prefix, base units (seconds),
``_total`` on counters, and label values from bounded sets only — statuses, modes,
outcomes, and queue and task names capped at :data:`~pyrexisd.metrics.MAX_LABEL_VALUES`
each (later names count under ``_other``). No job id is ever a label.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from pyrexisd import __version__
from pyrexisd.metrics import Buckets, Metrics

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The media type of :meth:`Exporter.text` (Prometheus text format 0.0.4)."""

Source = Callable[[], Iterable[Metric]]
"""More families to export, from a room the core does not know (the servers)."""


def histogram(name: str, doc: str, buckets: Buckets, labels: dict[str, str] | None = None) -> HistogramMetricFamily:
    """A histogram family of one series (or one more series of ``labels``)."""
    family = HistogramMetricFamily(name, doc, labels=list(labels) if labels else None)
    family.add_metric(list(labels.values()) if labels else [], buckets.cumulative(), buckets.total)
    return family


class Exporter:
    """A Prometheus collector over one daemon's :class:`~pyrexisd.metrics.Metrics`."""

    def __init__(
        self,
        metrics: Metrics,
        slots: Callable[[], dict[str, int]],
        queues: Callable[[], list[dict[str, Any]]],
    ) -> None:
        self.metrics = metrics
        self._slots = slots
        self._queues = queues
        self._sources: list[Source] = []
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        # The process's CPU, memory, open files and start time, and the Python version:
        # the standard names every Prometheus user knows.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def add(self, source: Source) -> None:
        """Export what ``source`` returns at each scrape too."""
        self._sources.append(source)

    def text(self) -> bytes:
        """Every metric in the Prometheus text format."""
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        info = GaugeMetricFamily("pyrexis_build_info", "The daemon's version (the value is always 1).", labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info

        jobs = GaugeMetricFamily("pyrexis_jobs", "Jobs by queue, task and status, as committed.",
                                 labels=["queue", "task", "status"])  # fmt: skip
        folded: Counter[tuple[str, str, str]] = Counter()
        for (queue, task, status), n in m.by_queue_task_status.items():
            if n:
                folded[(m.queue_label(queue), m.task_label(task), status)] += n
        for key, n in sorted(folded.items()):
            jobs.add_metric(list(key), float(n))
        yield jobs

        yield self._counter("pyrexis_jobs_submitted", "Jobs accepted (submit, submit_many, schedules).",
                            ["queue", "task"], m.submitted)  # fmt: skip
        yield self._counter("pyrexis_jobs_started", "Attempts started.", ["queue", "task", "mode"], m.attempts_started)
        yield self._counter("pyrexis_jobs_ended", "Jobs that reached a terminal status, by that status.",
                            ["queue", "task", "outcome"], m.ended)  # fmt: skip
        yield self._counter("pyrexis_jobs_retried", "Failed attempts that will be retried after a backoff.",
                            ["queue", "task"], m.retried)  # fmt: skip

        yield histogram("pyrexis_job_queue_wait_seconds", "From ready (pending) to started.", m.queue_wait)
        run = HistogramMetricFamily("pyrexis_job_run_seconds", "Length of ended attempts, by mode.", labels=["mode"])
        for mode, buckets in sorted(m.run_time.items()):
            run.add_metric([mode], buckets.cumulative(), buckets.total)
        yield run

        slots = GaugeMetricFamily("pyrexis_slots", "Jobs each mode may run at once.", labels=["mode"])
        for mode, n in sorted(self._slots().items()):
            slots.add_metric([mode], float(n))
        yield slots
        paused = GaugeMetricFamily("pyrexis_queue_paused", "1 while the queue is paused (_other: any of them).",
                                   labels=["queue"])  # fmt: skip
        by_label: dict[str, float] = {}
        for row in self._queues():
            label = m.queue_label(str(row["queue"]))
            by_label[label] = max(by_label.get(label, 0.0), 1.0 if row["paused"] else 0.0)
        for label, value in sorted(by_label.items()):
            paused.add_metric([label], value)
        yield paused

        yield histogram("pyrexis_store_commit_seconds", "Group commits: from a batch's start to its writers told.",
                        m.commit_time)  # fmt: skip
        yield histogram("pyrexis_store_commit_writes", "Group commits: writes carried by one batch.", m.commit_batch)
        yield histogram("pyrexis_event_loop_lag_seconds", "How late the event loop ran a timer (probed 10 times a second).",
                        m.loop_lag.buckets)  # fmt: skip

        requests = self._counter("pyrexis_http_requests", "HTTP requests answered, by route template and status code.",
                                 ["method", "route", "code"], m.http_requests)  # fmt: skip
        yield requests
        for source in self._sources:
            yield from source()

    @staticmethod
    def _counter(name: str, doc: str, labels: list[str], counts: Counter[Any]) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc, labels=labels)
        for key, n in sorted(counts.items()):
            family.add_metric([str(v) for v in key], float(n))
        return family


def gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    """A one-series gauge family (for :meth:`Exporter.add` sources)."""
    family = GaugeMetricFamily(name, doc, labels=list(labels) if labels else None)
    family.add_metric(list(labels.values()) if labels else [], value)
    return family


def cache_families(stats: dict[str, Any], task_label: Callable[[str], str]) -> Iterator[Metric]:
    """The result cache's figures (``ResultCache.stats()`` of the whole cache): entries
    and bytes kept, and hits, misses and evictions since the daemon started, per task."""
    per_task: dict[str, Counter[str]] = {}
    for row in stats["tasks"]:
        per_task.setdefault(task_label(str(row["task"])), Counter()).update(
            {k: int(row[k]) for k in ("entries", "bytes", "hits", "misses", "evictions")}
        )
    for name, doc, field, kind in (
        ("pyrexis_cache_entries", "Results the result cache keeps, by task.", "entries", GaugeMetricFamily),
        ("pyrexis_cache_bytes", "Bytes of packed results the result cache keeps, by task.", "bytes", GaugeMetricFamily),
        ("pyrexis_cache_hits", "Calls answered from the result cache, by task.", "hits", CounterMetricFamily),
        ("pyrexis_cache_misses", "Calls of cached tasks the result cache could not answer, by task.", "misses", CounterMetricFamily),
        ("pyrexis_cache_evictions", "Results the result cache dropped for its bounds, by task.", "evictions", CounterMetricFamily),
    ):
        family = kind(name, doc, labels=["task"])
        for task, figures in sorted(per_task.items()):
            family.add_metric([task], float(figures[field]))
        yield family


def pipeline_families(stages_of_running: Iterable[list[dict[str, Any]]], task_label: Callable[[str], str]) -> Iterator[Metric]:
    """The running pipelines, and their stages' figures as of their last checkpoints,
    summed by stage task (gauges: a pipeline that ends takes its figures with it; its
    record keeps them)."""
    running = 0
    sums: dict[str, Counter[str]] = {}
    for stages in stages_of_running:
        running += 1
        for stage in stages:
            sums.setdefault(task_label(str(stage.get("task"))), Counter()).update(
                {k: float(stage.get(k) or 0) for k in ("items_in", "items_out", "errors", "retries", "busy", "queue", "in_flight")}
            )
    yield gauge("pyrexis_pipelines_running", "Pipeline jobs running now.", float(running))
    for name, doc, field in (
        ("pyrexis_pipeline_stage_items_in", "Items the running pipelines' stages took in, by stage task.", "items_in"),
        ("pyrexis_pipeline_stage_items_out", "Values the running pipelines' stages gave out, by stage task.", "items_out"),
        ("pyrexis_pipeline_stage_errors", "Items that failed for good in the running pipelines' stages, by stage task.", "errors"),
        ("pyrexis_pipeline_stage_retries", "Retried calls in the running pipelines' stages, by stage task.", "retries"),
        ("pyrexis_pipeline_stage_busy_seconds", "Time the running pipelines' stages spent in calls, by stage task.", "busy"),
        ("pyrexis_pipeline_stage_queued", "Items waiting before the running pipelines' stages, by stage task.", "queue"),
        ("pyrexis_pipeline_stage_in_flight", "Items in the running pipelines' stages' calls, by stage task.", "in_flight"),
    ):
        family = GaugeMetricFamily(name, doc, labels=["task"])
        for task, figures in sorted(sums.items()):
            family.add_metric([task], figures[field])
        yield family
