"""``pyrexisctl``: the command line for people (and shell scripts) in front of ``pyrexisd``.

Exit codes: 0 ok; 1 the daemon answered with an error (``error: <code>: <message>`` on
stderr); 2 usage error; 3 the job a command waited for ended ``failed`` or ``cancelled``;
69 the daemon cannot be reached; 130 interrupted (Ctrl-C) while waiting for a job. Every
command takes ``--json``: records as JSON, lists, events and log lines as NDJSON (one
JSON value a line). ``watch`` and ``logs -f`` end with exit 0 on Ctrl-C.

Start-up is kept light (no pydantic, no asyncio): the commands only need the blocking
:class:`~pyrexisctl.client.Client`; ``bench`` imports its machinery when it runs.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any, NoReturn, TypeVar

import click

from protocol.errors import PyrexisError, WireError
from protocol.status import MODES, TERMINAL
from pyrexisctl import jsonl, render
from pyrexisctl.client import UNSET, Client, DaemonUnreachable, Event, Record

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_JOB_FAILED = 3
EXIT_UNREACHABLE = 69  # EX_UNAVAILABLE of sysexits.h: "a service is unavailable"
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it

FAILED_STATUSES = frozenset({"failed", "cancelled"})
DEPENDENCY_POLICIES = ("all_completed", "all_terminal")
PROGRESS_LINE_INTERVAL = 1.0
"""Seconds between two plain progress lines of one job (a changed message shows at once)."""

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
        help="Print JSON (NDJSON for lists, events and log lines).",
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
            # The daemon's answers carry the contract's code, which scripts match on; an
            # error the client found by itself has none to show.
            code = f"{exc.code}: " if isinstance(exc, WireError) else ""
            label = click.style("error:", fg="red") if render.use_colour(sys.stderr) else "error:"
            click.echo(f"{label} {code}{exc.message}", err=True)
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
    "--json", "as_json", is_flag=True, help="Print JSON (NDJSON for lists, events and log lines)."
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
    3 the waited job failed or was cancelled, 69 daemon unreachable,
    130 interrupted while waiting for a job.
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


def _cap(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """A positive integer, or ``none`` for no cap (``None``); :data:`UNSET` when not given."""
    if value is None:
        return UNSET
    text = value.strip().lower()
    if text in ("none", "unlimited"):
        return None
    try:
        number = int(text)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither a positive integer nor 'none'") from None
    if number < 1:
        raise click.BadParameter(f"{number} is not a positive integer (use 'none' for no cap)")
    return number


def _apply(func: F, decorators: list[Callable[[F], F]]) -> F:
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def arg_options(func: F) -> F:
    """``--arg K=V`` and ``--args-json``: the task's arguments."""
    options: list[Callable[[F], F]] = [
        click.option(
            "--arg",
            "-a",
            "arg_pairs",
            multiple=True,
            metavar="K=V",
            callback=_arg_pairs,
            help="A task argument; V is parsed as JSON when it is valid JSON (repeatable).",
        ),
        click.option(
            "--args-json",
            metavar="JSON",
            callback=_json_object,
            help="All task arguments as one JSON object (--arg values override).",
        ),
    ]
    return _apply(func, options)


def job_options(with_mode: bool) -> Callable[[F], F]:
    """The JobSpec options a job of ``submit``, ``run`` and ``schedule add`` may set."""

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
                "--timeout",
                type=click.FloatRange(min=0, min_open=True),
                metavar="S",
                help="Time limit of one attempt.",
            ),
            click.option(
                "--label",
                "labels",
                multiple=True,
                metavar="K=V",
                callback=_str_pairs,
                help="A label (repeatable).",
            ),
        ]
        return _apply(func, options)

    return decorate


