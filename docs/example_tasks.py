"""Example PYREXIS tasks: one of each kind, to copy from.

Run a daemon that loads them (from the top of the repository)::

    PYTHONPATH=docs pyrexisd --tasks example_tasks

``--tasks`` takes a module name, not a file name: the module must be importable, here
thanks to ``PYTHONPATH``. Process-mode workers import the same module when they start,
and they inherit the daemon's environment, so ``PYTHONPATH`` reaches them too (a
``sys.path`` change made at run time would not). A package can instead register its
module under the ``pyrexis.tasks`` entry-point group. Two tasks with the same name, here
or in any other loaded module, stop the daemon at start-up.

Then, in another shell::

    pyrexisctl tasks                                                # names, modes, arg schemas
    pyrexisctl submit example.crunch --arg steps=50 --wait          # thread: progress + log
    pyrexisctl submit example.primes --arg limit=2000000 --wait     # process: CPU-bound
    pyrexisctl submit example.gather --arg 'delays=[0.5, 1, 0.2]' --wait   # async
    pyrexisctl submit example.chunks --arg size=3 --arg 'items=["a","b","c","d","e"]' --wait
    pyrexisctl submit example.flaky --arg succeed_on=3 --wait       # Retry: attempts 1, 2 retried
    pyrexisctl submit example.flaky --arg fatal=true --wait         # Fatal: no retry
    pyrexisctl logs JOB_ID                                          # what ctx.log() wrote

What every task here shows:

* The parameters' type hints become the job's args model: ``pyrexisctl submit
  example.crunch --arg steps=oops`` is refused at submit time with a field error,
  before anything is stored. ``tasks`` shows the model as a JSON schema.
* A parameter annotated ``TaskContext`` (or named ``ctx``) is not an argument: the
  daemon passes the job's context there. ``ctx.progress()`` and ``ctx.log()`` work the
  same in thread, process and async mode.
* The return value is the job's result. It must be msgpack-encodable (None, bool, int,
  float, str, bytes, lists, dicts with string keys) and, packed, at most the daemon's
  ``--max-result`` (1 MiB by default).

Only ``pyrexisd``'s public task API is imported (``task``, ``TaskContext``, ``Retry``,
``Fatal``); everything else is the standard library.
"""

from __future__ import annotations

import asyncio
import math
import time

from pyrexisd import Fatal, Retry, TaskContext, task


# -- Thread mode (the default for a plain function) -------------------------------------
@task(name="example.crunch", timeout=120)
def crunch(ctx: TaskContext, steps: int = 20, step_seconds: float = 0.05) -> dict:
    """Pretend to work in ``steps`` steps, reporting progress and logging as it goes."""
    ctx.log(f"job {ctx.job_id}, attempt {ctx.attempt}: {steps} steps")
    total = 0
    for i in range(steps):
        # A thread cannot be killed: on cancel or timeout the daemon only sets this flag,
        # and the job's thread slot stays taken until the function returns. Check it.
        if ctx.cancelled:
            # The job is already `cancelled` (or failed/retrying after a timeout); what
            # the function returns or logs from now on is discarded. Just stop.
            return None
        time.sleep(step_seconds)  # the "work"
        total += i * i
        # Cheap to call often: the daemon sends watchers at most one progress event per
        # 0.1 s per job, with the latest value; the job record keeps the last report.
        ctx.progress((i + 1) / steps, f"step {i + 1}/{steps}")
        if (i + 1) % 10 == 0:
            ctx.log(f"{i + 1} steps done, running total {total}")
    return {"steps_done": steps, "total": total}


