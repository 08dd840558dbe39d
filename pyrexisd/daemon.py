"""The daemon's lifecycle: start, serve, and an ordered shutdown.

Start: take the database lock, refuse a live daemon on the socket (remove a stale one),
open the store, recover, listen. Signals only set flags. Shutdown: stop accepting, let
running jobs finish within the grace period (a second signal skips it), interrupt the
rest, commit, close connections, remove the socket.
"""

from __future__ import annotations

import asyncio
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
from pyrexisd.engine import Engine
from pyrexisd.executors.async_ import AsyncExecutor
from pyrexisd.executors.base import Executor
from pyrexisd.executors.process import ProcessExecutor
from pyrexisd.executors.shell import ShellExecutor
from pyrexisd.executors.thread import ThreadExecutor
from pyrexisd.handlers import make_handlers
from pyrexisd.recurring import Recurring
from pyrexisd.server import Server
from pyrexisd.store import Store
from pyrexisd.tasks.builtin import register_builtins
from pyrexisd.tasks.registry import REGISTRY, Registry
from pyrexisd.workers import WorkerRegistry

log = logging.getLogger("pyrexisd")


class StartupError(PyrexisError):
    """The daemon cannot start (another one runs, a path is unusable, a task module fails)."""


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
    """One daemon: owns the store, the engine and the server."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.should_exit = asyncio.Event()
        self.force_exit = asyncio.Event()
        self.engine: Engine | None = None
        self.activated: list[socket.socket] = []
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
        try:
            _makedirs(os.path.dirname(os.path.abspath(config.db)), 0o700)
        except OSError as exc:
            raise StartupError(f"cannot create the directory of {config.db}: {exc.strerror or exc}") from None
        locks = lock_database(config.db)
        try:
            self.activated = systemd.activated_sockets()
            if not self.activated:
                _makedirs(os.path.dirname(os.path.abspath(config.socket)), 0o700)
                claim_socket_path(config.socket)
            modules = discover_task_modules(config)
            load_tasks(REGISTRY, config, modules)
            store = Store(config.db, config.sync)
            try:
                await store.open()
            except StorageError as exc:
                raise StartupError(exc.message) from None
            try:
                return await self._serve(store, modules)
            finally:
                await store.close()
        finally:
            for lock in locks:
                lock.close()

    async def _serve(self, store: Store, modules: tuple[str, ...]) -> int:
        config = self.config
        loop = asyncio.get_running_loop()
        workers = WorkerRegistry(store)
        engine = Engine(config, store, REGISTRY, make_executors(config, modules, workers.started))
        await workers.kill_survivors()
        self.engine = engine
        await engine.start()
        recurring = Recurring(store, engine.submit, engine.check_spec, engine.clock)
        await recurring.start()
        server = Server(make_handlers(engine, config.max_frame, recurring), config.max_frame, config.max_inflight)
        self.server = server
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        # A file size limit (RLIMIT_FSIZE) must make writes fail, not kill the daemon.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        watchdog: asyncio.Task[None] | None = None
        try:
            if self.activated:
                # Socket activation: serve systemd's socket; it owns the path.
                await server.listen(sock=self.activated[0])
            else:
                await server.listen(config.socket)
            log.info(
                "pyrexisd ready on %s (db %s, sync %s, slots %s)",
                "a socket from systemd" if self.activated else config.socket,
                config.db, config.sync, config.slots,
            )
            systemd.notify(f"READY=1\nSTATUS=serving on {config.socket}\nMAINPID={os.getpid()}")
            interval = systemd.watchdog_interval()
            if interval is not None:
                watchdog = asyncio.ensure_future(systemd.watchdog(interval))
            await self.should_exit.wait()
            systemd.notify("STOPPING=1\nSTATUS=draining running jobs")
            server.stop_accepting()
            recurring.stop()
            await engine.stop(0.0 if self.force_exit.is_set() else config.grace, self.force_exit)
        finally:
            if watchdog is not None:
                watchdog.cancel()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await server.close()
        log.info("pyrexisd stopped")
        return 0