def submit_options(func: F) -> F:
    """The options of one submitted job beyond :func:`job_options`, and ``--wait``."""
    options: list[Callable[[F], F]] = [
        click.option(
            "--delay",
            type=click.FloatRange(min=0),
            metavar="S",
            help="Start no sooner than S seconds from now.",
        ),
        click.option(
            "--job-id", metavar="ID", help="Your own job id (resubmitting it is idempotent)."
        ),
        click.option(
            "--after",
            "--depends-on",
            "depends_on",
            multiple=True,
            metavar="JOB",
            help="Run after job JOB (repeatable): sets depends_on.",
        ),
        click.option(
            "--policy",
            "dependency_policy",
            type=click.Choice(DEPENDENCY_POLICIES),
            help="With --after: all_completed (default; cancelled if a dependency fails) "
            "or all_terminal (run once every dependency has ended).",
        ),
        click.option(
            "--wait",
            "-w",
            is_flag=True,
            help="Wait for the job to end, showing its progress; exit 3 if it failed or "
            "was cancelled.",
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


_SPEC_KEYS = (
    "priority",
    "queue",
    "mode",
    "max_retries",
    "delay",
    "timeout",
    "job_id",
    "dependency_policy",
    "cache",
)


def _spec_fields(options: Mapping[str, Any]) -> dict[str, Any]:
    """JobSpec fields from the options (``None``: not given, so the daemon's default)."""
    fields = {key: options.get(key) for key in _SPEC_KEYS}
    fields["labels"] = options.get("labels") or None
    fields["depends_on"] = list(options.get("depends_on") or ()) or None
    return fields


# --------------------------------------------------------------------------- shared flows


def _exit(code: int) -> NoReturn:
    click.get_current_context().exit(code)


def _interruptible() -> None:
    """Make Ctrl-C (SIGINT) raise KeyboardInterrupt even if our parent ignored it.

    A process started in the background by a non-interactive shell inherits SIGINT
    ignored; the commands that run until the user stops them (``watch``, ``logs -f``,
    waiting for a job) restore it.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _print_log_line(event: Mapping[str, Any]) -> None:
    # The job's stdout goes to our stdout; its stderr and log records to our stderr, so
    # they stay apart as they were in the job.
    click.echo(str(event.get("line", "")), err=event.get("stream") != "stdout")


def _print_prefixed_log_line(event: Mapping[str, Any]) -> None:
    click.echo(f"{event.get('stream', 'log')}: {event.get('line', '')}")


class _WaitView:
    """Shows the events of a job that a command waits for.

    With ``--json`` every event is a JSON line on stdout. Otherwise, on a terminal, one
    progress line on stderr (status, fraction, elapsed, message), redrawn in place; not on
    a terminal, a plain line on stderr for each change of status and for progress (at
    most one a second unless its message changes). With ``logs`` (``run --wait``) the
    job's log lines are shown too, from its first line: lines written before the wait
    began are fetched, so none is lost or repeated.
    """

    def __init__(self, client: Client, job_id: str, as_json: bool, logs: bool) -> None:
        self.client = client
        self.job_id = job_id
        self.as_json = as_json
        self.logs = logs
        self.status = "waiting"
        self.next_seq = 1  # the first log line not shown yet
        self._fraction: float | None = None
        self._message: str | None = None
        self._bar = render.ProgressLine()
        self._live = self._bar.enabled and not as_json
        self._last_plain = -PROGRESS_LINE_INTERVAL
        self._last_message: str | None = None

    def start(self) -> None:
        self._redraw()

    def show(self, event: Event) -> None:
        """Show one event of the ``wait`` stream."""
        kind = event.get("kind")
        if kind == "state":
            self.status = str(event.get("status", self.status))
        if kind == "log" and self.logs:
            self._log(event)
        elif self.as_json:
            render.echo_json(event)
        elif kind == "state":
            if not self._live and self.status not in TERMINAL:
                # The end is told by the outcome line that follows.
                self._plain(render.event_text(event))
        elif kind == "progress":
            fraction = event.get("fraction")
            self._fraction = float(fraction) if isinstance(fraction, (int, float)) else None
            message = event.get("message")
            self._message = None if message is None else str(message)
            if not self._live:
                now = time.monotonic()
                if (
                    now - self._last_plain >= PROGRESS_LINE_INTERVAL
                    or self._message != self._last_message
                ):
                    self._last_plain, self._last_message = now, self._message
                    self._plain(f"progress {render.event_text(event)}")
        elif kind == "output":
            self._above(lambda: self._plain(f"output {render.event_text(event)}"))
        self._redraw()

    def finish(self) -> None:
        """After the job ended: show the log lines the stream did not carry."""
        if self.logs:
            for event in self.client.logs(self.job_id, since=self.next_seq)["lines"]:
                self._log(event)

    def close(self) -> None:
        self._bar.clear()

    def _log(self, event: Event) -> None:
        seq = event.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool):
            if seq < self.next_seq:
                return  # shown already
            if seq > self.next_seq:
                # Written before this stream began: fetch them, in order, first.
                missed = self.client.logs(self.job_id, since=self.next_seq)["lines"]
                for line in missed:
                    if isinstance(line.get("seq"), int) and line["seq"] < seq:
                        self._emit_log(line)
            self.next_seq = seq + 1
        self._emit_log(event)

    def _emit_log(self, event: Event) -> None:
        if self.as_json:
            render.echo_json(event)
        else:
            self._above(lambda: _print_log_line(event))

    def _plain(self, text: str) -> None:
        click.echo(f"{self.job_id} {text}", err=True)

    def _above(self, write: Callable[[], None]) -> None:
        """Print a line above the progress line (which is redrawn afterwards)."""
        self._bar.clear()
        write()
        self._redraw()

    def _redraw(self) -> None:
        if self._live:
            self._bar.update(self.job_id, self.status, self._fraction, self._message)


def _wait_for(
    client: Client, job_id: str, timeout: float | None, settings: Settings, *, logs: bool = False
) -> Record:
    """Wait for a job with ``wait`` events, showing them (:class:`_WaitView`); its final record.

    Ctrl-C detaches (the job goes on) and exits 130.
    """
    _interruptible()
    view = _WaitView(client, job_id, settings.json, logs)
    stream = client.wait_events(job_id, timeout)
    try:
        view.start()
        for event in stream:
            view.show(event)
        view.finish()
    except KeyboardInterrupt:
        view.close()
        click.echo(f"{job_id}: detached while {view.status}; the job goes on", err=True)
        _exit(EXIT_INTERRUPTED)
    finally:
        view.close()
    if isinstance(stream.result, dict):
        return stream.result
    return client.get(job_id)


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
    task: str, args: Mapping[str, Any], options: Mapping[str, Any], *, shell: bool
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
        final = _wait_for(client, job_id, options.get("wait_timeout"), settings, logs=shell)
    # A shell job's output is what it printed; other jobs' result goes to stdout.
    _report_outcome(final, settings, result_to_stdout=not shell)


def _read_graph(ctx: click.Context, param: click.Parameter, file: IO[str] | None) -> Any:
    if file is None:
        return None
    try:
        value = json.load(file)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param=param) from None
    if isinstance(value, dict) and "jobs" in value:
        value = value["jobs"]
    if not isinstance(value, list) or not value:
        raise click.BadParameter(
            'expected a non-empty list of job specs, or {"jobs": [...]}', param=param
        )
    for index, spec in enumerate(value):
        if not isinstance(spec, dict) or not isinstance(spec.get("task"), str):
            raise click.BadParameter(
                f'job {index} is not a job spec (a JSON object with a "task")', param=param
            )
    return value


# --------------------------------------------------------------------------- commands


_GRAPH_HELP = """\b
--graph FILE.json submits several jobs at once, all or none: FILE (or -
for stdin) holds a JSON list of job specs, or {"jobs": [...]}. A spec
has the fields of the protocol's JobSpec: "task" (required), "args",
"job_id", "priority", "queue", "mode", "timeout", "max_retries",
"depends_on" (ids of existing jobs or of specs earlier in the file),
"dependency_policy", "run_at", "delay", "labels", "on_interrupt",
"cache" (false: not answered from the result cache).
Example:
  [{"task": "echo", "job_id": "fetch", "args": {"value": 1}},
   {"task": "echo", "job_id": "build", "depends_on": ["fetch"]},
   {"task": "echo", "depends_on": ["build"],
    "dependency_policy": "all_terminal"}]
It prints the created jobs (a table; NDJSON records with --json)."""


_JSONL_HELP = """\b
--jsonl FILE.jsonl (or - for stdin) submits one job spec per line (the
JobSpec fields above, one JSON object a line; blank lines are skipped).
The lines go in chunks (--chunk specs each), each chunk all or nothing;
the job ids are printed as each chunk is accepted (NDJSON records with
--json). A bad line stops the run: its line number and field are shown,
nothing of its chunk is submitted (the chunks before it are), exit 1.
Give the specs a "job_id" and running the same file again is safe."""


@main.command(epilog=_GRAPH_HELP + "\n\n" + _JSONL_HELP)
@click.argument("task", required=False)
@arg_options
@job_options(with_mode=True)
@submit_options
@click.option("--no-cache", is_flag=True, help="Run the job even if the result cache holds its result.")
@click.option(
    "--graph",
    "graph",
    type=click.File("r"),
    callback=_read_graph,
    metavar="FILE.json",
    help="Submit the job specs of FILE atomically instead of one TASK (see below).",
)
@click.option(
    "--jsonl",
    "jsonl_file",
    type=click.File("rb"),
    metavar="FILE.jsonl",
    help="Submit one job spec per line of FILE (- for stdin), in atomic chunks (see below).",
)
@click.option(
    "--chunk",
    type=click.IntRange(1, jsonl.MAX_CHUNK),
    default=jsonl.DEFAULT_CHUNK,
    show_default=True,
    metavar="N",
    help="With --jsonl: specs per submit_many.",
)
def submit(
    task: str | None,
    arg_pairs: dict[str, Any],
    args_json: dict[str, Any],
    graph: list[dict[str, Any]] | None,
    jsonl_file: IO[bytes] | None,
    chunk: int,
    no_cache: bool,
    **options: Any,
) -> None:
    """Submit a job of TASK; print its id. Or, with --graph or --jsonl, several jobs.

    With --wait, show its progress, then print how it ended and its result; exit 3 if
    it failed or was cancelled.
    """
    if graph is None and jsonl_file is None:
        if task is None:
            raise click.UsageError("give a TASK, or --graph FILE.json, or --jsonl FILE.jsonl")
        if no_cache:
            options["cache"] = False
        _submit_and_maybe_wait(task, {**args_json, **arg_pairs}, options, shell=False)
        return
    flag = "--graph" if graph is not None else "--jsonl"
    given = [
        name
        for name, value in (
            ("TASK", task),
            ("--arg", arg_pairs),
            ("--args-json", args_json),
            ("--no-cache", no_cache),
            ("--graph", graph if jsonl_file is not None else None),
            *((f"--{key.replace('_', '-')}", value) for key, value in options.items()),
        )
        if value is not None and value is not False and value not in ((), {}, [])
    ]
    if given:
        raise click.UsageError(f"{flag} takes the whole job specs from the file, not {given[0]}")
    settings = _settings()
    if jsonl_file is not None:
        _submit_jsonl(settings, jsonl_file, chunk)
        return
    with settings.client() as client:
        records = client.submit_many(graph or [])
    if settings.json:
        render.echo_ndjson(records)
    else:
        click.echo(render.jobs_table(records, colour=render.use_colour()))


def _submit_jsonl(settings: Settings, source: IO[bytes], chunk: int) -> None:
    """``submit --jsonl``: the lines chunk by chunk; a refused line ends it with exit 1."""

    def show(records: Sequence[Record]) -> None:
        if settings.json:
            render.echo_ndjson(records)
        else:
            for record in records:
                click.echo(str(record.get("job_id")))

    accepted = 0

    def counted(records: Sequence[Record]) -> None:
        nonlocal accepted
        show(records)
        accepted += len(records)

    with settings.client() as client:
        try:
            jsonl.submit_lines(client, source, chunk, counted)
        except jsonl.LineError as exc:
            code = f"{exc.code}: " if exc.code else ""
            click.echo(f"error: {code}{exc.message}", err=True)
            click.echo(
                f"  submitted before its chunk: {accepted} jobs (ids above); nothing from its chunk on",
                err=True,
            )
            _exit(EXIT_ERROR)
        except WireError:
            if accepted:
                click.echo(f"{accepted} jobs were submitted before this error", err=True)
            raise


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
@job_options(with_mode=False)
@submit_options
def run(command: tuple[str, ...], cwd: str | None, env: dict[str, Any], **options: Any) -> None:
    """Run a command as a shell job.

    `pyrexisctl run [OPTIONS] -- CMD ARGS...`

    Several words run the program directly; one word containing spaces runs through
    /bin/sh -c. With --wait, the command's output is shown as it runs (its stdout on
    stdout, its stderr on stderr) and how it ended on stderr.
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
    _submit_and_maybe_wait("shell", args, options, shell=True)


def filter_options(func: F) -> F:
    """``--status``, ``--queue``, ``--task`` and ``--all-users``: which jobs a listing holds."""
    options: list[Callable[[F], F]] = [
        click.option(
            "--status",
            "-s",
            "statuses",
            multiple=True,
            metavar="S",
            callback=_split_commas,
            help="Only jobs in this status (repeatable, or comma-separated).",
        ),
        click.option("--queue", "-q", metavar="Q", help="Only jobs of this queue."),
        click.option("--task", "-t", metavar="T", help="Only jobs of this task."),
        click.option(
            "--all-users",
            "-u",
            is_flag=True,
            help="Every user's jobs, not only your own (root and the daemon's user only).",
        ),
    ]
    return _apply(func, options)


@main.command(name="list")
@filter_options
@click.option(
    "--limit",
    "-n",
    type=click.IntRange(1, 10_000),
    help="At most N jobs (default 100); with --all, the page size.",
)
@click.option("--all", "all_pages", is_flag=True, help="Every matching job, page after page.")
@json_option
def list_jobs(
    statuses: list[str],
    queue: str | None,
    task: str | None,
    limit: int | None,
    all_pages: bool,
    all_users: bool,
) -> None:
    """List your jobs, oldest first (with --all-users, everybody's)."""
    settings = _settings()
    status_filter = statuses or None
    with settings.client() as client:
        more = False
        jobs: Iterator[Record]
        if all_pages:
            jobs = client.iter_jobs(status_filter, task, queue, limit or 1000, all_users)
        else:
            page = client.list(status_filter, task, queue, limit, all_users=all_users)
            jobs = iter(page.get("jobs") or [])
            more = page.get("next") is not None
        if settings.json:
            render.echo_ndjson(jobs)
            return
        rows = list(jobs)
    if rows:
        click.echo(render.jobs_table(rows, colour=render.use_colour()))
    else:
        click.echo("no jobs", err=True)
    if more:
        click.echo(f"(more jobs: use --all or --limit; showing {len(rows)})", err=True)


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def _time_arg(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """A time: seconds since the epoch, an ISO 8601 date or time (local time unless it
    says its zone), or an age such as ``90s``, ``15m``, ``2h``, ``3d``, ``1w`` (ago)."""
    if value is None:
        return None
    text = value.strip()
    unit = _UNITS.get(text[-1:].lower())
    try:
        if unit is not None:
            age = float(text[:-1])
            if age < 0:
                raise ValueError(text)
            return time.time() - age * unit
        return float(text)
    except ValueError:
        pass
    from datetime import datetime  # only when a date is given

    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a time: give epoch seconds, an ISO date/time "
            "(2026-11-30T04:00) or an age (90s, 15m, 2h, 3d, 1w)"
        ) from None


@main.command()
@click.option("--jsonl", "as_jsonl", is_flag=True, default=True, help="One JSON record per line (the only format; the default).")
@filter_options
@click.option("--since", metavar="TIME", callback=_time_arg, help="Only jobs created at TIME or later (epoch s, ISO date/time, or an age: 2h).")
@click.option("--page", type=click.IntRange(1, 10_000), default=1000, show_default=True, metavar="N", help="Jobs read per request.")
@json_option  # accepted like on every command: the output is JSON (one record a line) already
def export(
    as_jsonl: bool,
    statuses: list[str],
    queue: str | None,
    task: str | None,
    since: float | None,
    all_users: bool,
    page: int,
) -> None:
    """Print every matching job record as NDJSON, oldest first.

    Streamed page by page, so memory stays flat however many jobs match. The lines have
    the same format `submit --jsonl` reads: a record's spec fields resubmit it.
    """
    with _settings().client() as client:
        for line in jsonl.export(client, statuses or None, task, queue, since, all_users, page):
            click.echo(line)


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
    """Wait until JOB ends, showing its progress; exit 3 if it failed or was cancelled.

    On a terminal, a progress line on stderr; otherwise a line per change (--json: the
    job's events as NDJSON, then its record). Ctrl-C stops waiting (exit 130), not the job.
    """
    settings = _settings()
    with settings.client() as client:
        record = _wait_for(client, job_id, timeout, settings)
    _report_outcome(record, settings)


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
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="Keep printing new lines until the job ends (Ctrl-C detaches).",
)
@click.option(
    "--prefix",
    is_flag=True,
    help="Print every line on stdout, prefixed with its stream (stdout:, stderr:, log:).",
)
@json_option
def logs(job_id: str, since: int, follow: bool, prefix: bool) -> None:
    """Print JOB's log lines.

    Lines the job wrote to stdout go to stdout; its stderr and log records go to stderr
    (or all to stdout with --prefix; --json: one log event a line, with its "stream" and
    "seq"). With -f, lines are printed as they are written until the job has ended;
    Ctrl-C stops following (exit 0) and the job goes on.
    """
    settings = _settings()
    if settings.json:
        emit: Callable[[Mapping[str, Any]], None] = render.echo_json
    else:
        emit = _print_prefixed_log_line if prefix else _print_log_line
    _interruptible()
    with settings.client() as client:
        try:
            if follow:
                stream = client.follow_logs(job_id, since)
            else:
                stream = client.stream("logs", {"job_id": job_id, "since": since})
            for event in stream:
                if event.get("kind") == "log":
                    emit(event)
        except KeyboardInterrupt:
            # Leaving the block closes the connection, which ends the stream.
            return


