"""The result cache: a repeated call of unchanged code on the same input is answered at once.

A task declared ``@task(cache=True)`` (or ``cache_ttl=SECONDS``) has its results kept
here. An entry's key is a digest of

* the task's code: the function's source (its bytecode when there is none), its name,
  and the version of the distribution its module comes from — so a changed task body,
  or an upgraded package, misses by itself, with nothing to invalidate by hand;
* its args as the task's model validated them, canonicalised (``{"n": "3"}`` and
  ``{"n": 3}`` for an ``int`` parameter, or an omitted default and the default given,
  are one key);
* the owner's uid: one user's results never answer another user's jobs.

The API is small so that jobs and pipeline stages use it alike: :meth:`ResultCache.key`
(definition, validated args, owner → :class:`CacheKey`), :meth:`ResultCache.lookup`
(and ``lookup_many``, one read for a batch), :meth:`ResultCache.put`,
:meth:`ResultCache.stats` and :meth:`ResultCache.clear`; :class:`StageCache` is the same
seen by a pipeline stage's calls (``lookup(task, args)`` / ``store(task, args, value)``). Admission computes the key of a
job that may be answered from the cache, the service looks it up before the job is
stored (a hit is stored ``completed``, never run), and dispatch puts a completed job's
result once its end has committed. Failed results are never put.

Entries live in SQLite (they survive a restart); memory holds only their index — key,
task, owner, size, expiry — in least-recently-used order, bounded by ``max_entries``
and ``max_bytes`` (the packed results' sizes): storing past a bound evicts the least
recently used entries. An entry past its TTL is never served and is dropped when met.
Writes ride the store's group commits (a hit's new LRU position, evictions, drops are
lazy: losing one in a crash only costs a future miss). Hit, miss and eviction counters
are per task and owner, since the daemon started.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import importlib.metadata
import inspect
import logging
import sys
import types
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import msgpack
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from protocol.errors import InvalidRequest, StorageError
from pyrexisd.config import DEFAULT_CACHE_MAX_BYTES, DEFAULT_CACHE_MAX_ENTRIES
from pyrexisd.store import Store
from pyrexisd.store_schema import CacheRow, CacheWrites
from pyrexisd.tasks.registry import TaskDef

log = logging.getLogger(__name__)

KEY_VERSION = b"pyrexis-cache-1"  # bump when the key's recipe changes: old entries then miss


@dataclass(frozen=True, slots=True)
class CacheKey:
    """Where a result of ``task`` for one input of ``owner`` is kept."""

    digest: bytes
    task: str
    owner: int | None


@dataclass(frozen=True, slots=True)
class Hit:
    """A stored result, and the id of the job (or pipeline) that produced it."""

    result: Any
    job_id: str

    @property
    def value(self) -> Any:
        """The result (the name a pipeline stage's call uses)."""
        return self.result


@dataclass(slots=True)
class _Entry:
    task: str
    owner: int | None
    job_id: str
    size: int
    expires_at: float | None


# -- the key ------------------------------------------------------------------------------
def _code_digest(code: types.CodeType, out: Any) -> None:
    """Feed a code object's bytecode, names and constants (nested code too) to ``out``."""
    out.update(code.co_code)
    out.update(repr((code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars)).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_digest(const, out)
        else:
            out.update(repr(const).encode())


@cache
def _distribution_versions() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()


def package_version(module: str) -> str:
    """The version of the installed distribution that provides ``module``'s top-level
    package; else that package's ``__version__``; else ``""`` (a plain module file)."""
    top = module.partition(".")[0]
    for dist in _distribution_versions().get(top, ()):
        try:
            return f"{dist}=={importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    version = getattr(sys.modules.get(top), "__version__", None)
    return str(version) if version is not None else ""


def code_fingerprint(definition: TaskDef) -> bytes:
    """Digest of what the task runs: the function's source (bytecode when it has none),
    the task's name, and its package's version."""
    out = hashlib.sha256(KEY_VERSION)
    func = inspect.unwrap(definition.func)
    try:
        out.update(b"source\0" + inspect.getsource(func).encode())
    except (OSError, TypeError):
        code = getattr(func, "__code__", None)
        if code is None:
            raise TypeError(f"task {definition.name!r}: neither source nor bytecode to key its cache on") from None
        out.update(b"bytecode\0")
        _code_digest(code, out)
    out.update(b"\0name\0" + definition.name.encode())
    module = definition.module or ""  # None for a function made by exec
    out.update(b"\0module\0" + module.encode())
    out.update(b"\0version\0" + package_version(module).encode())
    return out.digest()


def canonical_args(validated: BaseModel | Mapping[str, Any]) -> bytes:
    """The validated args as canonical bytes: msgpack (which tells bytes from text) of
    the values, every map's keys in one order, sets sorted, and any other type tagged
    with its name and its JSON form."""
    data = validated.model_dump() if isinstance(validated, BaseModel) else validated
    packed: bytes = msgpack.packb(_ordered(data), use_bin_type=True, default=_tagged)
    return packed


def _ordered(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _ordered(value[k]) for k in sorted(value, key=repr)}
    if isinstance(value, (list, tuple)):
        return [_ordered(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_ordered(v) for v in value), key=repr)
    return value


def _tagged(value: Any) -> Any:
    try:
        plain = to_jsonable_python(value)
    except (TypeError, ValueError):
        plain = repr(value)
    return [f"{type(value).__module__}.{type(value).__qualname__}", _ordered(plain)]


class ResultCache:
    """Results of cached tasks, in SQLite, indexed in memory in LRU order."""

    def __init__(
        self,
        store: Store,
        clock: Callable[[], float],
        max_entries: int = DEFAULT_CACHE_MAX_ENTRIES,
        max_bytes: int = DEFAULT_CACHE_MAX_BYTES,
        max_result: int | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_result = max_result  # a result larger than this is not kept
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()  # least recently used first
        self._expiry: list[tuple[float, bytes]] = []  # a heap; stale items are skipped
        self.bytes = 0
        self.hits: Counter[tuple[str, int | None]] = Counter()
        self.misses: Counter[tuple[str, int | None]] = Counter()
        self.evictions: Counter[tuple[str, int | None]] = Counter()
        self._fingerprints: dict[str, tuple[Callable[..., Any], bytes]] = {}

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 and self.max_bytes > 0

    async def load(self, definitions: Iterable[TaskDef] = ()) -> None:
        """Read the index of the stored entries; drop the expired ones and what lies past
        the bounds (they may have shrunk since the last start). The code of the cached
        tasks among ``definitions`` is digested now, not on their first submit."""
        for definition in definitions:
            if definition.cache:
                self._fingerprint(definition)
        now = self.clock()
        drop: list[bytes] = []
        for key, task, owner, job_id, size, expires_at in await self.store.reads.cache_index():
            if expires_at is not None and expires_at <= now:
                drop.append(key)
                continue
            self._add(key, _Entry(task, owner, job_id, size, expires_at))
        drop.extend(self._evict(count=False))
        if drop:
            await self.store.write(cache=CacheWrites(drop=drop))
            log.info("result cache: %d entries dropped at start (expired or past the bounds)", len(drop))

    # -- keys ---------------------------------------------------------------------------
    def key(self, definition: TaskDef, validated: BaseModel | Mapping[str, Any], owner: int | None) -> CacheKey:
        """The key of ``definition``'s result for these validated args of ``owner``."""
        code = self._fingerprint(definition)
        digest = hashlib.sha256(code)
        digest.update(canonical_args(validated))
        digest.update(b"\0owner\0" + str(owner).encode())
        return CacheKey(digest.digest(), definition.name, owner)

    def key_of_args(self, definition: TaskDef, args: dict[str, Any], owner: int | None) -> CacheKey:
        """The key for raw ``args`` (validated here, as admission validated them)."""
        return self.key(definition, definition.validate_args(args), owner)

    def _fingerprint(self, definition: TaskDef) -> bytes:
        known = self._fingerprints.get(definition.name)
        if known is not None and known[0] is definition.func:
            return known[1]
        code = code_fingerprint(definition)
        self._fingerprints[definition.name] = (definition.func, code)
        return code

    # -- reading ------------------------------------------------------------------------
    async def lookup(self, key: CacheKey) -> Hit | None:
        """The stored result for ``key``, or None (counted as a hit or a miss)."""
        return (await self.lookup_many([key])).get(key.digest)

    async def lookup_many(self, keys: Sequence[CacheKey]) -> dict[bytes, Hit]:
        """The stored results of those of ``keys`` that have a live entry, by digest; one
        read for all of them. A hit becomes the most recently used entry."""
        now = self.clock()
        self._expire(now)
        wanted: list[bytes] = []
        for key in keys:
            entry = self._entries.get(key.digest)
            if entry is not None and entry.expires_at is not None and entry.expires_at <= now:
                self._drop([key.digest])
                entry = None
            if entry is not None:
                wanted.append(key.digest)
        found = await self.store.reads.cache_results(wanted) if wanted else {}
        hits: dict[bytes, Hit] = {}
        touched: list[tuple[float, bytes]] = []
        for key in keys:
            stored = found.get(key.digest)
            # An entry put but not committed yet is not on disk: a miss, like no entry.
            if stored is None or key.digest not in self._entries:
                self.misses[(key.task, key.owner)] += 1
                continue
            self.hits[(key.task, key.owner)] += 1
            hits[key.digest] = Hit(stored[0], stored[1])
            self._entries.move_to_end(key.digest)
            touched.append((now, key.digest))
        if touched:
            self._write(CacheWrites(touch=touched))
        return hits

    # -- writing ------------------------------------------------------------------------
    def put_completed(
        self, definition: TaskDef, args: dict[str, Any], depends_on: Sequence[str], owner: int, result: Any, job_id: str
    ) -> None:
        """Job ``job_id`` of a cached task completed with ``result``: it goes in the cache.
        Not when it took its dependencies' results as ``inputs`` (they are not part of the
        key), nor when the task loaded now refuses its args (nothing to key on)."""
        if definition.inputs_param is not None and depends_on:
            return
        try:
            key = self.key_of_args(definition, args, owner)
        except InvalidRequest:
            return
        self.put(key, result, job_id, definition.cache_ttl)

    def put(self, key: CacheKey, result: Any, job_id: str, ttl: float | None) -> None:
        """Keep ``result`` (of job ``job_id``) under ``key`` for ``ttl`` seconds (None: until
        evicted); the least recently used entries go if the bounds are passed. Written
        with the next group commit; a result that cannot be kept is skipped quietly."""
        if not self.enabled:
            return
        try:
            blob = msgpack.packb(result, use_bin_type=True)
        except (TypeError, ValueError, OverflowError):
            return
        size = len(blob)
        if size > self.max_bytes or (self.max_result is not None and size > self.max_result):
            return
        now = self.clock()
        expires_at = None if ttl is None else now + ttl
        self._expire(now)
        if key.digest in self._entries:
            self._remove(key.digest)
        entry = _Entry(key.task, key.owner, job_id, size, expires_at)
        self._add(key.digest, entry)
        evicted = self._evict(count=True)
        row = CacheRow(key.digest, key.task, key.owner, job_id, blob, now, expires_at, now)
        fut = self._write(CacheWrites(put=[row], drop=evicted))

        def forget(fut: asyncio.Future[None]) -> None:
            # Not on disk after all: the index must not count it.
            if not fut.cancelled() and fut.exception() is not None and self._entries.get(key.digest) is entry:
                self._remove(key.digest)

        fut.add_done_callback(forget)

    async def clear(self, task: str | None = None, visible: Callable[[int | None], bool] | None = None) -> dict[str, int]:
        """Remove every entry (of ``task``; of the owners ``visible`` accepts): durable
        before it answers ``{"removed": entries, "bytes": their size}``."""
        victims = [
            key for key, e in self._entries.items()
            if (task is None or e.task == task) and (visible is None or visible(e.owner))
        ]  # fmt: skip
        size = sum(self._entries[key].size for key in victims)
        if victims:
            await self.store.write(cache=CacheWrites(drop=victims))
            for key in victims:
                if key in self._entries:
                    self._remove(key)
        return {"removed": len(victims), "bytes": size}

    # -- figures ------------------------------------------------------------------------
    def stats(self, task: str | None = None, visible: Callable[[int | None], bool] | None = None) -> dict[str, Any]:
        """Entries, bytes, hits, misses and evictions per task (of ``task``; of the owners
        ``visible`` accepts), the totals, and the bounds."""
        self._expire(self.clock())
        rows: dict[str, dict[str, int]] = {}

        def row(name: str) -> dict[str, int]:
            found = rows.get(name)
            if found is None:
                found = rows[name] = {"entries": 0, "bytes": 0, "hits": 0, "misses": 0, "evictions": 0}
            return found

        def wanted(name: str, owner: int | None) -> bool:
            return (task is None or name == task) and (visible is None or visible(owner))

        for entry in self._entries.values():
            if wanted(entry.task, entry.owner):
                r = row(entry.task)
                r["entries"] += 1
                r["bytes"] += entry.size
        for field, counter in (("hits", self.hits), ("misses", self.misses), ("evictions", self.evictions)):
            for (name, owner), n in counter.items():
                if wanted(name, owner):
                    row(name)[field] += n
        tasks = [{"task": name, **figures} for name, figures in sorted(rows.items())]
        return {
            "entries": sum(t["entries"] for t in tasks),
            "bytes": sum(t["bytes"] for t in tasks),
            "max_entries": self.max_entries,
            "max_bytes": self.max_bytes,
            "tasks": tasks,
        }

    # -- the index ----------------------------------------------------------------------
    def _add(self, key: bytes, entry: _Entry) -> None:
        self._entries[key] = entry
        self.bytes += entry.size
        if entry.expires_at is not None:
            heapq.heappush(self._expiry, (entry.expires_at, key))

    def _remove(self, key: bytes) -> _Entry:
        entry = self._entries.pop(key)
        self.bytes -= entry.size
        return entry

    def _evict(self, count: bool) -> list[bytes]:
        """Least recently used entries out until the bounds hold; their keys."""
        out: list[bytes] = []
        while self._entries and (len(self._entries) > self.max_entries or self.bytes > self.max_bytes):
            key, entry = self._entries.popitem(last=False)
            self.bytes -= entry.size
            if count:
                self.evictions[(entry.task, entry.owner)] += 1
            out.append(key)
        return out

    def _expire(self, now: float) -> None:
        """Entries whose TTL ran out leave the index, and the disk with the next commit."""
        heap = self._expiry
        gone: list[bytes] = []
        while heap and heap[0][0] <= now:
            expires_at, key = heapq.heappop(heap)
            entry = self._entries.get(key)
            if entry is not None and entry.expires_at == expires_at:
                gone.append(key)
        if gone:
            self._drop(gone)

    def _drop(self, keys: Iterable[bytes]) -> None:
        gone = [key for key in keys if key in self._entries]
        for key in gone:
            self._remove(key)
        if gone:
            self._write(CacheWrites(drop=gone))

    def _write(self, writes: CacheWrites) -> asyncio.Future[None]:
        """Ride the next group commit. A failure costs at most a miss later, or an entry
        that stays on disk unindexed until the next start: it is logged, not raised."""
        fut = self.store.write(cache=writes, lazy=True)
        fut.add_done_callback(_log_failure)
        return fut


class StageCache:
    """The result cache as a pipeline stage asks it, one call at a time: ``args`` are the
    call's arguments (its item included), the task's own ``cache``/``cache_ttl`` decide,
    and entries are ``owner``'s, named after ``source`` (the pipeline job's id)."""

    def __init__(self, cache: ResultCache, owner: int | None = None, source: str = "pipeline") -> None:
        self.cache = cache
        self.owner = owner
        self.source = source

    async def lookup(self, task: TaskDef, args: Mapping[str, Any]) -> Hit | None:
        """The kept value of this call, or None (a task without ``cache``: always None)."""
        if not task.cache or not self.cache.enabled:
            return None
        return await self.cache.lookup(self.cache.key(task, args, self.owner))

    def store(self, task: TaskDef, args: Mapping[str, Any], value: Any) -> None:
        """Keep a successful call's value (a task without ``cache``: nothing is kept)."""
        if task.cache:
            self.cache.put(self.cache.key(task, args, self.owner), value, self.source, task.cache_ttl)


def _log_failure(fut: asyncio.Future[None]) -> None:
    if fut.cancelled():
        return
    exc = fut.exception()
    if exc is not None:
        level = logging.WARNING if isinstance(exc, StorageError) else logging.ERROR
        log.log(level, "result cache: a write was not committed: %s", exc)
