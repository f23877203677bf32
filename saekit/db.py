"""The feature database: the only module that imports duckdb.

One DuckDB file (default artifacts/saekit.duckdb, or $SAEKIT_DB) with the schema in schema.sql,
documented in analysis/SCHEMA.md. Results are written with `replace`, which deletes the rows of
the same scope and inserts the new ones in one transaction, so a crash mid-write leaves the
previous rows intact. DuckDB allows one writing process per file; a second one gets a clear
`DatabaseBusy` error after a short wait instead of a corrupt file.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import time
import uuid
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import duckdb

from saekit.artifacts import artifacts_dir

READ_ONLY_STATEMENTS = {"SELECT", "EXPLAIN", "PRAGMA"}


class DatabaseError(RuntimeError):
    """The database is missing, a statement was refused, or a write failed."""


class DatabaseBusy(DatabaseError):
    """Another process holds the database's write lock."""


def default_path() -> Path:
    return Path(os.environ.get("SAEKIT_DB") or artifacts_dir() / "saekit.duckdb")


def schema_sql() -> str:
    return (resources.files("saekit") / "schema.sql").read_text()


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("saekit", "torch", "sae-lens", "transformer-lens", "transformers", "duckdb"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _open(path: Path, read_only: bool, wait_s: float) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as e:
            if "lock" not in str(e).lower():
                raise DatabaseError(f"cannot open {path}: {e}") from e
            if time.monotonic() >= deadline:
                holder = re.search(r"PID (\d+)", str(e))
                who = f" (process {holder.group(1)})" if holder else ""
                raise DatabaseBusy(
                    f"{path} is in use by another process{who}; DuckDB allows one writer at a time. "
                    "Wait for it to finish, or point this run at another file with --db / $SAEKIT_DB."
                ) from e
            time.sleep(0.2)


class Database:
    """A connection to the feature database, with run bookkeeping and transactional replacement."""

    def __init__(self, path: str | Path | None = None, read_only: bool = False, wait_s: float = 10.0):
        self.path = Path(path) if path else default_path()
        if read_only and not self.path.exists():
            raise DatabaseError(f"no database at {self.path}; run `saekit study` (or a ranking) to create it")
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.read_only = read_only
        self.con = _open(self.path, read_only, wait_s)
        if not read_only:
            self._exec(schema_sql())

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _exec(self, sql: str, params: Sequence | None = None) -> None:
        """Execute a writing statement and consume its result (DuckDB wants results finished)."""
        self.con.execute(sql, params or []).fetchall()

    # ------------------------------------------------------------------ runs

    def start_run(self, kind: str, config: Mapping[str, Any] | None = None, run_id: str | None = None) -> str:
        run_id = run_id or f"{kind}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        self._exec(
            "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, NULL, 'running')",
            [run_id, kind, json.dumps(config or {}, default=str), json.dumps(package_versions()),
             dt.datetime.now(dt.UTC).replace(tzinfo=None)],
        )
        return run_id

    def finish_run(self, run_id: str, status: str = "done") -> None:
        self._exec("UPDATE runs SET finished_at = ?, status = ? WHERE run_id = ?",
                         [dt.datetime.now(dt.UTC).replace(tzinfo=None), status, run_id])

    # ------------------------------------------------------------------ writing

    @contextmanager
    def transaction(self) -> Iterator["Database"]:
        self.con.begin()
        try:
            yield self
        except BaseException:
            self.con.rollback()
            raise
        self.con.commit()

    def delete(self, table: str, where: Mapping[str, Any]) -> None:
        self._check_table(table)
        clause = " AND ".join(f"{k} = ?" for k in where) or "TRUE"
        self._exec(f"DELETE FROM {table} WHERE {clause}", list(where.values()))

    def insert(self, table: str, rows: Mapping[str, Sequence] | Sequence[Mapping[str, Any]]) -> int:
        """Insert columns (dict of equal-length lists) or rows (list of dicts) by column name."""
        import pyarrow as pa

        self._check_table(table)
        if isinstance(rows, Mapping):
            data = pa.table({k: list(v) if not isinstance(v, list) else v for k, v in rows.items()})
        else:
            rows = list(rows)
            if not rows:
                return 0
            data = pa.Table.from_pylist(rows)
        if data.num_rows == 0:
            return 0
        name = f"_incoming_{uuid.uuid4().hex[:8]}"
        self.con.register(name, data)
        try:
            self._exec(f"INSERT INTO {table} BY NAME SELECT * FROM {name}")
        finally:
            self.con.unregister(name)
        return data.num_rows

    def replace(self, table: str, where: Mapping[str, Any], rows) -> int:
        """Delete the rows matching `where` and insert `rows`, atomically."""
        with self.transaction():
            self.delete(table, where)
            return self.insert(table, rows)

    # ------------------------------------------------------------------ reading

    def sql(self, query: str, params: Sequence | None = None) -> list[tuple]:
        """All rows of a query (fetched at once: DuckDB refuses new work while a result is open)."""
        return self.con.execute(query, params or []).fetchall()

    def scalar(self, query: str, params: Sequence | None = None) -> Any:
        rows = self.sql(query, params)
        return rows[0][0] if rows else None

    def tables(self) -> list[tuple[str, int]]:
        names = [r[0] for r in self.con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' ORDER BY table_name").fetchall()]
        return [(n, self.scalar(f'SELECT count(*) FROM "{n}"')) for n in names]

    def columns(self) -> dict[str, list[tuple[str, str]]]:
        out: dict[str, list[tuple[str, str]]] = {}
        for table, col, typ in self.con.execute(
                "SELECT table_name, column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position").fetchall():
            out.setdefault(table, []).append((col, typ))
        return out

    def _check_table(self, table: str) -> None:
        if not re.fullmatch(r"[a-z_]+", table):
            raise DatabaseError(f"bad table name {table!r}")


def read_only_query(sql: str, path: str | Path | None = None):
    """Run one read-only statement and return a pyarrow Table; writing statements are refused."""
    db = Database(path, read_only=True)
    try:
        try:
            statements = db.con.extract_statements(sql)
        except duckdb.Error as e:
            raise DatabaseError(f"cannot parse the query: {e}") from e
        if len(statements) != 1:
            raise DatabaseError(f"give exactly one statement, got {len(statements)}")
        kind = statements[0].type.name
        if kind not in READ_ONLY_STATEMENTS:
            raise DatabaseError(f"refused: {kind} statements write to the database; `saekit query` is read-only "
                                "(use SELECT)")
        try:
            return db.con.sql(sql).to_arrow_table()
        except duckdb.Error as e:
            raise DatabaseError(f"query failed: {e}") from e
    finally:
        db.close()


def write_table(table, path: Path, fmt: str) -> None:
    """Write a pyarrow Table as csv, json (records) or parquet."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = Path(path)
    if fmt == "csv":
        pacsv.write_csv(table, path)
    elif fmt == "parquet":
        pq.write_table(table, path)
    elif fmt == "json":
        path.write_text(json.dumps(table.to_pylist(), indent=1, default=str) + "\n")
    else:
        raise DatabaseError(f"unknown output format {fmt!r}; choose csv, json or parquet")