def _show_record(record: Record, *extra: str) -> None:
    if _settings().json:
        render.echo_json(record)
    else:
        click.echo(" ".join([str(record.get("job_id")), str(record.get("status")), *extra]))


@main.command()
@click.argument("job_id", metavar="JOB")
@json_option
def hold(job_id: str) -> None:
    """Keep waiting JOB from starting until `release`."""
    with _settings().client() as client:
        _show_record(client.hold(job_id))


@main.command()
@click.argument("job_id", metavar="JOB")
@json_option
def release(job_id: str) -> None:
    """Let held JOB wait to run again."""
    with _settings().client() as client:
        _show_record(client.release(job_id))


@main.command()
@click.argument("job_id", metavar="JOB")
@click.option("--priority", "-p", type=click.IntRange(-1000, 1000), help="New priority.")
@click.option("--queue", "-q", metavar="Q", help="New queue.")
@json_option
def update(job_id: str, priority: int | None, queue: str | None) -> None:
    """Change the priority and/or queue of JOB while it waits (or is held)."""
    if priority is None and queue is None:
        raise click.UsageError("give --priority and/or --queue")
    with _settings().client() as client:
        record = client.update(job_id, priority, queue)
    _show_record(record, f"priority {record.get('priority')}", f"queue {record.get('queue')}")


