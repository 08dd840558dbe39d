"""Many rows written by one SQL statement (``INSERT … VALUES (…), (…), …``).

``executemany`` steps its statement once per row, and Python's sqlite3 releases the GIL
around every step and takes it back after: on the writer's thread that is one GIL
hand-over per row. When the event loop is busy (a client pipelining hundreds of submits),
each take waits for the loop to let go, and a batch of 500 rows spent ~50 ms binding and
stepping. Written as a few statements of many rows, the same batch is a few steps, each
run by SQLite with the GIL released.

Statements hold a power of two of rows, so a table has a handful of distinct texts,
each prepared once and kept in the connection's statement cache.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

# Rows per statement at most: 256 rows of the widest table (33 columns) bind 8,448
# values, below SQLite's limit on bound values (32,766 since 3.32).
MAX_ROWS = 256


class RowsStatement:
    """``head`` (``INSERT INTO t (a, b) VALUES``), ``columns`` values a row, and ``tail``
    after the rows (``ON CONFLICT … DO UPDATE …``)."""

    __slots__ = ("_head", "_row", "_tail", "_texts")

    def __init__(self, head: str, columns: int, tail: str = "") -> None:
        self._head = head
        self._row = "(" + ", ".join("?" * columns) + ")"
        self._tail = tail
        self._texts: dict[int, str] = {}

    def text(self, rows: int) -> str:
        """The statement for ``rows`` rows."""
        text = self._texts.get(rows)
        if text is None:
            text = self._texts[rows] = f"{self._head} {', '.join([self._row] * rows)}{self._tail}"
        return text

    def run(self, conn: sqlite3.Connection, rows: Sequence[Sequence[Any]]) -> None:
        """Write ``rows`` in their order (a later row of the same key wins, as with
        ``executemany``)."""
        done, total = 0, len(rows)
        while done < total:
            size = min(MAX_ROWS, 1 << ((total - done).bit_length() - 1))
            conn.execute(self.text(size), [value for row in rows[done : done + size] for value in row])
            done += size
