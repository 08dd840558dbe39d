"""Pipelines: one job that streams items through ordered stages.

A pipeline job's args are a :class:`protocol.pipeline.PipelineSpec`. Admission checks
the spec against the task registry (:mod:`.plan`); dispatch gives the job a ``pipeline``
slot and runs it with :mod:`.runner` instead of an executor. The rooms of a run:

* :mod:`.plan` — the spec made concrete: each stage's task, mode, item parameter and
  bounds (pure given the registry);
* :mod:`.sources` — the input read lazily: the spec's items, a JSONL file, or another
  job's stored outputs;
* :mod:`.channel` — the bounded queue in front of each stage (backpressure);
* :mod:`.calls` — one call of a stage's task on its executor, with the stage's retries;
* :mod:`.lineage` — which input items are still in flight, and how far each stage's
  output is contiguous (pure: what a checkpoint records and a resume reads);
* :mod:`.figures` — per-stage figures;
* :mod:`.sinks` — where the last stage's values go: stored outputs, or a JSONL file;
* :mod:`.runner` — one attempt of a pipeline: start or resume, checkpoints, stop.
"""