@main.command()
@click.option("--job", "-j", "job_id", metavar="JOB", help="Only the events of this job.")
@click.option("--task", "-t", metavar="T", help="Only jobs of this task.")
@click.option("--queue", "-q", metavar="Q", help="Only jobs of this queue.")
@click.option(
    "--kind",
    "-k",
    "kinds",
    multiple=True,
    metavar="K",
    callback=_split_commas,
    help="Only events of this kind: state, progress, log, output (repeatable, or comma-separated).",
)
@json_option
def watch(job_id: str | None, task: str | None, queue: str | None, kinds: list[str]) -> None:
    """Print the daemon's job events as they happen, until Ctrl-C.

    One line per event: time, job, kind, what happened (--json: one event a line).
    Filters combine. "watching" on stderr tells that events are being followed.
    """
    settings = _settings()
    _interruptible()
    with settings.client() as client:
        try:
            stream = client.watch(job_id, task, queue, kinds or None)
            # Answered after the watch is in effect: from here on no event is missed.
            client.hello()
            click.echo("watching; Ctrl-C to stop", err=True)
            for event in stream:
                if settings.json:
                    render.echo_json(event)
                else:
                    click.echo(render.event_line(event))
        except KeyboardInterrupt:
            return


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


@main.group()
def queue() -> None:
    """Configure queues (list them with `queues`; pause with `pause`)."""


