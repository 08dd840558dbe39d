"""``pyrexisctl``: the command line for people (and shell scripts) in front of ``pyrexisd``.

Exit codes: 0 ok; 1 the daemon answered with an error (``error: <code>: <message>`` on
stderr); 2 usage error; 3 the job a command waited for ended ``failed`` or ``cancelled``;
69 the daemon cannot be reached. Every command takes ``--json``: records as JSON, lists
and log lines as NDJSON (one JSON value a line).

Start-up is kept light (no pydantic, no asyncio): the commands only need the blocking
:class:`~pyrexisctl.client.Client`; ``bench`` imports its machinery when it runs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NoReturn, TypeVar

import click

from protocol.errors import InvalidRequest, PyrexisError, UnknownOp
from protocol.status import MODES
from pyrexisctl import render
from pyrexisctl.client import Client, DaemonUnreachable, Record

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_JOB_FAILED = 3
EXIT_UNREACHABLE = 69  # EX_UNAVAILABLE of sysexits.h: "a service is unavailable"

FAILED_STATUSES = frozenset({"failed", "cancelled"})
# A daemon that lacks an optional feature (``wait`` events, ``logs`` follow) answers one of
# these; the command then falls back to the plain form.
_NOT_SUPPORTED = (InvalidRequest, UnknownOp)

F = TypeVar("F", bound=Callable[..., Any])


class Settings:
    """What the group options set for every command."""

    def __init__(self, socket: str | None = None, json: bool = False) -> None:
        self.socket = socket
        self.json = json

    def client(self) -> Client:
        """A client for the chosen socket (``--socket``, ``PYREXIS_SOCKET``, or the default)."""
        return Client(self.socket)


def _settings() -> Settings:
    return click.get_current_context().ensure_object(Settings)


def _set_json(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(Settings).json = True


def json_option(func: F) -> F:
    """``--json`` on a command, the same as ``pyrexisctl --json COMMAND``."""
    return click.option(
        "--json",
        is_flag=True,
        expose_value=False,
        callback=_set_json,
        help="Print JSON (NDJSON for lists and log lines).",
    )(func)


class PyrexisGroup(click.Group):
    """Turns client-side exceptions into the documented exit codes and messages."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DaemonUnreachable as exc:
            click.echo(f"error: {exc.message}", err=True)
            ctx.exit(EXIT_UNREACHABLE)
        except PyrexisError as exc:
            click.echo(f"error: {exc.code}: {exc.message}", err=True)
            for line in _detail_lines(exc):
                click.echo(f"  {line}", err=True)
            ctx.exit(EXIT_ERROR)
        except BrokenPipeError:
            # The reader went away (``pyrexisctl list | head``): not an error of ours.
            # Point stdout at /dev/null so the interpreter's final flush stays quiet.
            _silence_stdout()
            ctx.exit(EXIT_OK)


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _detail_lines(exc: PyrexisError) -> list[str]:
    details = exc.details
    if not isinstance(details, Mapping):
        return []
    lines = []
    for error in details.get("errors") or []:
        if isinstance(error, Mapping):
            loc = ".".join(str(part) for part in error.get("loc") or []) or "(request)"
            lines.append(f"{loc}: {error.get('msg', '')}")
    if "index" in details:
        lines.append(f"in job {details['index']} of the batch")
    if details.get("retry_after") is not None:
        lines.append(f"retry after {details['retry_after']} s")
    return lines


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    # Looked up only when asked: importlib.metadata is slow to import.
    from importlib.metadata import PackageNotFoundError, version

    try:
        text = version("pyrexis")
    except PackageNotFoundError:
        text = "(not installed; running from a source tree)"
    click.echo(f"pyrexisctl {text}")
    ctx.exit(EXIT_OK)


@click.group(cls=PyrexisGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--socket",
    "socket_path",
    metavar="PATH",
    help="Daemon socket (default: $PYREXIS_SOCKET, then the per-user default path).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (NDJSON for lists and log lines)."
)
@click.option(
    "--version",
    is_flag=True,
    is_eager=True,
    expose_value=False,
    callback=_print_version,
    help="Show the version and exit.",
)
@click.pass_context
def main(ctx: click.Context, socket_path: str | None, as_json: bool) -> None:
    """Submit, inspect and control jobs of the pyrexisd job daemon.

    \b
    Exit codes: 0 ok, 1 error answered by the daemon, 2 usage error,
    3 the waited job failed or was cancelled, 69 daemon unreachable.
    """
    ctx.obj = Settings(socket=socket_path, json=as_json)


# --------------------------------------------------------------------------- option parsing


