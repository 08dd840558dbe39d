"""Many rows in one statement: the same rows, in the same order, as executemany writes."""

from __future__ import annotations

import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st

from pyrexisd.rows_statement import MAX_ROWS, RowsStatement

UPSERT = RowsStatement("INSERT INTO t (k, v) VALUES", 2, " ON CONFLICT(k) DO UPDATE SET v = excluded.v")


def table() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v)")
    return conn


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=5), st.binary(max_size=5))), max_size=700))
def test_rows_written_by_few_statements_end_as_executemany_leaves_them(rows: list[tuple[int, object]]) -> None:
    """Given any rows, keys repeating, then the table after RowsStatement.run holds what
    executemany of one row at a time leaves (a later row of a key wins)."""
    ours, theirs = table(), table()
    UPSERT.run(ours, rows)
    theirs.executemany("INSERT INTO t (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v", rows)
    assert ours.execute("SELECT k, v FROM t ORDER BY k").fetchall() == theirs.execute("SELECT k, v FROM t ORDER BY k").fetchall()


def test_a_batch_is_a_few_statements_of_a_power_of_two_rows() -> None:
    """Given 1,000 rows, then they go in statements of 256, 256, 256, 128, 64, 32, 8 rows:
    no statement holds more than MAX_ROWS rows, and the texts are few."""
    conn = table()
    statement = RowsStatement("INSERT INTO t (k, v) VALUES", 2)
    sizes: list[int] = []
    conn.set_trace_callback(lambda sql: sizes.append(sql.count("(") - 1) if sql.startswith("INSERT") else None)
    statement.run(conn, [(i, i) for i in range(1000)])
    assert sizes == [256, 256, 256, 128, 64, 32, 8]
    assert max(sizes) == MAX_ROWS
    assert conn.execute("SELECT count(*), sum(v) FROM t").fetchone() == (1000, sum(range(1000)))


def test_no_rows_is_no_statement() -> None:
    conn = table()
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    RowsStatement("INSERT INTO t (k, v) VALUES", 2).run(conn, [])
    assert seen == []