@queue.command(name="set")
@click.argument("name", metavar="QUEUE")
@click.option(
    "--weight",
    type=click.FloatRange(min=0, min_open=True),
    metavar="W",
    help="Fair share of the slots against other queues (default 1).",
)
@click.option(
    "--max-concurrency",
    metavar="N|none",
    callback=_cap,
    help="At most N of its jobs run at once; 'none' removes the cap.",
)
@click.option(
    "--aging",
    type=click.FloatRange(min=0),
    metavar="RATE",
    help="Priority points a waiting job gains per second.",
)
@json_option
def queue_set(name: str, weight: float | None, max_concurrency: Any, aging: float | None) -> None:
    """Set QUEUE's weight, concurrency cap and aging (durable); print its row.

    Settings not given keep their value; a queue that does not exist yet is created.
    """
    with _settings().client() as client:
        row = client.configure_queue(
            name, weight=weight, max_concurrency=max_concurrency, aging=aging
        )
    if _settings().json:
        render.echo_json(row)
    else:
        click.echo(render.queues_table([row]))


@main.group()
def schedule() -> None:
    """Recurring jobs: submit a job by cron expression or every N seconds."""


@schedule.command(name="add")
@click.argument("name")
@click.argument("task")
@click.argument("task_args", nargs=-1, metavar="[K=V]...", callback=_arg_pairs)
@click.option(
    "--cron", metavar="EXPR", help='5-field cron, the daemon\'s local time: "*/5 * * * *".'
)
@click.option(
    "--every", type=click.FloatRange(min=0, min_open=True), metavar="S", help="Every S seconds."
)
@arg_options
@job_options(with_mode=True)
@json_option
def schedule_add(
    name: str,
    task: str,
    task_args: dict[str, Any],
    cron: str | None,
    every: float | None,
    arg_pairs: dict[str, Any],
    args_json: dict[str, Any],
    **options: Any,
) -> None:
    """Add schedule NAME: a job of TASK by --cron or --every.

    \b
    pyrexisctl schedule add NAME (--cron EXPR | --every S) [OPTIONS] -- TASK [K=V]...

    The task's arguments are K=V words after TASK (V parsed as JSON when it is valid
    JSON), or --arg/--args-json. Every run submits a new job with the job options given.
    """
    if (cron is None) == (every is None):
        raise click.UsageError("give exactly one of --cron and --every")
    spec = {
        key: options.get(key) for key in ("priority", "queue", "mode", "max_retries", "timeout")
    }
    spec["labels"] = options.get("labels") or None
    args = {**args_json, **arg_pairs, **task_args}
    settings = _settings()
    with settings.client() as client:
        record = client.schedule_add(name, task, args, cron=cron, every=every, **spec)
    if settings.json:
        render.echo_json(record)
    else:
        click.echo(render.schedule_detail(record))