def _parse_value(text: str) -> Any:
    # JSON when it parses (so n=3 is an int, flag=true a bool), else the raw string.
    try:
        return json.loads(text)
    except ValueError:
        return text


def _key_values(
    param: click.Parameter, items: tuple[str, ...], parse: Callable[[str], Any]
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param=param)
        result[key] = parse(value)
    return result


def _arg_pairs(
    ctx: click.Context, param: click.Parameter, items: tuple[str, ...]
) -> dict[str, Any]:
    return _key_values(param, items, _parse_value)


def _str_pairs(
    ctx: click.Context, param: click.Parameter, items: tuple[str, ...]
) -> dict[str, Any]:
    return _key_values(param, items, str)


def _json_object(ctx: click.Context, param: click.Parameter, text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param=param) from None
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param=param)
    return value


def _split_commas(ctx: click.Context, param: click.Parameter, items: tuple[str, ...]) -> list[str]:
    return [part.strip() for item in items for part in item.split(",") if part.strip()]


def _split_commas_str(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    return _split_commas(ctx, param, (value,))


def _apply(func: F, decorators: list[Callable[[F], F]]) -> F:
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def spec_options(with_mode: bool) -> Callable[[F], F]:
    """The JobSpec options shared by ``submit`` and ``run``, and ``--wait``."""

    def decorate(func: F) -> F:
        options: list[Callable[[F], F]] = [
            click.option(
                "--priority",
                "-p",
                type=click.IntRange(-1000, 1000),
                help="Higher runs first (default 0).",
            ),
            click.option("--queue", "-q", metavar="Q", help='Queue name (default "default").'),
        ]
        if with_mode:
            options.append(
                click.option(
                    "--mode",
                    "-m",
                    type=click.Choice(MODES),
                    help="Execution mode (default: the task's).",
                )
            )
        options += [
            click.option(
                "--max-retries",
                type=click.IntRange(min=0),
                metavar="N",
                help="Retries after a failed attempt (default: the task's).",
            ),
            click.option(
                "--delay",
                type=click.FloatRange(min=0),
                metavar="S",
                help="Start no sooner than S seconds from now.",
            ),
            click.option(
                "--timeout",
                type=click.FloatRange(min=0, min_open=True),
                metavar="S",
                help="Time limit of one attempt.",
            ),
            click.option(
                "--job-id", metavar="ID", help="Your own job id (resubmitting it is idempotent)."
            ),
            click.option(
                "--label",
                "labels",
                multiple=True,
                metavar="K=V",
                callback=_str_pairs,
                help="A label (repeatable).",
            ),
            click.option(
                "--depends-on", multiple=True, metavar="ID", help="Run after this job (repeatable)."
            ),
            click.option(
                "--wait",
                "-w",
                is_flag=True,
                help="Wait for the job to end; exit 3 if it failed or was cancelled.",
            ),
            click.option(
                "--wait-timeout",
                type=click.FloatRange(min=0),
                metavar="S",
                help="With --wait: give up after S seconds.",
            ),
            json_option,
        ]
        return _apply(func, options)

    return decorate


def _spec_fields(options: Mapping[str, Any]) -> dict[str, Any]:
    fields = {
        key: options.get(key)
        for key in ("priority", "queue", "mode", "max_retries", "delay", "timeout", "job_id")
    }
    fields["labels"] = options.get("labels") or None
    fields["depends_on"] = list(options.get("depends_on") or ()) or None
    return fields


# --------------------------------------------------------------------------- shared flows


def _exit(code: int) -> NoReturn:
    click.get_current_context().exit(code)


def _print_log_line(event: Mapping[str, Any]) -> None:
    # The job's stdout goes to our stdout; its stderr and log records to our stderr, so
    # they stay apart as they were in the job.
    click.echo(str(event.get("line", "")), err=event.get("stream") != "stdout")


def _wait_for(client: Client, job_id: str, timeout: float | None, settings: Settings) -> Record:
    """Wait for a job, drawing a progress line on a terminal when the daemon streams events."""
    progress = render.ProgressLine()
    if progress.enabled and not settings.json:
        args: dict[str, Any] = {"job_id": job_id, "events": True}
        if timeout is not None:
            args["timeout"] = timeout
        seen = False
        status, fraction, message = "waiting", None, None
        try:
            with client.stream("wait", args) as stream:
                progress.update(job_id, status)
                for event in stream:
                    seen = True
                    kind = event.get("kind")
                    if kind == "state":
                        status = str(event.get("status", status))
                    elif kind == "progress":
                        fraction = event.get("fraction", fraction)
                        message = event.get("message", message)
                    progress.update(job_id, status, fraction, message)
                if isinstance(stream.result, dict):
                    return stream.result
        except _NOT_SUPPORTED:
            if seen:
                raise
        finally:
            progress.clear()
    return client.wait(job_id, timeout)


def _report_outcome(record: Record, settings: Settings, *, result_to_stdout: bool = True) -> None:
    """Print how a waited job ended and exit 3 when it failed or was cancelled."""
    if settings.json:
        render.echo_json(record)
    else:
        failed = record.get("status") in FAILED_STATUSES
        click.echo(render.job_outcome(record), err=failed or not result_to_stdout)
        if (
            result_to_stdout
            and record.get("status") == "completed"
            and record.get("result") is not None
        ):
            click.echo(render.to_json(record.get("result")))
    if record.get("status") in FAILED_STATUSES:
        _exit(EXIT_JOB_FAILED)


def _submit_and_maybe_wait(
    task: str, args: Mapping[str, Any], options: Mapping[str, Any], *, follow_logs: bool
) -> None:
    settings = _settings()
    with settings.client() as client:
        record = client.submit(task, args, **_spec_fields(options))
        job_id = str(record["job_id"])
        if not options.get("wait"):
            if settings.json:
                render.echo_json(record)
            else:
                click.echo(job_id)
            return
        wait_timeout = options.get("wait_timeout")
        if follow_logs and not settings.json:
            final = _follow_run(client, job_id, wait_timeout, settings)
            _report_outcome(final, settings, result_to_stdout=False)
        else:
            _report_outcome(_wait_for(client, job_id, wait_timeout, settings), settings)


def _print_logs(
    client: Client, job_id: str, since: int, emit: Callable[[Mapping[str, Any]], None]
) -> int:
    """Print the stored lines from ``since`` on; returns the seq to continue from."""
    stream = client.stream("logs", {"job_id": job_id, "since": since})
    for event in stream:
        if event.get("kind") == "log":
            emit(event)
    final = stream.result if isinstance(stream.result, dict) else {}
    next_seq = final.get("next")
    return next_seq if isinstance(next_seq, int) else since


def _follow_logs(
    client: Client,
    job_id: str,
    since: int,
    settings: Settings,
    emit: Callable[[Mapping[str, Any]], None],
) -> None:
    """Print lines from ``since`` on as they come, until the job has ended and its log drained.

    On a daemon without ``follow``: the stored lines now, then the rest once the job ended.
    """
    first = since
    try:
        stream = client.stream("logs", {"job_id": job_id, "since": since, "follow": True})
        for event in stream:
            if event.get("kind") == "log":
                emit(event)
                since = int(event.get("seq", since)) + 1
        return
    except _NOT_SUPPORTED:
        if since > first:
            raise
    since = _print_logs(client, job_id, since, emit)
    _wait_for(client, job_id, None, settings)
    _print_logs(client, job_id, since, emit)


def _follow_run(
    client: Client, job_id: str, wait_timeout: float | None, settings: Settings
) -> Record:
    """Show a shell job's output as it runs, then return its final record."""
    if wait_timeout is None:
        _follow_logs(client, job_id, 1, settings, _print_log_line)
        return client.wait(job_id)
    # A deadline: wait for the job with it, then show its whole output.
    final = _wait_for(client, job_id, wait_timeout, settings)
    _print_logs(client, job_id, 1, _print_log_line)
    return final


# --------------------------------------------------------------------------- commands


@main.command()
@click.argument("task")
@click.option(
    "--arg",
    "-a",
    "arg_pairs",
    multiple=True,
    metavar="K=V",
    callback=_arg_pairs,
    help="A task argument; V is parsed as JSON when it is valid JSON (repeatable).",
)
@click.option(
    "--args-json",
    metavar="JSON",
    callback=_json_object,
    help="All task arguments as one JSON object (--arg values override).",
)
@spec_options(with_mode=True)
def submit(task: str, arg_pairs: dict[str, Any], args_json: dict[str, Any], **options: Any) -> None:
    """Submit a job of TASK; print its id.

    With --wait, print how it ended (and its result) instead; exit 3 if it failed or was
    cancelled.
    """
    _submit_and_maybe_wait(task, {**args_json, **arg_pairs}, options, follow_logs=False)


@main.command(context_settings={"allow_interspersed_args": False})
@click.argument("command", nargs=-1, required=True)
@click.option("--cwd", metavar="DIR", help="Working directory of the command.")
@click.option(
    "--env",
    "env",
    multiple=True,
    metavar="K=V",
    callback=_str_pairs,
    help="An environment variable laid over the daemon's (repeatable).",
)
@spec_options(with_mode=False)
def run(command: tuple[str, ...], cwd: str | None, env: dict[str, Any], **options: Any) -> None:
    """Run a command as a shell job.

    `pyrexisctl run [OPTIONS] -- CMD ARGS...`

    Several words run the program directly; one word containing spaces runs through
    /bin/sh -c. With --wait, the command's output is shown as it runs.
    """
    cmd: str | list[str]
    if len(command) == 1 and any(char.isspace() for char in command[0]):
        cmd = command[0]
    else:
        cmd = list(command)
    args: dict[str, Any] = {"cmd": cmd}
    if cwd is not None:
        args["cwd"] = cwd
    if env:
        args["env"] = env
    _submit_and_maybe_wait("shell", args, options, follow_logs=True)


@main.command(name="list")
@click.option(
    "--status",
    "-s",
    "statuses",
    multiple=True,
    metavar="S",
    callback=_split_commas,
    help="Only jobs in this status (repeatable, or comma-separated).",
)
@click.option("--queue", "-q", metavar="Q", help="Only jobs of this queue.")
@click.option("--task", "-t", metavar="T", help="Only jobs of this task.")
@click.option(
    "--limit",
    "-n",
    type=click.IntRange(1, 10_000),
    help="At most N jobs (default 100); with --all, the page size.",
)
@click.option("--all", "all_pages", is_flag=True, help="Every matching job, page after page.")
@json_option
def list_jobs(
    statuses: list[str], queue: str | None, task: str | None, limit: int | None, all_pages: bool
) -> None:
    """List jobs, oldest first."""
    settings = _settings()
    status_filter = statuses or None
    with settings.client() as client:
        more = False
        jobs: Iterator[Record]
        if all_pages:
            jobs = client.iter_jobs(status_filter, task, queue, limit or 1000)
        else:
            page = client.list(status_filter, task, queue, limit)
            jobs = iter(page.get("jobs") or [])
            more = page.get("next") is not None
        if settings.json:
            render.echo_ndjson(jobs)
            return
        rows = list(jobs)
    if rows:
        click.echo(render.jobs_table(rows))
    else:
        click.echo("no jobs", err=True)
    if more:
        click.echo(f"(more jobs: use --all or --limit; showing {len(rows)})", err=True)


@main.command()
@click.argument("job_id", metavar="JOB")
@json_option
def status(job_id: str) -> None:
    """Show everything about one job."""
    settings = _settings()
    with settings.client() as client:
        record = client.get(job_id)
    if settings.json:
        render.echo_json(record)
    else:
        click.echo(render.job_detail(record))


@main.command()
@click.argument("job_id", metavar="JOB")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    metavar="S",
    help="Give up after S seconds (error: timeout).",
)
@json_option
def wait(job_id: str, timeout: float | None) -> None:
    """Wait until JOB ends; exit 3 if it failed or was cancelled."""
    settings = _settings()
    with settings.client() as client:
        record = _wait_for(client, job_id, timeout, settings)
    _report_outcome(record, settings)


