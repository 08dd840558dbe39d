"""The job core: rooms that follow one job's life, from its spec to its end.

* :mod:`~pyrexisd.core.model` — the job row, its log lines and outputs, and the pure rules
  that change a row (an outcome applied, an attempt interrupted, where a job waits).
* :mod:`~pyrexisd.core.admission` — a raw spec becomes a row: validation, defaults, size,
  idempotent client ids, dependency checks. Pure given the registry, config and clock.
* :mod:`~pyrexisd.core.ledger` — the committed view: locks, pinned rows, waiters, recent
  ends, and the one primitive that changes jobs (write, undo on a storage error, then
  publish and wake waiters).
* :mod:`~pyrexisd.core.waiting` — blocked, held, scheduled and retrying jobs becoming
  pending (dependencies, timers, promotion), and client changes of waiting jobs.
* :mod:`~pyrexisd.core.attempt` — one running attempt and what it reports.
* :mod:`~pyrexisd.core.dispatch` — pick, launch, settle, timeouts, recovery and drain.
* :mod:`~pyrexisd.core.queues` — queue settings.
* :mod:`~pyrexisd.core.service` — the one object the handlers call.

Imports point one way: model ← admission; model, store, events, metrics ← ledger ←
waiting ← dispatch ← service. :func:`pyrexisd.core.assembly.build_core` wires one
core together (this package's ``__init__`` imports nothing, so the store can use the
model without a cycle).
"""