@schedule.command(name="list")
@json_option
def schedule_list() -> None:
    """List the schedules with their next and last runs."""
    settings = _settings()
    with settings.client() as client:
        rows = client.schedule_list()
    if settings.json:
        render.echo_ndjson(rows)
    elif rows:
        click.echo(render.schedules_table(rows))
    else:
        click.echo("no schedules", err=True)


@schedule.command(name="remove")
@click.argument("name")
@json_option
def schedule_remove(name: str) -> None:
    """Remove schedule NAME (the jobs it submitted stay)."""
    settings = _settings()
    with settings.client() as client:
        client.schedule_remove(name)
    if settings.json:
        render.echo_json({"removed": name})
    else:
        click.echo(f"removed schedule {name}")


@main.group()
def cache() -> None:
    """The result cache of tasks declared with cache=True or cache_ttl."""


@cache.command(name="stats")
@click.option("--task", "-t", metavar="T", help="Only this task.")
@json_option
def cache_stats(task: str | None) -> None:
    """Entries, bytes, hits, misses and evictions per task (yours, unless you are an admin).

    Hits, misses and evictions count since the daemon started; entries survive restarts.
    """
    settings = _settings()
    with settings.client() as client:
        result = client.cache_stats(task)
    if settings.json:
        render.echo_json(result)
    else:
        click.echo(render.cache_text(result))


