"""One configuration file: every flag has a key and a PYREXIS_* variable, the environment
overrides the file and flags override both, a bad file stops the daemon with one line,
queues and schedules are declared in it, and `reload`/SIGHUP apply what can change live."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ROOT, Daemon, expect_error, wait_until

from pyrexisd.config import OPTIONS, Config
from pyrexisd.settings import ConfigSource

PYREXISD = [sys.executable, "-m", "pyrexisd"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYREXIS_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
    env.update(extra)
    return env


def run_pyrexisd(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PYREXISD, *args], capture_output=True, text=True, timeout=60, env=_env(**env))


def printed(*args: str, **env: str) -> dict[str, tuple[str, str]]:
    """``--print-config``'s lines: key → (value as written, where it came from)."""
    out = run_pyrexisd(*args, "--print-config", **env)
    assert out.returncode == 0, out.stderr
    values = {}
    for line in out.stdout.splitlines():
        if " = " in line and not line.startswith(("#", "[")):
            key, _, rest = line.partition(" = ")
            value, _, origin = rest.rpartition("  # ")
            values[key] = (value, origin)
    return values


def test_the_environment_overrides_the_file_and_flags_override_both(tmp_path: Path) -> None:
    """Given threads, grace and keep_max in the file, PYREXIS_THREADS and PYREXIS_GRACE in
    the environment and --threads on the command line, then --print-config shows the
    flag's threads, the environment's grace, the file's keep_max, the rest as defaults,
    each with its source."""
    conf = tmp_path / "p.toml"
    conf.write_text('threads = 3\ngrace = 1.5\nkeep_max = 77\nkeep_finished = "2d"\n')
    values = printed("--config", str(conf), "--threads", "9", PYREXIS_THREADS="5", PYREXIS_GRACE="2.5")
    assert values["threads"] == ("9", "--threads")
    assert values["grace"] == ("2.5", "PYREXIS_GRACE")
    assert values["keep_max"] == ("77", str(conf))
    assert values["keep_finished"] == ("172800.0", str(conf))
    assert values["async_slots"] == ("1000", "default")


def test_every_option_is_a_flag_a_key_and_a_variable_and_print_config_round_trips(tmp_path: Path) -> None:
    """Every option of the table is in --help (its flag, key and variable), in
    --print-config, and what --print-config prints is itself a valid file giving the
    same configuration."""
    help_text = " ".join(run_pyrexisd("--help").stdout.split())
    first = printed()
    for opt in OPTIONS:
        assert opt.flag in help_text and f"env {opt.env}" in help_text, opt.key
        assert opt.key in first or f"# {opt.key} is unset" in run_pyrexisd("--print-config").stdout, opt.key
    assert len({o.key for o in OPTIONS}) == len(OPTIONS)
    dumped = run_pyrexisd("--print-config", "--threads", "4", "--max-waiting-per-user", "9").stdout
    tomllib.loads(dumped)  # a TOML document
    conf = tmp_path / "again.toml"
    conf.write_text(dumped)
    again = printed("--config", str(conf))
    assert {k: v for k, (v, _) in again.items()} == {
        k: v for k, (v, _) in printed("--threads", "4", "--max-waiting-per-user", "9").items()
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("threads = 0\n", "threads: must be at least 1"),
        ("threadz = 2\n", "threadz: unknown key (did you mean threads?)"),
        ('threads = "many"\n', "threads: Input should be a valid integer"),
        ('keep_finished = "soon"\n', "keep_finished: 'soon' is not a duration"),
        ("sync = 'sometimes'\n", "sync: Input should be 'full' or 'normal'"),
        ("[queues.fast]\nweight = -1\n", "queues.fast.weight: Input should be greater than 0"),
        ("[schedules.x]\ntask = 'echo'\n", "schedules.x: Value error, give exactly one of cron and every"),
        ("[schedules.x]\ntask = 'echo'\ncron = '99 * * * *'\n", "not a 5-field cron expression"),
        ("threads = \n", "(file): not valid TOML"),
        ("max_frame = 2048\nmax_result = 4096\n", "max_result: must leave room in max_frame"),
    ],
)
def test_a_bad_file_exits_non_zero_with_one_line_naming_the_file_the_key_and_the_problem(
    tmp_path: Path, text: str, expected: str
) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text(text)
    out = run_pyrexisd("--config", str(conf), "--socket", str(tmp_path / "s.sock"), "--db", str(tmp_path / "d.db"))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"pyrexisd: {conf}: ") and expected in lines[0], lines[0]
    assert not (tmp_path / "d.db").exists(), "nothing was started"


