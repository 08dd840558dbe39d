"""The dask mode's connection to its cluster, on a thread and event loop of its own.

Dask's client (and, with ``--dask-local``, the whole scheduler of a ``LocalCluster``) runs
on a loop of its own, in a daemon thread, so that serialising tasks and results and the
scheduler's bookkeeping never stall the daemon's loop. The daemon's side calls
:meth:`ClusterLink.run` and :meth:`ClusterLink.cancel` from its loop; everything that
touches Dask happens on the link's loop, and what the daemon must hear (events, the
cluster's state) is handed back with ``call_soon_threadsafe``.

The link keeps itself connected: when the scheduler goes away, the attempts in flight
fail with :class:`AttemptLost` (``scheduler_lost``, retryable), the cluster's state says
``disconnected`` (zero slots, so dask jobs wait, pending), and it connects again with
exponential backoff (0.5 s doubling to 30 s, with jitter). Connected, it follows the
cluster's workers and threads (the mode's slots) and notices a worker that leaves while
running one of our attempts: that attempt fails as ``worker_died`` (retryable), and its
key is cancelled so Dask does not run it again behind the daemon's back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import random
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from protocol.errors import PyrexisError

log = logging.getLogger(__name__)

EXTRA = "pyrexis[dask]"
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
WATCH_INTERVAL = 1.0  # seconds between looks at the cluster's workers
RPC_TIMEOUT = 10.0  # a scheduler that does not answer within this is taken as gone
CONNECT_TIMEOUT = 10.0
TOKENS_KEPT = 10_000  # attempts remembered for an event that may still come
LOST = "scheduler-connection-lost"  # Dask's reason when its client loses the scheduler


class DaskUnavailable(PyrexisError):
    """The dask mode was asked for, but Dask distributed is not installed."""


class AttemptLost(PyrexisError):
    """The cluster lost an attempt: ``error_type`` says how (``worker_died``,
    ``scheduler_lost``, or ``cancelled`` by the daemon)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


def require_distributed() -> None:
    """Fail with one clear message naming the extra when Dask distributed is missing."""
    try:
        import distributed  # noqa: F401
    except ImportError as exc:
        raise DaskUnavailable(
            f"the dask mode needs Dask distributed, which is not installed ({exc}): "
            f"pip install '{EXTRA}'"
        ) from None


@dataclass(frozen=True, slots=True)
class ClusterState:
    """The cluster as the mode sees it (shown by ``stats``)."""

    status: str = "connecting"  # connecting, connected, disconnected, stopped
    scheduler: str | None = None
    local: bool = False
    workers: int = 0
    threads: int = 0
    reconnects: int = 0  # connections made after the first
    abandoned: int = 0  # attempts ended after their function began on a worker (it may run on)
    error: str | None = None  # why the last connection failed or ended, or what is wrong with this one

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "scheduler": self.scheduler,
            "local": self.local,
            "workers": self.workers,
            "threads": self.threads,
            "reconnects": self.reconnects,
            "abandoned": self.abandoned,
            "error": self.error,
        }


@dataclass(slots=True)
class _Run:
    """One attempt in flight on the cluster (on the link's loop)."""

    key: str
    task: asyncio.Task[Any]
    worker: str | None = None  # where it started, once it has
    aborted: AttemptLost | None = None


@dataclass(slots=True)
class _Connection:
    client: Any
    generation: int
    runs: dict[int, _Run] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    lost: str | None = None  # why the scheduler is lost, once it is
    problem: str | None = None  # what is wrong while connected (workers that cannot load the tasks)


