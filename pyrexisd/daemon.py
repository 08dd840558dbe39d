"""The daemon's lifecycle, told in the order things happen (:meth:`Daemon.run`).

Start: capture signals (they only set flags), check ``--http`` (its extra, its token),
take the database lock, bind the socket (in a directory only the daemon's uid can write,
with the modes the access policy needs; refusing a live daemon, removing a stale socket)
and the HTTP listener's before any job can run, open the store, load the core and
recover the jobs the last daemon left running, start dispatch, serve (the socket, then
HTTP). Stop: stop accepting (both), stop the schedules, let running jobs finish within the grace period
(a second signal skips it), interrupt the rest, fail the waiters, close connections and
executors, remove the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import gc
import importlib
import importlib.metadata
import logging
import os
import resource
import signal
import socket
import stat
from collections.abc import Awaitable, Callable
from typing import IO

from protocol.errors import PyrexisError, StorageError
from pyrexisd import systemd
from pyrexisd.access import AccessPolicy, SocketDir, UnsafeSocketPath, bind_in, open_socket_dir
from pyrexisd.config import Config
from pyrexisd.core.assembly import Core, build_core
from pyrexisd.core.service import BACKUP_PREFIX
from pyrexisd.executors.async_ import AsyncExecutor
from pyrexisd.executors.base import Executor
from pyrexisd.executors.process import ProcessExecutor
from pyrexisd.executors.shell import ShellExecutor
from pyrexisd.executors.spawner import SpawnerError
from pyrexisd.executors.thread import ThreadExecutor
from pyrexisd.handlers import Handlers
from pyrexisd.http.setup import HttpSetup, connection_figures, prepare_http
from pyrexisd.reload import Reloader, apply_declared
from pyrexisd.server import Limits, Server
from pyrexisd.settings import ConfigSource
from pyrexisd.store import Store
from pyrexisd.tasks.builtin import register_builtins
from pyrexisd.tasks.registry import REGISTRY, Registry
from pyrexisd.workers import WorkerRegistry

log = logging.getLogger("pyrexisd")


class StartupError(PyrexisError):
    """The daemon cannot start (another one runs, a path is unusable, a task module fails).
    Never crosses the wire: it ends the process with one line and exit status 1."""

STOP_COMMIT_WAIT = 5.0  # seconds a stopping daemon waits for commits in flight
# Allocations between two young collections (CPython's default is 700). A request's
# objects live until its answer, and a submit_many of thousands of jobs makes hundreds
# of thousands: at 700 they outlive two young collections, reach the oldest generation
# and set off full collections. At this figure most of them are freed by refcounting
# before any collection sees them (measured: the collector's share of a batch halved).
GC_YOUNG_THRESHOLD = 10_000


def lock_database(db_path: str) -> list[IO[bytes]]:
    """Hold exclusive locks for the daemon's lifetime: on a lock file next to the
    database's real path (symlinks resolved), and on the database file itself, so that a
    hard link to it cannot be opened by a second daemon either. ``flock`` locks do not
    interact with the POSIX locks SQLite takes on the same file."""
    real = os.path.realpath(db_path)
    if os.path.isdir(real):
        raise StartupError(f"cannot open database {db_path}: it is a directory")
    handles: list[IO[bytes]] = []
    try:
        for path in (real + ".lock", real):
            handle: IO[bytes] = open(path, "ab")
            handles.append(handle)
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise StartupError(f"another pyrexisd is using the database {db_path} ({path} is locked)") from None
                raise
    except OSError as exc:
        for handle in handles:
            handle.close()
        raise StartupError(f"cannot use the database path {db_path}: {exc.strerror or exc}") from None
    except StartupError:
        for handle in handles:
            handle.close()
        raise
    return handles


def claim_socket_path(directory: SocketDir, shown: str) -> None:
    """Refuse a live daemon at the socket's name in ``directory``; remove a stale socket
    file left by a dead one (``shown`` is the path for messages)."""
    name = directory.name
    try:
        st = os.lstat(name, dir_fd=directory.fd)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"{shown} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(directory.bind_path)
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("removing stale socket %s", shown)
        os.unlink(name, dir_fd=directory.fd)
        return
    except OSError as exc:
        raise StartupError(f"cannot probe the socket {shown}: {exc}") from None
    finally:
        probe.close()
    raise StartupError(f"another pyrexisd is already serving {shown}")


def raise_open_files_limit(needed: int) -> None:
    """Let the daemon hold ``needed`` descriptors (connections, the store, workers), up to
    the hard limit: the usual soft limit of 1024 would refuse connections well below
    ``--max-connections``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        if target > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < needed:
            log.warning("the open-files limit (%d) is below what --max-connections needs (%d)", target, needed)