# -- Process mode: CPU-bound work, killable ---------------------------------------------
@task(name="example.primes", mode="process", modes=["process", "thread"], max_retries=1, timeout=300)
def primes(limit: int, ctx: TaskContext) -> dict:
    """Count the primes below ``limit`` in a worker process (pure CPU)."""
    if limit < 2:
        raise Fatal("limit must be at least 2")  # bad input: retrying would not help
    # Runs in a separate worker process, so it neither holds the daemon's GIL nor needs
    # to poll ctx.cancelled: a cancel or timeout kills this worker (SIGTERM, then
    # SIGKILL after the daemon's --kill-grace) and the pool starts a fresh one.
    # ctx.progress() and ctx.log() travel to the daemon over the channel the worker got
    # when it started.
    sieve = bytearray([1]) * limit
    sieve[0:2] = b"\x00\x00"
    root = math.isqrt(limit - 1)
    for n in range(2, root + 1):
        if sieve[n]:
            sieve[n * n :: n] = bytes(len(range(n * n, limit, n)))
        if n % 64 == 0:
            ctx.progress(n / root, f"sieving with {n}")
    count = sum(sieve)
    ctx.progress(1.0, "done")
    ctx.log(f"{count} primes below {limit}")
    return {"limit": limit, "primes": count}


# -- Async mode (the default for a coroutine function) ----------------------------------
@task(name="example.gather", timeout=60)
async def gather(delays: list[float], ctx: TaskContext) -> list[float]:
    """Wait on several simulated I/O calls at once; report each as it finishes."""
    # Runs on the daemon's own event loop: never block it (no time.sleep, no heavy CPU).
    # A cancel or timeout cancels this coroutine: asyncio.CancelledError is raised at
    # the current await. Clean up in `finally` if needed, and do not swallow it.

    async def call(i: int, delay: float) -> float:
        await asyncio.sleep(delay)  # stands for a network request
        return delay

    started = time.monotonic()
    done: list[float] = []
    for finished in asyncio.as_completed([call(i, d) for i, d in enumerate(delays)]):
        done.append(await finished)
        ctx.progress(len(done) / len(delays), f"{len(done)}/{len(delays)} calls back")
        ctx.log(f"a call of {done[-1]} s returned")
    ctx.log(f"all {len(delays)} calls done in {time.monotonic() - started:.2f} s")
    return done


# -- A generator: partial results as it goes --------------------------------------------
@task(name="example.chunks", modes=["thread", "process"])
def chunks(items: list[str], ctx: TaskContext, size: int = 2, pause: float = 0.1):
    """Process ``items`` ``size`` at a time, yielding each chunk's result as it is ready."""
    # Each yielded value becomes an `output` event (seq 1, 2, ...) that `wait --events`
    # and `watch` deliver at once. The job's result is the list of every yielded value;
    # a generator that ends with `return value` makes that value the result instead.
    for start in range(0, len(items), size):
        chunk = items[start : start + size]
        time.sleep(pause)  # the "work"
        ctx.progress(min(1.0, (start + size) / len(items)))
        yield {"chunk": start // size, "upper": [s.upper() for s in chunk]}


# -- Retry and Fatal --------------------------------------------------------------------
@task(name="example.flaky", max_retries=3)
def flaky(ctx: TaskContext, succeed_on: int = 2, fatal: bool = False) -> dict:
    """Fail with Retry until attempt ``succeed_on``; with ``fatal``, fail for good."""
    if fatal:
        # Fatal: the job fails now (error type "exception", retryable false), whatever
        # max_retries says.
        raise Fatal("the input is unusable; retrying would not help")
    if ctx.attempt < succeed_on:
        # Retry: this attempt fails as retryable and the next one starts after `delay`
        # seconds instead of the usual backoff (1 s, 2 s, 4 s ... ±20 %). max_retries
        # still bounds the number of retries: with max_retries=3, at most 4 attempts.
        # Any other exception is retryable too, with the usual backoff.
        ctx.log(f"attempt {ctx.attempt}: transient failure, asking for a retry")
        raise Retry(f"not yet (attempt {ctx.attempt} of at least {succeed_on})", delay=0.5)
    ctx.log(f"attempt {ctx.attempt}: success")
    return {"succeeded_on_attempt": ctx.attempt}