def _show_record(record: Record) -> None:
    if _settings().json:
        render.echo_json(record)
    else:
        click.echo(f"{record.get('job_id')} {record.get('status')}")


@main.command()
@click.argument("job_id", metavar="JOB")
@json_option
def cancel(job_id: str) -> None:
    """Cancel JOB (it stops if running)."""
    with _settings().client() as client:
        _show_record(client.cancel(job_id))


@main.command()
@click.argument("job_id", metavar="JOB")
@json_option
def retry(job_id: str) -> None:
    """Run a failed or cancelled JOB again."""
    with _settings().client() as client:
        _show_record(client.retry(job_id))


@main.command()
@click.argument("job_id", metavar="JOB")
@click.option(
    "--since",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    metavar="N",
    help="First line (seq) to show.",
)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the job ends.")
@json_option
def logs(job_id: str, since: int, follow: bool) -> None:
    """Print JOB's log lines.

    Lines the job wrote to stdout go to stdout; its stderr and log records go to stderr.
    """
    settings = _settings()
    emit = render.echo_json if settings.json else _print_log_line
    with settings.client() as client:
        if follow:
            _follow_logs(client, job_id, since, settings, emit)
        else:
            _print_logs(client, job_id, since, emit)


def _show_queues(queues: list[Record]) -> None:
    if _settings().json:
        render.echo_ndjson(queues)
    elif queues:
        click.echo(render.queues_table(queues))
    else:
        click.echo("no queues", err=True)