def test_a_bad_variable_or_flag_names_itself_and_a_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    out = run_pyrexisd("--print-config", PYREXIS_MAX_WAITING="lots")
    assert out.returncode == 2 and out.stderr.startswith("pyrexisd: PYREXIS_MAX_WAITING: max_waiting: "), out.stderr
    out = run_pyrexisd("--print-config", "--kill-grace", "-1")
    assert out.returncode == 2 and out.stderr.strip() == "pyrexisd: --kill-grace: kill_grace: must be >= 0"
    out = run_pyrexisd("--config", str(tmp_path / "nope.toml"), "--print-config")
    assert out.returncode == 2 and "nope.toml: (file): no such file" in out.stderr
    # The default file may be absent.
    assert run_pyrexisd("--print-config", XDG_CONFIG_HOME=str(tmp_path)).returncode == 0


def test_config_source_reads_lists_and_zero_means_no_limit(tmp_path: Path) -> None:
    """Lists come as TOML arrays or comma-separated variables; 0 is no limit for quotas."""
    conf = tmp_path / "c.toml"
    conf.write_text('tasks = ["a.b", "c"]\nmax_waiting = 0\nuser_tasks = ["echo"]\nallow_user = [0, "root"]\n')
    config = ConfigSource({}, str(conf), env={"PYREXIS_MAX_RUNNING_PER_USER": "3", "PYREXIS_USER_TASKS": "echo,sleep"}).load().config
    assert config.task_modules == ("a.b", "c")
    assert config.max_waiting is None
    assert config.max_running_per_user == 3
    assert config.user_tasks == ("echo", "sleep")
    assert config.allow_users == (0, 0)
    assert Config().keep_max == 100_000 and Config().keep_finished == 7 * 86400


def _ctl(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyrexisctl", "--socket", d.socket, *args],
        capture_output=True, text=True, timeout=60, env=_env(),
    )