def server_limits(config: Config) -> Limits:
    """The server's share of the configuration."""
    return Limits(
        max_frame=config.max_frame,
        max_depth=config.max_depth,
        max_inflight=config.max_inflight,
        max_streams=config.max_streams,
        max_connections=config.max_connections,
        frame_timeout=config.frame_timeout,
        idle_timeout=config.idle_timeout,
        max_buffered=config.buffered_limit,
    )


ENTRY_POINT_GROUP = "pyrexis.tasks"


def discover_task_modules(config: Config) -> tuple[str, ...]:
    """Modules named by ``--tasks`` and by every ``pyrexis.tasks`` entry point, in order."""
    modules = list(config.task_modules)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.module not in modules:
            modules.append(ep.module)
    return tuple(modules)


def load_tasks(registry: Registry, config: Config, modules: tuple[str, ...]) -> None:
    """Register the built-ins, then import each task module (its ``@task``s register)."""
    register_builtins(registry, enable_shell=config.enable_shell, pipelines=True)
    for module in modules:
        try:
            importlib.import_module(module)
        except PyrexisError as exc:
            raise StartupError(f"task module {module!r}: {exc.message}") from exc
        except Exception as exc:
            raise StartupError(f"cannot import task module {module!r}: {type(exc).__name__}: {exc}") from exc


def make_executors(
    config: Config, modules: tuple[str, ...], on_worker: Callable[[int, int | None], None]
) -> dict[str, Executor]:
    executors: dict[str, Executor] = {
        "thread": ThreadExecutor(config.threads),
        # Workers import the same task modules as the daemon.
        "process": ProcessExecutor(config.processes, modules, config.kill_grace, on_worker, config.max_result),
        "async": AsyncExecutor(config.async_slots),
    }
    if config.dask_enabled:
        executors["dask"] = dask_executor(config, modules)
    if config.enable_shell:
        # Nothing larger than a frame could be a job's result: the output file is read up to that.
        executors["shell"] = ShellExecutor(config.shell_slots, config.kill_grace, max_output=config.max_frame)
    return executors


def dask_executor(config: Config, modules: tuple[str, ...]) -> Executor:
    """The dask mode's executor; a clear start-up error when its extra is not installed."""
    from pyrexisd.executors.dask_link import DaskUnavailable
    from pyrexisd.executors.dask_mode import DaskExecutor

    try:
        return DaskExecutor(
            config.dask_scheduler, config.dask_local, config.dask_slots, modules, config.max_result, config.kill_grace
        )
    except DaskUnavailable as exc:
        raise StartupError(exc.message) from None


def _warn_if_backlog_capped(backlog: int) -> None:
    """The kernel silently caps a listen backlog at ``net.core.somaxconn``: say so, since a
    burst of connections past the cap is refused (EAGAIN) before the daemon sees it."""
    try:
        with open("/proc/sys/net/core/somaxconn") as fh:
            cap = int(fh.read().strip())
    except (OSError, ValueError):
        return
    if cap < backlog:
        log.warning("net.core.somaxconn is %d: the listen backlog (%d, for --max-connections) is cut to it", cap, backlog)


def _warn_of_unknown_user_tasks(config: Config, registry: Registry) -> None:
    """--user-tasks naming a task that is not loaded is most likely a typo."""
    if config.user_tasks is not None:
        unknown = sorted(set(config.user_tasks) - {t.name for t in registry.all()})
        if unknown:
            log.warning("--user-tasks names tasks that are not loaded: %s", ", ".join(unknown))


REWRITE_TIMEOUT_USEC = 3600 * 1_000_000  # start-up time asked of systemd for a one-time VACUUM


