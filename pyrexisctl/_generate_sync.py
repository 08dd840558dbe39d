"""Generate the blocking client's ops (``_sync_ops.py``) from the asyncio ones (``_async_ops.py``).

Run ``python -m pyrexisctl._generate_sync`` after editing ``_async_ops.py``;
``python -m pyrexisctl._generate_sync --check`` only says whether ``_sync_ops.py`` is fresh
(exit 1 when it is stale), and ``tests/test_client.py`` fails while it is.

The conversion works on tokens rather than on the syntax tree so that comments, layout and
docstrings come through unchanged: the keywords ``async`` and ``await`` are dropped, and
every name of :data:`SYNC_NAMES` becomes its blocking counterpart, in code as in docstrings
and comments. Two things are rewritten whole: the module docstring (the source's talks
about being the source) and an import list whose order a rename broke (so the result
passes the linter's import sorting as the source does). A name that still looks
asynchronous afterwards stops the generation: it would otherwise leak an await-only call
into the blocking client.
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import sys
import tokenize
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

SOURCE: Final = Path(__file__).with_name("_async_ops.py")
TARGET: Final = Path(__file__).with_name("_sync_ops.py")
COMMAND: Final = "python -m pyrexisctl._generate_sync"

SYNC_NAMES: Final[Mapping[str, str]] = {
    "AsyncIterator": "Iterator",
    "AsyncStream": "Stream",
    "_AsyncConnection": "_SyncConnection",
    "_AsyncOps": "_SyncOps",
    "_async_io": "_sync_io",
    "aclose": "close",
}
"""Each asynchronous name the source may use, and the blocking name that replaces it."""

HEADER: Final = f"""\
# Generated from pyrexisctl/{SOURCE.name} by pyrexisctl/{Path(__file__).name}: do not edit.
# Edit {SOURCE.name} instead, then regenerate this file with:
#     {COMMAND}
# tests/test_client.py fails while this file is stale.
"""

DOCSTRING: Final = '''\
"""The ops of the contract as methods of the blocking client, generated from
:mod:`pyrexisctl._async_ops` (see there, and :mod:`pyrexisctl._generate_sync`)."""
'''

_KEYWORDS: Final = frozenset({"async", "await"})
_NAMES_IN_TEXT: Final = re.compile(r"\b(?:" + "|".join(map(re.escape, SYNC_NAMES)) + r")\b")
_STILL_ASYNC: Final = re.compile(
    r"\b(?:async|await|asyncio|aclose|anext|aiter)\b|Async|__a(?:enter|exit|iter|next)__"
)


class GenerationError(Exception):
    """The source uses something the generator cannot turn into blocking code."""


def generate(source: str) -> str:
    """The text of ``_sync_ops.py`` for the text of ``_async_ops.py``."""
    docstring_lines, rest = _split_docstring(source)
    body = _convert_tokens(rest)
    # Conversion never adds or removes a line break, so line numbers still match the source.
    for number, line in enumerate(body.splitlines(), start=docstring_lines + 1):
        if _STILL_ASYNC.search(line):
            raise GenerationError(
                f"{SOURCE.name}, line {number}, has no blocking counterpart once converted: "
                f"{line.strip()!r}. Add the name to SYNC_NAMES, or move the code into the "
                "connection cores."
            )
    body = _sort_renamed_imports(body)
    text = HEADER + DOCSTRING + body
    compile(text, str(TARGET), "exec")  # a conversion that breaks the syntax fails here, loudly
    return text


def _split_docstring(source: str) -> tuple[int, str]:
    """How many lines the module docstring spans, and the text after it."""
    tree = ast.parse(source)
    first = tree.body[0] if tree.body else None
    if not (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        raise GenerationError(f"{SOURCE.name} must open with its module docstring")
    assert first.end_lineno is not None
    lines = source.splitlines(keepends=True)
    return first.end_lineno, "".join(lines[first.end_lineno :])


def _convert_tokens(text: str) -> str:
    line_starts = [0]
    for line in text.splitlines(keepends=True):
        line_starts.append(line_starts[-1] + len(line))

    def offset(position: tuple[int, int]) -> int:
        row, column = position
        return line_starts[row - 1] + column

    edits: list[tuple[int, int, str]] = []
    tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    for token, following in zip(tokens, tokens[1:], strict=False):
        if token.type == tokenize.NAME and token.string in _KEYWORDS:
            # Up to the next token, so "async def" leaves "def" where it stood.
            edits.append((offset(token.start), offset(following.start), ""))
        elif token.type == tokenize.NAME and token.string in SYNC_NAMES:
            edits.append((offset(token.start), offset(token.end), SYNC_NAMES[token.string]))
        elif token.type in (tokenize.STRING, tokenize.COMMENT):
            renamed = _NAMES_IN_TEXT.sub(lambda match: SYNC_NAMES[match[0]], token.string)
            if renamed != token.string:
                edits.append((offset(token.start), offset(token.end), renamed))
    for start, end, replacement in reversed(edits):
        text = text[:start] + replacement + text[end:]
    return text


def _import_order(name: str) -> tuple[int, str, str]:
    """isort's "order by type": CONSTANTS, then Classes, then everything else, each
    group case-insensitively, as the linter's import sorting wants it."""
    if len(name) > 1 and name.isupper():
        kind = 0
    elif name[0].isupper():
        kind = 1
    else:
        kind = 2
    return kind, name.lower(), name


def _sort_renamed_imports(text: str) -> str:
    lines = text.splitlines(keepends=True)
    for node in ast.parse(text).body:
        if not isinstance(node, ast.ImportFrom) or node.module is None:
            continue
        names = [alias.name for alias in node.names]
        ordered = sorted(names, key=_import_order)
        if names == ordered:
            continue
        if node.end_lineno != node.lineno or any(alias.asname for alias in node.names):
            raise GenerationError(
                f"a rename unsorted the import from {node.module} at line {node.lineno}; "
                "the generator re-sorts only one-line imports without 'as'"
            )
        lines[node.lineno - 1] = f"from {node.module} import {', '.join(ordered)}\n"
    return "".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Write ``_sync_ops.py`` (or, with ``--check``, tell whether it is stale); the exit code."""
    parser = argparse.ArgumentParser(
        prog=COMMAND, description=f"Generate pyrexisctl/{TARGET.name} from {SOURCE.name}."
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if the file is stale"
    )
    options = parser.parse_args(argv)
    try:
        text = generate(SOURCE.read_text(encoding="utf-8"))
    except GenerationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else None
    if options.check:
        if current != text:
            print(f"{TARGET} is stale: run {COMMAND}", file=sys.stderr)
            return 1
        return 0
    if current != text:
        TARGET.write_text(text, encoding="utf-8")
        print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