def test_declared_queues_and_schedules_apply_at_start_and_reload_applies_what_can_change_live(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """Given a file declaring a queue and a schedule, when the daemon starts, then they
    exist; when the file changes and `pyrexisctl reload` runs, then the queue's weight,
    the quota and the retention change live (the log level too, but a flag holds it), the schedule is replaced, and threads is
    reported as needing a restart (and does not change); SIGHUP does the same; a file
    made invalid changes nothing and is answered with the key and the problem."""
    conf = tmp_path / "live.toml"
    conf.write_text(
        "max_waiting = 1000\n"
        "[queues.fast]\nweight = 3\nmax_concurrency = 2\n"
        "[schedules.tick]\nevery = 3600\ntask = 'echo'\nargs = {value = 'tick'}\n"
    )
    d = start_daemon("--config", str(conf))
    with d.client() as c:
        fast = next(q for q in c.request("queues")["queues"] if q["queue"] == "fast")
        assert (fast["weight"], fast["max_concurrency"]) == (3.0, 2)
        (tick,) = c.request("schedule_list")["schedules"]
        assert tick["name"] == "tick" and tick["every"] == 3600
        threads = c.request("stats")["slots"]["thread"]

        conf.write_text(
            "max_waiting = 1\nthreads = 1\nkeep_max = 5\nmax_streams = 1\nlog_level = 'WARNING'\n"
            "[queues.fast]\nweight = 5\nmax_concurrency = 0\n"
            "[schedules.tock]\nevery = 60\ntask = 'echo'\nargs = {value = 'tock'}\n"
        )
        out = _ctl(d, "reload", "--json")
        assert out.returncode == 0, out.stderr
        answer = json.loads(out.stdout)
        assert answer["restart_needed"] == ["threads"]
        # log_level is given as a flag by the test harness: the flag wins over the file.
        assert set(answer["changed"]) == {
            "keep_max", "max_waiting", "max_streams", "queues.fast", "schedules.tick", "schedules.tock"
        }
        assert c.request("stats")["retention"]["keep_max"] == 5
        fast = next(q for q in c.request("queues")["queues"] if q["queue"] == "fast")
        assert (fast["weight"], fast["max_concurrency"]) == (5.0, None)
        assert [s["name"] for s in c.request("schedule_list")["schedules"]] == ["tock"]
        assert c.request("stats")["slots"]["thread"] == threads
        c.submit("echo", {"value": 1}, delay=3600)
        expect_error("overloaded", lambda: c.submit("echo", {"value": 2}, delay=3600))
        with d.client() as other:  # one stream per connection now
            other.send_request("watch", {})
            other.request("hello", {"protocol": 1})
            error = expect_error("overloaded", lambda: other.request("watch", {}))
            assert error.details["limit"] == "streams"

        conf.write_text("max_waiting = 100\nthreads = 1\n[schedules.tock]\nevery = 60\ntask = 'echo'\nargs = {value = 'tock'}\n")
        os.kill(d.pid, signal.SIGHUP)
        wait_until(lambda: _accepts(c), 30, 0.05, "SIGHUP to apply the new quota")
        assert c.submit("echo", {"value": 3}, delay=3600)["status"] == "scheduled"

        conf.write_text("max_waiting = -5\n")
        out = _ctl(d, "reload")
        assert out.returncode == 1
        assert "invalid_state" in out.stderr and f"{conf}: max_waiting: must be at least 1" in out.stderr
        assert c.submit("echo", {"value": 4}, delay=3600)["status"] == "scheduled", "the old limits hold"


def _accepts(c: object) -> bool:
    from conftest import RawClient

    assert isinstance(c, RawClient)
    try:
        c.submit("echo", {"value": 0}, delay=3600)
    except Exception:  # noqa: BLE001 - overloaded until the reload lands
        return False
    return True


def test_a_declared_schedule_of_an_unknown_task_stops_the_start_with_one_line(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    conf = tmp_path / "s.toml"
    conf.write_text("[schedules.x]\nevery = 5\ntask = 'no.such.task'\n")
    d = start_daemon("--config", str(conf), wait=False)
    assert d.proc is not None and d.proc.wait(60) == 1
    assert f"{conf}: schedules.x: no task named 'no.such.task'" in d.log()
    conf.write_text("[schedules.x]\nevery = 5\ntask = 'echo'\n")
    d = start_daemon("--config", str(conf), wait=False, subdir="again")
    assert d.proc is not None and d.proc.wait(60) == 1
    assert f"{conf}: schedules.x: invalid args for task 'echo' (args.value: Field required)" in d.log(), d.log()


def test_every_live_option_has_an_applier() -> None:
    """An option marked live that reload could not apply would silently need a restart."""
    from pyrexisd.reload import APPLIERS, live_keys

    assert set(live_keys()) == {o.key for o in OPTIONS if o.info.live} == set(APPLIERS)


def test_raising_the_running_cap_on_reload_starts_the_jobs_it_held_back(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    conf = tmp_path / "cap.toml"
    conf.write_text("max_running_per_user = 1\n")
    d = start_daemon("--config", str(conf))
    with d.client() as c:
        jobs = [c.submit("sleep", {"seconds": 60}, mode="async")["job_id"] for _ in range(3)]
        wait_until(lambda: sorted(c.get(j)["status"] for j in jobs) == ["pending", "pending", "running"], 30, 0.05,
                   "one running, two held back")
        conf.write_text("max_running_per_user = 0\n")
        assert c.request("reload")["changed"] == ["max_running_per_user"]
        wait_until(lambda: all(c.get(j)["status"] == "running" for j in jobs), 30, 0.05, "all three running")
        for j in jobs:
            c.request("cancel", {"job_id": j})