@cache.command(name="clear")
@click.option("--task", "-t", metavar="T", help="Only the results of this task.")
@json_option
def cache_clear(task: str | None) -> None:
    """Remove cached results (every user's for an admin, your own otherwise)."""
    settings = _settings()
    with settings.client() as client:
        result = client.cache_clear(task)
    if settings.json:
        render.echo_json(result)
    else:
        click.echo(f"removed {result.get('removed', 0)} cached results ({render.format_bytes(result.get('bytes'))})")


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
def metrics() -> None:
    """Print the daemon's metrics in the Prometheus text format.

    The same text as the HTTP listener's GET /metrics; redirect it to a *.prom file of
    node_exporter's textfile collector on machines without the listener. Admins only.
    """
    settings = _settings()
    with settings.client() as client:
        text = client.metrics()
    if settings.json:
        render.echo_json({"text": text})
    else:
        click.echo(text, nl=False)


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
@click.option(
    "--queued",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Also leave this many jobs waiting in a paused queue and report the daemon's memory.",
)
@click.option(
    "--restart",
    is_flag=True,
    help="With --queued: then restart the daemon and time it until the first of them has run.",
)
@json_option
def bench(
    jobs: int,
    sync: str,
    modes: list[str],
    inflight: int,
    serial_jobs: int | None,
    daemon_args: tuple[str, ...],
    queued: int,
    restart: bool,
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
        queued=queued,
        restart=restart,
    )
    if restart and not queued:
        raise click.BadParameter("--restart needs --queued N (the jobs the restart recovers)", param_hint="--restart")
    try:
        results = bench_module.run(config, log=lambda text: click.echo(text, err=True))
    except bench_module.BenchError as exc:
        click.echo(f"error: bench: {exc}", err=True)
        _exit(EXIT_ERROR)
    if settings.json:
        render.echo_ndjson(result.as_dict() for result in results)
    else:
        click.echo(bench_module.results_table(results))


# --------------------------------------------------------------------------- operations


def _answer(result: Record, text: Callable[[Record], str]) -> None:
    """A command's answer: the record as JSON with --json, else ``text`` of it."""
    if _settings().json:
        render.echo_json(result)
    else:
        click.echo(text(result))


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    from protocol.durations import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command()
@click.option(
    "--older-than",
    metavar="DURATION",
    callback=_duration,
    help="Only jobs that ended at least this long ago: 90, 30m, 12h, 7d.",
)
@click.option(
    "--status",
    "-s",
    "statuses",
    multiple=True,
    callback=_split_commas,
    type=click.Choice(sorted(TERMINAL)),
    help="Only jobs with this status (repeatable).",
)
@click.option("--queue", "-q", metavar="Q", help="Only jobs of this queue.")
@click.option("--all-users", is_flag=True, help="Every user's finished jobs (admins), not only yours.")
@json_option
def clean(older_than: float | None, statuses: list[str], queue: str | None, all_users: bool) -> None:
    """Remove finished jobs, with their logs and outputs, now; print how many.

    Jobs someone waits on or follows, and jobs a waiting job depends on, are kept (the
    count of those is shown). The daemon also prunes by itself: see --keep-finished and
    --keep-max of pyrexisd.
    """
    with _settings().client() as client:
        result = client.clean(older_than, statuses or None, queue, all_users)
    kept = result.get("kept") or 0
    _answer(result, lambda r: f"removed {r.get('removed', 0)} finished jobs" + (f" ({kept} kept by the rules)" if kept else ""))