class ClusterLink:
    """Connects to ``scheduler`` (an address), or starts a LocalCluster of ``local``
    worker processes, and runs attempts there.

    ``on_event(events)`` (a list of ``(token, kind, payload)``, in the order sent) and
    ``on_state(state)`` are called on the daemon's loop. ``modules`` are the task modules
    the workers must import; ``topic`` is the Dask event topic of this daemon's attempts.
    """

    def __init__(
        self,
        scheduler: str | None,
        local: int | None,
        modules: tuple[str, ...],
        topic: str,
        on_event: Callable[[list[tuple[int, str, Any]]], None],
        on_state: Callable[[ClusterState], None],
    ) -> None:
        require_distributed()
        self.scheduler = scheduler
        self.local = local
        self.modules = modules
        self.topic = topic
        self._on_event = on_event
        self._on_state = on_state
        self._daemon_loop: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._supervisor: concurrent.futures.Future[None] | None = None
        self._conn: _Connection | None = None
        self._cluster: Any = None
        self._state = ClusterState(scheduler=scheduler, local=local is not None)
        self._stopping = False
        self._events: list[tuple[int, str, Any]] = []
        self._events_lock = threading.Lock()
        # Attempts ended before the link heard that they began: if they did begin after
        # all, they run abandoned (kept to a bound: most never begin).
        self._unstarted: OrderedDict[int, None] = OrderedDict()
        # Aborts that came before their attempt reached this loop (a cancel just after the
        # start): the attempt ends as soon as it arrives. Kept to a bound, like the above.
        self._early_aborts: OrderedDict[int, AttemptLost] = OrderedDict()

    # -- the daemon's side (called on the daemon's loop) --------------------------------
    def start(self) -> None:
        """Start the link's thread; it connects in the background (jobs wait meanwhile)."""
        self._daemon_loop = asyncio.get_running_loop()
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=self._serve, args=(loop,), name="pyrexis-dask", daemon=True)
        self._thread.start()
        self._supervisor = asyncio.run_coroutine_threadsafe(self._supervise(), loop)

    def run(self, key: str, token: int, args: tuple[Any, ...]) -> concurrent.futures.Future[Any]:
        """Run ``dask_worker.run_task(*args)`` as ``key``: a future of its reply tuple,
        or of :class:`AttemptLost`."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(self._run(key, token, args), self._loop)

    def cancel(self, token: int, reason: AttemptLost) -> None:
        """End attempt ``token`` now with ``reason``; its key is cancelled on the cluster."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._abort, token, reason)

    async def stop(self, timeout: float) -> None:
        """Disconnect (closing a LocalCluster) and end the link's thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._supervisor is not None:
            # A connection being made (to a scheduler that does not answer, say) is given up.
            self._supervisor.cancel()
        closing = asyncio.run_coroutine_threadsafe(self._close(timeout), loop)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.wrap_future(closing), timeout + 5)
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join, 5)

    # -- the link's loop ----------------------------------------------------------------
    def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _publish(self, **changes: Any) -> None:
        self._state = state = replace(self._state, **changes)
        if self._daemon_loop is not None and not self._daemon_loop.is_closed():
            self._daemon_loop.call_soon_threadsafe(self._on_state, state)

    async def _supervise(self) -> None:
        """Connect, follow the cluster while connected, and connect again with backoff."""
        backoff = FIRST_BACKOFF
        generation = 0
        while not self._stopping:
            try:
                conn = await self._connect(generation)
            except Exception as exc:  # any failure to connect is retried; say why
                if self._stopping:
                    break
                log.warning("dask mode: cannot connect to the cluster (retrying in %.1f s): %s", backoff, exc)
                self._publish(status="disconnected" if generation else "connecting", workers=0, threads=0, error=_text(exc))
            else:
                generation += 1
                backoff = FIRST_BACKOFF
                why = await self._follow(conn)
                if not self._stopping:
                    self._lose(conn, why)
                await self._disconnect(conn, why)
                if self._stopping:
                    break
                log.warning("dask mode: lost the scheduler (%s); reconnecting", why)
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(MAX_BACKOFF, backoff * 2)

    async def _connect(self, generation: int) -> _Connection:
        import dask
        from distributed import Client

        from pyrexisd import __version__
        from pyrexisd.executors.dask_worker import PyrexisTasks

        address = self.scheduler
        if self.local is not None:
            address = await self._local_cluster(dask)
        client = await Client(  # type: ignore[no-untyped-call]  # distributed's Client is unannotated
            address, asynchronous=True, timeout=CONNECT_TIMEOUT, name="pyrexisd"
        )
        try:
            conn = _Connection(client, generation)
            client.subscribe_topic(self.topic, self._on_topic)
            client.subscribe_topic("all", lambda event: self._on_cluster_event(conn, event))
            digest = hashlib.sha1(repr((self.modules, __version__)).encode()).hexdigest()[:12]
            # Named by what it loads: daemons with the same tasks share one, and a restart
            # replaces rather than adds.
            plugin = PyrexisTasks(self.modules, __version__)
            try:
                await client.register_plugin(plugin, name=f"pyrexis-tasks-{digest}")
            except Exception as exc:
                # Said loudly, but the mode runs: the workers that can load the tasks do,
                # and a job on one that cannot fails with the reason.
                conn.problem = f"a worker cannot load the tasks: {_text(exc)}"
                log.error("dask mode: %s", conn.problem)
        except BaseException:
            await self._drop(client, RPC_TIMEOUT)
            raise
        self._conn = conn
        log.info("dask mode: connected to %s", address)
        return conn

    async def _local_cluster(self, dask: Any) -> str:
        """The in-process LocalCluster's address (started on first use)."""
        if self._cluster is None:
            from distributed import LocalCluster

            # A worker that dies fails the attempt (the daemon retries it, counted); Dask
            # must not run it again on its own.
            dask.config.set({"distributed.scheduler.allowed-failures": 0})
            self._cluster = await LocalCluster(  # type: ignore[no-untyped-call]  # unannotated
                n_workers=self.local,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                scheduler_port=0,  # ephemeral ports: other daemons and clusters may run here
                dashboard_address=None,
                worker_dashboard_address=None,
                asynchronous=True,
            )
        address: str = self._cluster.scheduler_address
        self._publish(scheduler=address)
        return address

    async def _follow(self, conn: _Connection) -> str:
        """Keep the cluster's state current until the scheduler is lost; why it was."""
        client = conn.client
        first = True
        while not self._stopping:
            if conn.lost is not None:
                return conn.lost
            if client.status != "running":
                return f"the client is {client.status}"
            try:
                info = await asyncio.wait_for(client.scheduler.identity(), RPC_TIMEOUT)
            except Exception as exc:
                return _text(exc)
            workers = info.get("workers", {})
            threads = sum(int(w.get("nthreads", 0)) for w in workers.values())
            changes: dict[str, Any] = {"workers": len(workers), "threads": threads}
            if first:
                status = "connected"
                changes.update(status=status, error=conn.problem, scheduler=info.get("address", self._state.scheduler))
                if conn.generation:
                    changes["reconnects"] = self._state.reconnects + 1
                first = False
            if any(getattr(self._state, k) != v for k, v in changes.items()):
                self._publish(**changes)
            conn.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(conn.changed.wait(), WATCH_INTERVAL)
        return "stopping"

    def _lose(self, conn: _Connection, why: str) -> None:
        """The scheduler is gone: no slots from now on (said before the attempts in flight
        fail, so that their retries wait), and the follower stops."""
        if conn.lost is None and conn is self._conn:
            conn.lost = why
            conn.changed.set()
            self._publish(status="disconnected", workers=0, threads=0, error=why)

    async def _disconnect(self, conn: _Connection, why: str) -> None:
        """Fail what was in flight on this connection (retryable), then drop the client."""
        for token in list(conn.runs):
            self._abort(token, AttemptLost("scheduler_lost", f"the Dask scheduler was lost: {why}"))
        self._conn = None
        await self._drop(conn.client, RPC_TIMEOUT)

    async def _drop(self, client: Any, timeout: float) -> None:
        """Close ``client``, unsubscribed first: the scheduler would otherwise try to tell
        it of its own departure on a closed comm, and log that as critical."""
        if client.status == "running":
            for topic in (self.topic, "all"):
                with contextlib.suppress(Exception):
                    client.unsubscribe_topic(topic)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), timeout)

    def _on_cluster_event(self, conn: _Connection, event: tuple[float, dict[str, Any]]) -> None:
        """Scheduler events of the whole cluster: workers coming and going."""
        _time, msg = event
        action = msg.get("action") if isinstance(msg, dict) else None
        if action not in ("add-worker", "remove-worker"):
            return
        conn.changed.set()  # look at the threads now
        if action == "remove-worker":
            gone = msg.get("worker")
            for token, run in list(conn.runs.items()):
                if run.worker is not None and run.worker == gone:
                    self._abort(token, AttemptLost("worker_died", f"the Dask worker {gone} running it left the cluster"))

    def _on_topic(self, event: tuple[float, list[Any]]) -> None:
        """Our workers' events: starts stay here, the rest go to the daemon in order."""
        token, kind, payload = event[1]
        if kind == "start":
            conn = self._conn
            run = conn.runs.get(token) if conn is not None else None
            if run is None:
                if self._unstarted.pop(token, False) is None:
                    self._publish(abandoned=self._state.abandoned + 1)
                return
            if run.worker is not None and run.worker != payload:
                # Dask ran it again elsewhere (its worker died and allowed-failures let the
                # scheduler retry): the attempt that began is lost; no second run behind our back.
                self._abort(token, AttemptLost("worker_died", f"the Dask worker {run.worker} running it died"))
            else:
                run.worker = payload
            return
        with self._events_lock:
            first = not self._events
            self._events.append((token, kind, payload))
        if first and self._daemon_loop is not None and not self._daemon_loop.is_closed():
            self._daemon_loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        """On the daemon's loop: every event received since the last delivery, in order."""
        with self._events_lock:
            events, self._events = self._events, []
        self._on_event(events)

    async def _run(self, key: str, token: int, args: tuple[Any, ...]) -> Any:
        from distributed import KilledWorker
        from distributed.client import FutureCancelledError

        from pyrexisd.executors import dask_worker

        conn = self._conn
        if conn is None or conn.lost is not None or conn.client.status != "running":
            raise AttemptLost("scheduler_lost", f"not connected to the Dask cluster ({self._state.error or self._state.status})")
        early = self._early_aborts.pop(token, None)
        if early is not None:
            raise early
        task = asyncio.current_task()
        assert task is not None
        run = conn.runs[token] = _Run(key, task)
        future = None
        try:
            future = conn.client.submit(dask_worker.run_task, *args, key=key, pure=False, retries=0)
            return await future
        except asyncio.CancelledError:
            if run.aborted is not None:
                raise run.aborted from None
            raise
        except KilledWorker as exc:
            raise AttemptLost("worker_died", f"the Dask worker running it died: {exc}") from None
        except FutureCancelledError as exc:
            if run.aborted is not None:
                raise run.aborted from None
            if getattr(exc, "reason", None) == LOST:
                self._lose(conn, "the Dask client lost the scheduler")
                raise AttemptLost("scheduler_lost", "the Dask client lost the scheduler") from None
            raise AttemptLost("cancelled", f"cancelled on the cluster: {exc}") from None
        finally:
            conn.runs.pop(token, None)
            if future is not None:
                # Let go of the key: its result is ours now, the cluster need not keep it.
                if run.aborted is not None or not future.done():
                    with contextlib.suppress(Exception):
                        await asyncio.shield(conn.client.cancel([future], reason="pyrexis", msg=_msg(run)))
                future.release()

    def _abort(self, token: int, reason: AttemptLost) -> None:
        conn = self._conn
        run = conn.runs.get(token) if conn is not None else None
        if run is None:
            self._early_aborts[token] = reason
            _bound(self._early_aborts)
            return
        if run.aborted is not None:
            return
        run.aborted = reason
        run.task.cancel()
        if reason.error_type != "worker_died":  # a function whose worker is dead runs no more
            if run.worker is not None:
                self._publish(abandoned=self._state.abandoned + 1)
            else:
                self._unstarted[token] = None
                _bound(self._unstarted)

    async def _close(self, timeout: float) -> None:
        self._stopping = True
        conn = self._conn
        if conn is not None:
            conn.changed.set()
            for token in list(conn.runs):
                self._abort(token, AttemptLost("cancelled", "the daemon is stopping"))
            await self._drop(conn.client, timeout)
        if self._cluster is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._cluster.close(timeout=timeout), timeout + 1)
        self._publish(status="stopped", workers=0, threads=0)


def _bound(tokens: OrderedDict[int, Any]) -> None:
    """Forget the oldest of ``tokens`` beyond :data:`TOKENS_KEPT`."""
    while len(tokens) > TOKENS_KEPT:
        tokens.popitem(last=False)


def _text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _msg(run: _Run) -> str:
    return run.aborted.message if run.aborted is not None else "no longer awaited"