@main.command()
@click.argument("queue", required=False)
@json_option
def pause(queue: str | None) -> None:
    """Pause QUEUE (every queue when omitted).

    Its jobs stay pending; running jobs go on. A pause is durable.
    """
    with _settings().client() as client:
        _show_queues(client.pause(queue))


@main.command()
@click.argument("queue", required=False)
@json_option
def resume(queue: str | None) -> None:
    """Resume QUEUE (every queue when omitted)."""
    with _settings().client() as client:
        _show_queues(client.resume(queue))


@main.command()
@json_option
def queues() -> None:
    """List the queues with their settings and job counts."""
    with _settings().client() as client:
        _show_queues(client.queues())


@main.command()
@json_option
def tasks() -> None:
    """List the tasks the daemon can run."""
    settings = _settings()
    with settings.client() as client:
        rows = client.tasks()
    if settings.json:
        render.echo_ndjson(rows)
    else:
        click.echo(render.tasks_table(rows))


@main.command()
@json_option
def stats() -> None:
    """Show the daemon's counters.

    Jobs by status and queue, slots, throughput, submit-to-start latency.
    """
    settings = _settings()
    with settings.client() as client:
        result = client.stats()
    if settings.json:
        render.echo_json(result)
    else:
        click.echo(render.stats_text(result))


