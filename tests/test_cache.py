"""The result cache, end to end: real daemons, real SQLite files, tasks of ``cache_tasks``.

A cached task's result answers a later job with the same validated args at once (the
record says ``cached`` and names the job whose result it is), until the task's code
changes, its TTL runs out, the LRU bounds evict it or a client clears it; failed results
are never kept, a spec may bypass the cache, and entries survive a restart. The key's
parts are also checked in-process (``pyrexisd.core.cache``).
"""

from __future__ import annotations

import os
import textwrap
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import Daemon, RawClient, shared_daemon, wait_until
from test_cli import ctl, ok

from pyrexisd.core.cache import ResultCache, canonical_args, code_fingerprint, package_version
from pyrexisd.tasks.registry import Registry, make_task, task

TASKS = ("--tasks", "cache_tasks")


@pytest.fixture(scope="module")
def shared() -> Iterator[Daemon]:
    yield from shared_daemon("pxca", TASKS)


@pytest.fixture
def c(shared: Daemon) -> Iterator[RawClient]:
    with shared.client() as client:
        yield client


def run(c: RawClient, task: str, args: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """Submit and wait: the job's final record."""
    job = c.submit(task, args, **spec)
    return job if job["status"] == "completed" else c.wait(job["job_id"])


def task_stats(c: RawClient, name: str) -> dict[str, Any]:
    rows = c.request("cache_stats", {"task": name})["tasks"]
    return rows[0] if rows else {"entries": 0, "bytes": 0, "hits": 0, "misses": 0, "evictions": 0}


# -- hits and misses ------------------------------------------------------------------------
def test_a_repeated_call_completes_at_once_from_the_cache_without_running(c: RawClient) -> None:
    """Given a completed job of a cached task, when the same args are submitted again
    (also as a string the task's model converts to the same int), then the submit answers
    a record already completed: never run (no attempt, no start), the first job's result,
    ``cached`` and ``cached_from`` naming the first job; other args miss and run."""
    first = run(c, "square", {"n": 7})
    assert first["status"] == "completed" and first["cached"] is False and first["cached_from"] is None

    again = c.submit("square", {"n": 7})
    lax = c.submit("square", {"n": "7"})
    other = run(c, "square", {"n": 8})

    for hit in (again, lax):
        assert hit["status"] == "completed", hit
        assert (hit["cached"], hit["cached_from"]) == (True, first["job_id"])
        assert hit["result"] == first["result"]
        assert (hit["attempts"], hit["started_at"]) == (0, None)
        assert hit["finished_at"] is not None
    assert c.get(again["job_id"]) == again  # stored as answered
    assert other["cached"] is False and other["result"]["value"] == 64
    assert other["result"]["token"] != first["result"]["token"]
    figures = task_stats(c, "square")
    assert figures["hits"] >= 2 and figures["misses"] >= 2 and figures["entries"] >= 2


def test_a_failed_result_is_never_cached(c: RawClient) -> None:
    """Given a cached task whose job failed, when the same args are submitted again, then
    the job runs again (and fails again): nothing was kept."""
    first = run(c, "sometimes_fails", {"n": 1, "fail": True})
    second = run(c, "sometimes_fails", {"n": 1, "fail": True})

    assert first["status"] == second["status"] == "failed"
    assert second["cached"] is False and second["attempts"] == 1
    assert task_stats(c, "sometimes_fails")["entries"] == 0


def test_cache_false_runs_the_job_and_its_result_refreshes_the_entry(c: RawClient) -> None:
    """Given a cached result, when a spec says ``cache: false``, then that job runs (a new
    token) and the next job with the same args gets the bypassing job's fresh result."""
    first = run(c, "square", {"n": 11})
    bypass = run(c, "square", {"n": 11}, cache=False)
    after = c.submit("square", {"n": 11})

    assert bypass["cached"] is False and bypass["attempts"] == 1
    assert bypass["result"]["token"] != first["result"]["token"]
    assert (after["cached_from"], after["result"]) == (bypass["job_id"], bypass["result"])


def test_an_uncached_task_always_runs(c: RawClient) -> None:
    """Given a task without ``cache``, then the same args run every time."""
    one, two = run(c, "uncached", {"n": 1}), run(c, "uncached", {"n": 1})
    assert one["result"]["token"] != two["result"]["token"]
    assert one["cached"] is two["cached"] is False


def test_a_job_waiting_on_dependencies_is_not_answered_at_submit(c: RawClient) -> None:
    """Given a cached result, when the same args come with ``depends_on``, then the job
    waits for its dependency and runs like any other: the cache never skips a wait."""
    first = run(c, "square", {"n": 21})
    dep = run(c, "uncached", {"n": 0})
    job = c.submit("square", {"n": 21}, depends_on=[dep["job_id"]])
    done = c.wait(job["job_id"])
    assert done["cached"] is False and done["attempts"] == 1
    assert done["result"]["token"] != first["result"]["token"]


def test_an_entry_expires_after_its_ttl(c: RawClient) -> None:
    """Given a task cached for one second, then a repeat at once is a hit, and a repeat
    once the second has passed runs again."""
    first = run(c, "short_lived", {"n": 5})
    hit = c.submit("short_lived", {"n": 5})
    assert hit["cached_from"] == first["job_id"]

    def fresh_run() -> dict[str, Any] | None:
        record = run(c, "short_lived", {"n": 5})
        return record if not record["cached"] else None

    later = wait_until(fresh_run, 30, 0.2, "the cached result to expire")
    assert later["result"]["token"] != first["result"]["token"] and later["attempts"] == 1


def test_cache_stats_and_clear_through_the_cli(shared: Daemon, c: RawClient) -> None:
    """Given cached results, then ``pyrexisctl cache stats`` shows them per task, ``cache
    clear --task`` removes that task's entries (and says how many), and the next job of
    those args runs again."""
    first = run(c, "square", {"n": 31})
    run(c, "blob", {"n": 1, "size": 100})

    table = ok(shared.socket, "cache", "stats").stdout
    assert "square" in table and "blob" in table and "HITS" in table
    before = ok(shared.socket, "cache", "stats", "--json", "--task", "square").stdout
    assert '"task":"square"' in before.replace(" ", "")

    cleared = ok(shared.socket, "--json", "cache", "clear", "--task", "square").stdout
    assert '"removed":' in cleared and '"removed":0' not in cleared.replace(" ", "")
    assert task_stats(c, "square")["entries"] == 0
    assert task_stats(c, "blob")["entries"] >= 1
    again = run(c, "square", {"n": 31})
    assert again["cached"] is False and again["result"]["token"] != first["result"]["token"]
    assert "removed" in ok(shared.socket, "cache", "clear").stdout
    assert c.request("cache_stats")["entries"] == 0


def test_submit_no_cache_through_the_cli(shared: Daemon, c: RawClient) -> None:
    """Given a cached result, then ``pyrexisctl submit --no-cache`` runs the job anyway."""
    first = run(c, "square", {"n": 41})
    proc = ok(shared.socket, "submit", "square", "-a", "n=41", "--no-cache", "--wait", "--json")
    assert '"cached":false' in proc.stdout.replace(" ", "")
    assert first["result"]["token"] not in proc.stdout


def test_the_cache_ops_are_listed_and_check_their_args(c: RawClient) -> None:
    """Given the protocol, then ``hello`` lists the cache ops, and a bad ``task`` is
    ``invalid_request``."""
    ops = c.request("hello", {"protocol": 1})["ops"]
    assert {"cache_stats", "cache_clear"} <= set(ops)
    frame = c.call("cache_clear", {"task": 5})
    assert frame["ok"] is False and frame["error"]["code"] == "invalid_request"


# -- bounds -----------------------------------------------------------------------------------
def test_lru_eviction_by_entries_keeps_the_recently_used(start_daemon: Callable[..., Daemon]) -> None:
    """Given a cache of 2 entries holding a and b, when a is used again and c is stored,
    then b (the least recently used) is evicted: a still hits, b runs again."""
    d = start_daemon(*TASKS, "--cache-max-entries", "2")
    with d.client() as c:
        a, b = run(c, "square", {"n": 1}), run(c, "square", {"n": 2})
        assert c.submit("square", {"n": 1})["cached_from"] == a["job_id"]
        run(c, "square", {"n": 3})

        assert c.submit("square", {"n": 1})["cached_from"] == a["job_id"]
        b_again = run(c, "square", {"n": 2})
        assert b_again["cached"] is False and b_again["result"]["token"] != b["result"]["token"]
        stats = c.request("cache_stats")
        assert stats["entries"] == 2 and stats["max_entries"] == 2
        assert task_stats(c, "square")["evictions"] >= 1


def test_lru_eviction_by_bytes(start_daemon: Callable[..., Daemon]) -> None:
    """Given a cache of 2,500 bytes and results of about 1,000 bytes, when a third result
    is stored, then the oldest is evicted and the bytes stay within the bound."""
    d = start_daemon(*TASKS, "--cache-max-bytes", "2500")
    with d.client() as c:
        one = run(c, "blob", {"n": 1, "size": 1000})
        two = run(c, "blob", {"n": 2, "size": 1000})
        run(c, "blob", {"n": 3, "size": 1000})

        stats = c.request("cache_stats")
        assert stats["entries"] == 2 and 2000 < stats["bytes"] <= 2500
        assert c.submit("blob", {"n": 2, "size": 1000})["cached_from"] == two["job_id"]
        assert run(c, "blob", {"n": 1, "size": 1000})["result"] != one["result"]
        assert task_stats(c, "blob")["evictions"] >= 1
        # A result larger than the whole cache is not kept at all.
        run(c, "blob", {"n": 4, "size": 5000})
        assert c.request("cache_stats")["bytes"] <= 2500


# -- durability and the code in the key -------------------------------------------------------
BODY = '''
import uuid
from pyrexisd.tasks.registry import task


@task(cache=True)
def compute(n: int) -> dict:
    return {{"version": {version}, "n": n, "token": uuid.uuid4().hex}}
'''


def write_module(workdir: str, version: int) -> None:
    path = os.path.join(workdir, "changing_tasks.py")
    with open(path, "w") as fh:
        fh.write(textwrap.dedent(BODY.format(version=version)))
    # A later mtime, so that no stale bytecode of the old body is reused.
    later = time.time() + version
    os.utime(path, (later, later))


def test_entries_survive_a_restart_and_a_changed_body_misses(workdir: str, start_daemon: Callable[..., Daemon]) -> None:
    """Given a cached result of a task module in the daemon's directory, then after a
    restart the same call is still a hit; after the module's task body is rewritten and
    the daemon restarted, the same call misses by itself and runs the new code."""
    write_module(workdir, 1)
    d = start_daemon("--tasks", "changing_tasks")
    with d.client() as c:
        first = run(c, "compute", {"n": 1})
    assert d.terminate() == 0

    d.start()
    with d.client() as c:
        hit = c.submit("compute", {"n": 1})
        assert (hit["status"], hit["cached_from"], hit["result"]) == ("completed", first["job_id"], first["result"])
    assert d.terminate() == 0

    write_module(workdir, 2)
    d.start()
    with d.client() as c:
        changed = run(c, "compute", {"n": 1})
        assert changed["cached"] is False and changed["result"]["version"] == 2
        assert c.submit("compute", {"n": 1})["cached_from"] == changed["job_id"]


def test_a_cache_kept_with_smaller_bounds_is_cut_at_start(workdir: str, start_daemon: Callable[..., Daemon]) -> None:
    """Given three cached results, when the daemon restarts with room for one, then one
    entry is left: the most recently used."""
    d = start_daemon(*TASKS)
    with d.client() as c:
        for n in (1, 2, 3):
            run(c, "square", {"n": n})
        last = c.submit("square", {"n": 1})
    assert d.terminate() == 0
    again = start_daemon(*TASKS, "--cache-max-entries", "1", db=d.db, subdir="again")
    with again.client() as c:
        assert c.request("cache_stats")["entries"] == 1
        assert c.submit("square", {"n": 1})["cached_from"] == last["cached_from"]


def test_a_bad_cache_bound_is_a_usage_error(workdir: str) -> None:
    """Given a negative bound, then the daemon refuses to start (exit 2), saying so."""
    d = Daemon(workdir, ("--cache-max-bytes", "-1"))
    d.start(wait=False)
    assert d.proc is not None and d.proc.wait(30) == 2
    assert "cache-max-bytes" in d.log()


# -- the key, in-process -------------------------------------------------------------------------
def _from_source(source: str, name: str) -> Any:
    namespace: dict[str, Any] = {}
    exec(compile(source, "<generated>", "exec"), namespace)  # no file: no source to read
    return namespace[name]


def test_the_code_digest_follows_the_body_source_or_bytecode() -> None:
    """Given functions of one name, then the digest is stable for one body and differs
    for another, whether read from source or (without a file) from bytecode."""
    def f(n: int) -> int:
        return n + 1

    def g(n: int) -> int:
        return n + 2

    g.__name__ = "f"
    same = code_fingerprint(make_task(f, name="t", cache=True))
    assert same == code_fingerprint(make_task(f, name="t", cache=True))
    assert same != code_fingerprint(make_task(g, name="t", cache=True))
    assert same != code_fingerprint(make_task(f, name="other", cache=True))

    one = _from_source("def h(n):\n    return [n, 1]\n", "h")
    two = _from_source("def h(n):\n    return [n, 2]\n", "h")
    assert code_fingerprint(make_task(one, name="h", cache=True)) != code_fingerprint(make_task(two, name="h", cache=True))


def test_the_args_are_keyed_as_validated_and_per_owner(tmp_path: Any) -> None:
    """Given a cached task, then args the model makes equal (a numeric string, a default
    left out) have one key, other values another, and each owner has its own."""
    registry = Registry()

    @task(cache=True, registry=registry)
    def scaled(n: int, factor: int = 2) -> int:
        return n * factor

    definition = registry.get("scaled")
    assert definition is not None and definition.cache and definition.cache_ttl is None
    cache = ResultCache(store=None, clock=time.time)  # type: ignore[arg-type]  # keys need no store
    key = cache.key_of_args(definition, {"n": 3}, 1000)
    assert key == cache.key_of_args(definition, {"n": "3", "factor": 2}, 1000)
    assert key != cache.key_of_args(definition, {"n": 4}, 1000)
    assert key != cache.key_of_args(definition, {"n": 3}, 1001)
    assert canonical_args({"b": 1, "a": b"\xff"}) == canonical_args({"a": b"\xff", "b": 1})
    assert canonical_args({"a": b"ab"}) != canonical_args({"a": "ab"})
    assert canonical_args({"s": {3, 1, 2}}) == canonical_args({"s": {2, 3, 1}})


def test_a_package_version_is_part_of_the_key() -> None:
    """Given a module of an installed distribution, then its version is found; a module
    of no distribution has none."""
    assert package_version("pydantic.main").startswith("pydantic==")
    assert package_version("no_such_module_anywhere") == ""


def test_bad_cache_options_are_refused_at_definition() -> None:
    """Given a TTL that is not positive, then the task cannot be defined."""
    from pyrexisd.tasks.registry import TaskDefinitionError

    with pytest.raises(TaskDefinitionError):
        make_task(lambda n: n, name="x", cache_ttl=0)
    assert make_task(lambda n: n, name="y", cache_ttl=5).cache is True


def test_a_bad_option_of_the_cli_exits_2(shared: Daemon) -> None:
    """Given ``cache stats`` with an unknown option, then it is a usage error."""
    assert ctl(shared.socket, "cache", "stats", "--nope").returncode == 2
