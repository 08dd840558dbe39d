"""The daemon's lifecycle, told in the order things happen (:meth:`Daemon.run`).

Start: capture signals (they only set flags), take the database lock, bind the socket
(refusing a live daemon, removing a stale socket) before any job can run, open the store,
load the core and recover the jobs the last daemon left running, start dispatch, serve.
Stop: stop accepting, stop the schedules, let running jobs finish within the grace period
(a second signal skips it), interrupt the rest, fail the waiters, close connections and
executors, remove the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import importlib
import importlib.metadata
import logging
import os
import signal
import socket
import stat
from collections.abc import Callable
from typing import IO

from protocol.errors import PyrexisError, StorageError
from pyrexisd import systemd
from pyrexisd.config import Config
from pyrexisd.core.assembly import Core, build_core
from pyrexisd.executors.async_ import AsyncExecutor
from pyrexisd.executors.base import Executor
from pyrexisd.executors.process import ProcessExecutor
from pyrexisd.executors.shell import ShellExecutor
from pyrexisd.executors.spawner import SpawnerError
from pyrexisd.executors.thread import ThreadExecutor
from pyrexisd.handlers import Handlers
from pyrexisd.server import Server, bind_unix_socket
from pyrexisd.store import Store
from pyrexisd.tasks.builtin import register_builtins
from pyrexisd.tasks.registry import REGISTRY, Registry
from pyrexisd.workers import WorkerRegistry

log = logging.getLogger("pyrexisd")


class StartupError(PyrexisError):
    """The daemon cannot start (another one runs, a path is unusable, a task module fails).
    Never crosses the wire: it ends the process with one line and exit status 1."""

STOP_COMMIT_WAIT = 5.0  # seconds a stopping daemon waits for commits in flight


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


def claim_socket_path(path: str) -> None:
    """Refuse a live daemon at ``path``; remove a stale socket file left by a dead one."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("removing stale socket %s", path)
        os.unlink(path)
        return
    except OSError as exc:
        raise StartupError(f"cannot probe the socket {path}: {exc}") from None
    finally:
        probe.close()
    raise StartupError(f"another pyrexisd is already serving {path}")


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
    register_builtins(registry, enable_shell=config.enable_shell)
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
        "process": ProcessExecutor(config.processes, modules, config.kill_grace, on_worker),
        "async": AsyncExecutor(config.async_slots),
    }
    if config.enable_shell:
        executors["shell"] = ShellExecutor(config.shell_slots, config.kill_grace)
    return executors


def _makedirs(path: str, mode: int) -> None:
    if path and not os.path.isdir(path):
        os.makedirs(path, mode=mode, exist_ok=True)


class Daemon:
    """One daemon: owns the store, the job core and the server."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.should_exit = asyncio.Event()
        self.force_exit = asyncio.Event()
        self.core: Core | None = None
        self.server: Server | None = None

    def _on_signal(self, signum: int) -> None:
        # Only flags: the main coroutine does the work in order.
        if self.should_exit.is_set():
            log.warning("second %s: skipping the grace period", signal.Signals(signum).name)
            self.force_exit.set()
        else:
            log.info("%s: shutting down", signal.Signals(signum).name)
            self.should_exit.set()

    async def run(self) -> int:
        config = self.config
        loop = asyncio.get_running_loop()
        # Signals first: a stop asked for during start-up is kept and honoured once ready.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        # A file size limit (RLIMIT_FSIZE) must make writes fail, not kill the daemon.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        try:
            try:
                _makedirs(os.path.dirname(os.path.abspath(config.db)), 0o700)
            except OSError as exc:
                raise StartupError(f"cannot create the directory of {config.db}: {exc.strerror or exc}") from None
            locks = lock_database(config.db)
            try:
                listening, where = self._bind()
                try:
                    modules = discover_task_modules(config)
                    load_tasks(REGISTRY, config, modules)
                    store = Store(config.db, config.sync)
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
                            with contextlib.suppress(FileNotFoundError):
                                os.unlink(where)
            finally:
                for lock in locks:
                    lock.close()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def _bind(self) -> tuple[socket.socket, str | None]:
        """The listening socket: systemd's (socket activation) or a new one at the
        configured path, created owner-only. Bound before any job can run, because
        creating it with its final mode changes the process-wide umask for a moment."""
        activated = systemd.activated_sockets()
        if activated:
            return activated[0], None
        path = self.config.socket
        _makedirs(os.path.dirname(os.path.abspath(path)), 0o700)
        claim_socket_path(path)
        try:
            return bind_unix_socket(path), path
        except OSError as exc:
            raise StartupError(f"cannot bind the socket {path}: {exc.strerror or exc}") from None

    async def _serve(self, store: Store, modules: tuple[str, ...], listening: socket.socket, path: str | None) -> int:
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
        server = Server(Handlers(core.service, config.max_frame).table, config.max_frame, config.max_inflight)
        self.server = server
        watchdog: asyncio.Task[None] | None = None
        try:
            await server.listen(listening, path)
            log.info(
                "pyrexisd ready on %s (db %s, sync %s, slots %s)",
                path or "a socket from systemd", config.db, config.sync, config.slots,
            )
            systemd.notify(f"READY=1\nSTATUS=serving on {config.socket}\nMAINPID={os.getpid()}")
            interval = systemd.watchdog_interval()
            if interval is not None:
                watchdog = asyncio.ensure_future(systemd.watchdog(interval))
            await self.should_exit.wait()

            systemd.notify("STOPPING=1\nSTATUS=draining running jobs")
            server.stop_accepting()
            schedules.stop()
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
            await server.close()
        log.info("pyrexisd stopped")
        return 0