@main.command()
@json_option
def ping() -> None:
    """Check the daemon answers: version and round trip."""
    settings = _settings()
    client = settings.client()
    started = time.perf_counter()
    with client:
        connected = time.perf_counter()
        hello = client.hello()
        answered = time.perf_counter()
    server: Mapping[str, Any] = hello.get("server") or {}
    latency_ms = (answered - connected) * 1000
    if settings.json:
        render.echo_json(
            {
                "socket": client.socket_path,
                "server": server,
                "protocol": hello.get("protocol"),
                "latency_ms": latency_ms,
                "connect_ms": (connected - started) * 1000,
            }
        )
        return
    click.echo(
        f"{server.get('name', 'pyrexisd')} {server.get('version', '?')} "
        f"(protocol {hello.get('protocol')}) at {client.socket_path}: "
        f"round trip {render.format_duration(latency_ms / 1000)}"
    )


@main.command()
@click.option(
    "-n",
    "jobs",
    type=click.IntRange(min=1),
    default=5000,
    show_default=True,
    help="Jobs per scenario.",
)
@click.option(
    "--sync",
    "sync",
    type=click.Choice(["full", "normal", "both"]),
    default="both",
    show_default=True,
    help="SQLite synchronous setting(s) of the daemons to compare.",
)
@click.option(
    "--modes",
    default="thread,process",
    show_default=True,
    callback=_split_commas_str,
    help="Modes of the pipelined scenarios: thread, process, async (comma-separated).",
)
@click.option(
    "--inflight",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Requests in flight at once in the pipelined scenarios.",
)
@click.option(
    "--serial-jobs",
    type=click.IntRange(min=1),
    help="Jobs of the one-at-a-time scenario (default: -n).",
)
@click.option(
    "--daemon-arg",
    "daemon_args",
    multiple=True,
    metavar="ARG",
    help="Extra argument for the daemons (repeatable), e.g. --daemon-arg=--threads=8.",
)
@json_option
def bench(
    jobs: int,
    sync: str,
    modes: list[str],
    inflight: int,
    serial_jobs: int | None,
    daemon_args: tuple[str, ...],
) -> None:
    """Benchmark fresh daemons of its own: jobs/s, latency, memory.

    It starts one daemon per --sync setting in a temporary directory (never the one on
    --socket), runs the scenarios, prints a table and stops the daemons.
    """
    from pyrexisctl import bench as bench_module

    unknown = [mode for mode in modes if mode not in bench_module.ECHO_MODES]
    if unknown or not modes:
        raise click.BadParameter(
            f"choose from {', '.join(bench_module.ECHO_MODES)}, not {', '.join(unknown) or 'none'}",
            param_hint="--modes",
        )
    settings = _settings()
    config = bench_module.BenchConfig(
        jobs=jobs,
        serial_jobs=serial_jobs or jobs,
        syncs=("full", "normal") if sync == "both" else (sync,),
        modes=tuple(modes),
        inflight=inflight,
        daemon_args=daemon_args,
    )
    try:
        results = bench_module.run(config, log=lambda text: click.echo(text, err=True))
    except bench_module.BenchError as exc:
        click.echo(f"error: bench: {exc}", err=True)
        _exit(EXIT_ERROR)
    if settings.json:
        render.echo_ndjson(result.as_dict() for result in results)
    else:
        click.echo(bench_module.results_table(results))