def _rewriting() -> None:
    systemd.notify(f"EXTEND_TIMEOUT_USEC={REWRITE_TIMEOUT_USEC}\nSTATUS=rewriting the database once (VACUUM)")


def _remove_stale_backups(db_path: str) -> None:
    """Copies a backup left behind when the daemon died while making it (we hold the
    database's lock: no other daemon is making one)."""
    directory = os.path.dirname(os.path.abspath(db_path))
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            if name.startswith(BACKUP_PREFIX) and name.endswith(".db"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, name))


def _remove_socket(where: SocketDir) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(where.name, dir_fd=where.fd)


def _makedirs(path: str, mode: int) -> None:
    if path and not os.path.isdir(path):
        os.makedirs(path, mode=mode, exist_ok=True)


class Daemon:
    """One daemon: owns the store, the job core and the server."""

    def __init__(self, config: Config, source: ConfigSource | None = None) -> None:
        self.config = config
        self.source = source  # where the configuration came from: SIGHUP reads it again
        self._reloads: set[asyncio.Task[None]] = set()
        self.should_exit = asyncio.Event()
        self.force_exit = asyncio.Event()
        self.core: Core | None = None
        self.server: Server | None = None
        self.access = AccessPolicy(config.allow_users, config.allow_groups)
        self.http: HttpSetup | None = None

    def _on_signal(self, signum: int) -> None:
        # Only flags: the main coroutine does the work in order.
        if self.should_exit.is_set():
            log.warning("second %s: skipping the grace period", signal.Signals(signum).name)
            self.force_exit.set()
        else:
            log.info("%s: shutting down", signal.Signals(signum).name)
            self.should_exit.set()

    def _on_hangup(self) -> None:
        # Like `pyrexisctl reload`; ignored until the daemon serves (the core is not built).
        if self.core is None or self.core.service.reloader is None:
            log.warning("SIGHUP: nothing to reload yet")
            return
        task = asyncio.ensure_future(self._reload(self.core.service.reloader))
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    @staticmethod
    async def _reload(reloader: Callable[[], Awaitable[dict[str, object]]]) -> None:
        try:
            await reloader()
        except PyrexisError as exc:
            log.error("SIGHUP: %s", exc.message)

    async def run(self) -> int:
        config = self.config
        loop = asyncio.get_running_loop()
        # Signals first: a stop asked for during start-up is kept and honoured once ready.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hangup)
        # A file size limit (RLIMIT_FSIZE) must make writes fail, not kill the daemon.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)
        try:
            if config.http is not None:
                try:  # before anything else: a missing extra is one line
                    self.http = prepare_http(config)
                except ValueError as exc:
                    raise StartupError(str(exc)) from None
            try:
                _makedirs(os.path.dirname(os.path.abspath(config.db)), 0o700)
            except OSError as exc:
                raise StartupError(f"cannot create the directory of {config.db}: {exc.strerror or exc}") from None
            locks = lock_database(config.db)
            raise_open_files_limit(config.max_connections + 256)
            try:
                listening, where = self._bind()
                try:
                    if self.http is not None:
                        try:  # with the other socket: before any job can run
                            self.http.bind()
                        except OSError as exc:
                            raise StartupError(f"cannot listen for HTTP on {config.http}: {exc.strerror or exc}") from None
                    modules = discover_task_modules(config)
                    load_tasks(REGISTRY, config, modules)
                    _warn_of_unknown_user_tasks(config, REGISTRY)
                    _remove_stale_backups(config.db)
                    store = Store(config.db, config.sync, on_rewrite=_rewriting)
                    try:
                        await store.open()
                    except StorageError as exc:
                        raise StartupError(exc.message) from None
                    try:
                        return await self._serve(store, modules, listening, where)
                    finally:
                        await store.close()
                finally:
                    if self.server is None:  # never served: nobody else knows this socket
                        listening.close()
                        if where is not None:
                            _remove_socket(where)
                    if where is not None:
                        where.close()
                    if self.http is not None:
                        self.http.unbind()
            finally:
                for lock in locks:
                    lock.close()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def _bind(self) -> tuple[socket.socket, SocketDir | None]:
        """The listening socket: systemd's (socket activation) or a new one at the
        configured path, with the modes the access policy needs (owner-only unless others
        are allowed). Bound before any job can run, because creating it with its final
        mode changes the process-wide umask for a moment."""
        activated = systemd.activated_sockets()
        if activated:
            return activated[0], None
        path = self.config.socket
        layout = self.access.layout()
        try:
            directory = open_socket_dir(path, layout)
        except (UnsafeSocketPath, OSError) as exc:
            raise StartupError(f"cannot use the socket path {path}: {exc}") from None
        backlog = server_limits(self.config).backlog
        _warn_if_backlog_capped(backlog)
        try:
            claim_socket_path(directory, path)
            return bind_in(directory, layout, backlog), directory
        except OSError as exc:
            directory.close()
            raise StartupError(f"cannot bind the socket {path}: {exc.strerror or exc}") from None
        except BaseException:
            directory.close()
            raise

    async def _serve(self, store: Store, modules: tuple[str, ...], listening: socket.socket, where: SocketDir | None) -> int:
        config = self.config
        workers = WorkerRegistry(store)
        await workers.kill_survivors()
        executors = make_executors(config, modules, workers.started)
        if "shell" in executors:
            # Its spawn helper starts now, while the daemon is small: before the jobs load.
            try:
                await executors["shell"].start()
            except SpawnerError as exc:
                raise StartupError(exc.message) from None
        core = build_core(config, store, REGISTRY, executors)
        self.core = core
        await core.load()  # the committed view, queues, interrupted jobs recovered, waiting jobs
        await core.dispatch.start()
        core.metrics.loop_lag.start()
        schedules = core.service.schedules
        await schedules.start()
        try:
            await apply_declared(core, config)  # the file's queues and schedules
        except PyrexisError as exc:
            origin = self.source.path if self.source is not None else "the configuration"
            raise StartupError(f"{origin}: {exc.message}") from None
        core.retention.start()
        handlers = Handlers(core.service, config.max_frame)
        server = Server(handlers.table, server_limits(config), self.access)
        self.server = server
        if self.source is not None:
            core.service.reloader = Reloader(core, self.source, config, server).reload
        watchdog: asyncio.Task[None] | None = None
        http = None if self.http is None else self.http.listener(handlers, config, STOP_COMMIT_WAIT)
        core.stats.exporter.add(lambda: connection_figures(server, http))
        try:
            await server.listen(listening, None if where is None else lambda: _remove_socket(where))
            if http is not None:
                assert self.http is not None
                await http.start()
                log.info("HTTP API and dashboard on %s", self.http.shown)
            # What start-up made lives as long as the daemon: out of the cyclic collector's
            # sight, its full collections (set off by the jobs a batch keeps alive at once)
            # walk only what came after. Refcounting still frees these objects.
            gc.collect()
            gc.freeze()
            access = self.access
            log.info(
                "pyrexisd ready on %s (db %s, sync %s, slots %s, %s)",
                config.socket if where is not None else "a socket from systemd", config.db, config.sync, config.slots,
                "owner-only" if not access.shared else
                f"also users {sorted(access.allow_users)} and groups {sorted(access.allow_groups)}",
            )
            systemd.notify(f"READY=1\nSTATUS=serving on {config.socket}\nMAINPID={os.getpid()}")
            interval = systemd.watchdog_interval()
            if interval is not None:
                watchdog = asyncio.ensure_future(systemd.watchdog(interval))
            await self.should_exit.wait()

            systemd.notify("STOPPING=1\nSTATUS=draining running jobs")
            server.stop_accepting()
            if http is not None:
                http.stop_accepting()
            schedules.stop()
            await core.retention.stop()
            core.stop_taking_work()
            await core.dispatch.drain(0.0 if self.force_exit.is_set() else config.grace, self.force_exit)
            # Let ends in flight commit before deciding who was interrupted (not forever: a
            # full disk keeps them retrying; the next start's recovery handles what is left).
            await core.ledger.settle_changes(STOP_COMMIT_WAIT)
            await core.dispatch.interrupt_rest()
            core.ledger.fail_waiters()
            await core.dispatch.close()
            core.metrics.loop_lag.stop()
        finally:
            if watchdog is not None:
                watchdog.cancel()
            if http is not None:
                await http.close()
            await server.close()
        log.info("pyrexisd stopped")
        return 0
