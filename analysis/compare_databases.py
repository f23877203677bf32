"""Do two feature databases hold the same results? (a refactor's before/after check)

    python analysis/compare_databases.py BEFORE.duckdb AFTER.duckdb [--rtol 1e-4] [--atol 1e-5]
                                         [--ignore TABLE.COLUMN ...]

Compares every table the two files share, row for row, leaving out what differs between any two
runs by design (run ids, timestamps, process ids, package versions, experiment ids). Numbers,
and lists of numbers, are compared with a tolerance for float noise; everything else exactly.
Tables only one file has are listed. `--ignore TABLE.COLUMN` leaves out a column a change meant to
alter (each is printed). Exit code 1 when a shared table differs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import saekit

VOLATILE = {"run_id", "started_at", "finished_at", "created_at", "pid", "host", "versions", "experiment_id",
            "config", "status"}
"""Columns that differ between two runs of the same inputs (ids, clocks, processes, environments)."""


def _tables(db) -> list[str]:
    frame = db.sql("SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'")
    return sorted(frame["table_name"])


def _cells(frame):
    """The frame with every missing value (NaN, NA, NaT) as None."""
    frame = frame.astype(object)
    return frame.where(frame.notna(), None)


def _plain(v):
    """A hashable, sortable stand-in for one cell: lists become tuples, NaN and None sort first."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return (0, "")
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, (list, tuple)):
        return (1, tuple(_plain(x) for x in v))
    if isinstance(v, float):
        return (2, round(v, 3))
    return (3, str(v))


def _json(v):
    """A JSON document stored as text, parsed (so key order and float noise do not count); else v."""
    if isinstance(v, str) and v[:1] in "{[":
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def _close(a, b, rtol: float, atol: float) -> bool:
    a, b = _json(a), _json(b)
    if hasattr(a, "tolist"):
        a = a.tolist()
    if hasattr(b, "tolist"):
        b = b.tolist()
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], rtol, atol) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y, rtol, atol) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is None and b is None
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=rtol, abs_tol=atol)
    return a == b


def compare_table(before, after, table: str, rtol: float, atol: float, ignore: frozenset[str] = frozenset()) -> str | None:
    """None when the table agrees, else a one-line reason; `ignore` holds "table.column" names left out."""
    a, b = (_cells(db.sql(f'SELECT * FROM "{table}"')) for db in (before, after))
    a = a[[c for c in a.columns if f"{table}.{c}" not in ignore]]
    b = b[[c for c in b.columns if f"{table}.{c}" not in ignore]]
    columns = [c for c in a.columns if c in set(b.columns) and c not in VOLATILE]
    if set(a.columns) - set(b.columns):
        return f"columns only before: {sorted(set(a.columns) - set(b.columns))}"
    if len(a) != len(b):
        return f"{len(a)} rows before, {len(b)} after"
    rows_a = sorted((tuple(r) for r in a[columns].itertuples(index=False)), key=lambda r: tuple(_plain(v) for v in r))
    rows_b = sorted((tuple(r) for r in b[columns].itertuples(index=False)), key=lambda r: tuple(_plain(v) for v in r))
    for n, (ra, rb) in enumerate(zip(rows_a, rows_b)):
        for col, x, y in zip(columns, ra, rb):
            if not _close(x, y, rtol, atol):
                return f"row {n} column {col}: {str(x)[:80]} before, {str(y)[:80]} after"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rtol", type=float, default=1e-4)
    parser.add_argument("--atol", type=float, default=1e-5)
    parser.add_argument("--ignore", action="append", default=[], metavar="TABLE.COLUMN",
                        help="leave out a column a change meant to alter (repeatable)")
    args = parser.parse_args(argv)
    ignore = frozenset(args.ignore)
    for name in sorted(ignore):
        print(f"not compared: {name}")
    with saekit.open_db(args.before) as before, saekit.open_db(args.after) as after:
        ta, tb = _tables(before), _tables(after)
        different = 0
        for table in sorted(set(ta) & set(tb)):
            reason = compare_table(before, after, table, args.rtol, args.atol, ignore)
            n = len(before.sql(f'SELECT 1 FROM "{table}"'))
            added = sorted(set(after.sql(f'SELECT * FROM "{table}" LIMIT 0').columns)
                           - set(before.sql(f'SELECT * FROM "{table}" LIMIT 0').columns))
            extra = f" (columns only after, not compared: {', '.join(added)})" if added else ""
            print(f"{table:40s} {n:8d} rows  {'same' if reason is None else 'DIFFERENT: ' + reason}{extra}")
            different += reason is not None
        for table in sorted(set(ta) - set(tb)):
            print(f"{table:40s} only before")
        for table in sorted(set(tb) - set(ta)):
            print(f"{table:40s} only after")
    print(f"{different} shared table(s) differ")
    return 1 if different else 0


if __name__ == "__main__":
    sys.exit(main())