@main.command()
@click.argument("path", metavar="FILE", type=click.Path(dir_okay=False, writable=True))
@json_option
def backup(path: str) -> None:
    """Copy the daemon's database to FILE while it runs (admins only).

    SQLite's backup API makes a copy consistent as of one commit; it is written to
    FILE.part and renamed to FILE once complete. Restore: stop the daemon, put the
    file in place of the database (removing its -wal and -shm files), start it.
    """
    with _settings().client() as client:
        result = client.backup(path)
    _answer(result, lambda r: f"backed up {render.format_bytes(r.get('bytes'))} to {path}")


@main.command()
@json_option
def reload() -> None:
    """Make the daemon read its configuration file again (like SIGHUP).

    What can change live (queues, schedules, limits, retention, log level) is applied;
    what cannot is listed as needing a restart.
    """
    with _settings().client() as client:
        result = client.reload()

    def text(r: Record) -> str:
        changed, restart = r.get("changed") or [], r.get("restart_needed") or []
        lines = [f"reloaded {r.get('file')}: " + (f"changed {', '.join(changed)}" if changed else "nothing changed")]
        if restart:
            lines.append(f"needs a restart to apply: {', '.join(restart)}")
        return "\n".join(lines)

    _answer(result, text)


@main.command()
@click.option("--once", is_flag=True, help="Print one frame as plain text and exit.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1, max=1.0),
    default=1.0,
    show_default=True,
    metavar="S",
    help="Seconds between refreshes.",
)
@json_option
def top(once: bool, interval: float) -> None:
    """A live view of the daemon: slots, queues, running jobs, its own figures.

    On a terminal it is full-screen and q quits; elsewhere a plain frame is printed
    every interval until Ctrl-C. --once prints one frame; --json prints the figures a
    frame is made of (one JSON object a refresh).
    """
    from pyrexisctl import top as top_view

    settings = _settings()
    _interruptible()
    with settings.client() as client:
        hello = client.hello()
        server = hello.get("server") or {}
        name = f"{server.get('name', 'pyrexisd')} {server.get('version', '')}".strip()
        all_users = True

        def fetch() -> tuple[Record, list[Record], list[Record]]:
            nonlocal all_users
            stats = client.stats()
            queues = client.queues()
            try:
                page = client.list(status="running", limit=top_view.RUNNING_SHOWN, all_users=all_users)
            except WireError as exc:
                if exc.code != "unauthorized":
                    raise
                all_users = False  # not an admin: its own running jobs
                page = client.list(status="running", limit=top_view.RUNNING_SHOWN)
            return stats, queues, list(page.get("jobs") or [])

        try:
            if settings.json:
                while True:
                    stats, queue_rows, running = fetch()
                    render.echo_json({"stats": stats, "queues": queue_rows, "running": running})
                    if once:
                        return
                    time.sleep(interval)
            if once:
                stats, queue_rows, running = fetch()
                click.echo("\n".join(top_view.frame(stats, queue_rows, running, time.time(), name)))
                return
            top_view.run(fetch, interval, name)
        except KeyboardInterrupt:
            return


SHELLS = ("bash", "zsh", "fish")


@main.command()
@click.argument("shell", type=click.Choice(SHELLS))
@json_option
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL (bash, zsh or fish).

    \b
    bash:  eval "$(pyrexisctl completion bash)"     (in ~/.bashrc)
    zsh:   eval "$(pyrexisctl completion zsh)"      (in ~/.zshrc)
    fish:  pyrexisctl completion fish > ~/.config/fish/completions/pyrexisctl.fish
    """
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None  # click ships all three
    script = cls(main, {}, "pyrexisctl", "_PYREXISCTL_COMPLETE").source()
    _answer({"shell": shell, "script": script}, lambda r: str(r["script"]))


# Commands kept in modules of their own; they register themselves on ``main``.
from pyrexisctl import pipeline_cli  # noqa: E402, F401
