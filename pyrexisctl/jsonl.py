"""JSONL in and out for ``pyrexisctl``: job specs from a file into ``submit_many`` chunks,
and job records out of ``list`` pages, one line each, in constant memory.

Submitting: the lines are read one at a time and gathered into chunks (at most
``chunk_size`` specs, and a share of the daemon's frame size in bytes); each chunk is one
``submit_many``, so it is accepted whole or not at all. A line that is not a job spec
stops the run before its chunk is sent, and an error the daemon gives a spec of a chunk
is turned back into that spec's line number and the field at fault
(:class:`LineError`). Chunks before it stay accepted: their records were handed on
already. A chunk whose answer would not fit a frame is split in two and sent again.

Exporting: :func:`export` walks ``list`` page by page and yields each record as a line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from protocol import jsonl
from protocol.errors import InvalidRequest, PyrexisError, WireError
from pyrexisctl.client import Client, Record

DEFAULT_CHUNK = 1000
MAX_CHUNK = 10_000  # submit_many's limit
FRAME_SHARE = 4  # a chunk's lines take at most max_frame / FRAME_SHARE bytes (replies are larger)


class LineError(PyrexisError):
    """A line of the input that is not an acceptable job spec: its number, the field at
    fault (``None``: the line as a whole), and the daemon's error code when it said so."""

    def __init__(self, line: int, where: str | None, reason: str, code: str | None = None) -> None:
        place = f"line {line}" + (f", {where}" if where else "")
        super().__init__(f"{place}: {reason}")
        self.line = line
        self.where = where
        self.reason = reason
        self.code = code


@dataclass(slots=True)
class Chunk:
    """Specs of consecutive lines, sent together."""

    lines: list[int] = field(default_factory=list)
    specs: list[dict[str, Any]] = field(default_factory=list)
    size: int = 0


def _check_spec(line: int, value: Any) -> dict[str, Any]:
    """What can be told without the daemon: a map with a task name."""
    if not isinstance(value, dict):
        raise LineError(line, None, f"a job spec is a JSON object, not {type(value).__name__}")
    task = value.get("task")
    if not isinstance(task, str) or not task:
        raise LineError(line, "task", "a job spec needs a task name (a non-empty string)")
    return value


def chunks(lines: Iterable[str | bytes], chunk_size: int, max_bytes: int) -> Iterator[Chunk]:
    """The input's specs in chunks of at most ``chunk_size`` specs and (unless one line is
    larger by itself) ``max_bytes`` bytes. A bad line raises :class:`LineError` once the
    chunks before it have been taken."""
    chunk = Chunk()
    try:
        for number, value, size in jsonl.read(lines):
            spec = _check_spec(number, value)
            if chunk.specs and (len(chunk.specs) >= chunk_size or chunk.size + size > max_bytes):
                yield chunk
                chunk = Chunk()
            chunk.lines.append(number)
            chunk.specs.append(spec)
            chunk.size += size
    except jsonl.JsonlError as exc:
        raise LineError(exc.line, None, exc.reason) from None
    if chunk.specs:
        yield chunk


def _where(error: Mapping[str, Any]) -> str | None:
    loc = [str(part) for part in error.get("loc") or []]
    if len(loc) >= 2 and loc[0] == "jobs":  # a batch's own check: ["jobs", i, field]
        loc = loc[2:]
    return ".".join(loc) or None


def line_error(exc: WireError, chunk: Chunk) -> LineError | None:
    """The daemon's refusal of ``chunk`` as the line at fault, when it names a spec."""
    details = exc.details if isinstance(exc.details, Mapping) else {}
    index = details.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(chunk.lines):
        return None
    errors = [e for e in details.get("errors") or [] if isinstance(e, Mapping)]
    if errors:
        where = _where(errors[0])
        reason = "; ".join(str(e.get("msg", "")) for e in errors)
        if len(errors) > 1:
            where = ", ".join(filter(None, (_where(e) for e in errors))) or where
        reason = f"{reason} ({exc.message})"
    else:
        known = [key for key in ("task", "job_id") if key in details]
        where = known[0] if known else None
        reason = exc.message
    return LineError(chunk.lines[index], where, reason, exc.code)


def _too_large(exc: WireError) -> bool:
    details = exc.details if isinstance(exc.details, Mapping) else {}
    return isinstance(exc, InvalidRequest) and "index" not in details and any(
        isinstance(e, Mapping) and list(e.get("loc") or []) == ["jobs"] for e in details.get("errors") or []
    )


def submit_chunk(client: Client, chunk: Chunk) -> list[Record]:
    """One chunk, all or nothing; split in halves (each all or nothing) when its answer
    would not fit in a frame."""
    try:
        return client.submit_many(chunk.specs)
    except WireError as exc:
        if _too_large(exc) and len(chunk.specs) > 1:
            half = len(chunk.specs) // 2
            first = Chunk(chunk.lines[:half], chunk.specs[:half])
            second = Chunk(chunk.lines[half:], chunk.specs[half:])
            return submit_chunk(client, first) + submit_chunk(client, second)
        found = line_error(exc, chunk)
        if found is not None:
            raise found from None
        raise


def submit_lines(
    client: Client, lines: Iterable[str | bytes], chunk_size: int, on_records: Callable[[Sequence[Record]], None]
) -> int:
    """Submit every spec of ``lines`` chunk by chunk, handing each chunk's records to
    ``on_records`` as it is accepted; the number of jobs. Raises :class:`LineError`
    (or the daemon's error) at the first chunk refused."""
    max_frame = client.hello().get("max_frame")
    frame = max_frame if isinstance(max_frame, int) and max_frame > 0 else 16 * 1024 * 1024
    total = 0
    for chunk in chunks(lines, min(chunk_size, MAX_CHUNK), frame // FRAME_SHARE):
        records = submit_chunk(client, chunk)
        on_records(records)
        total += len(records)
    return total


def export(
    client: Client,
    statuses: Sequence[str] | None,
    task: str | None,
    queue: str | None,
    since: float | None,
    all_users: bool,
    page_size: int,
) -> Iterator[str]:
    """Every matching job record as a JSONL line (without its ending), oldest first,
    one ``list`` page in memory at a time."""
    for record in client.iter_jobs(statuses, task, queue, page_size, all_users, since):
        yield jsonl.dumps(record)
