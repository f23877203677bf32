"""The connection to the feature database: opening, run bookkeeping, transactional writes, the read-only guard.

One DuckDB file (default artifacts/saekit.duckdb, or $SAEKIT_DB) with the schema in schema.sql,
documented in analysis/SCHEMA.md. Results are written with `replace`, which deletes the rows of
the same scope and inserts the new ones in one transaction; a command's writes all go through
`Database.run`, one transaction with the run's 'done' mark, so a crash mid-write leaves the
previous rows intact and the run is marked 'failed' by the next writer. DuckDB allows one writing
process per file; a second one gets a clear `DatabaseBusy` error after a short wait instead of a
corrupt file. `check_read_only` is the guard every user statement passes (see user_sql.py).
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import os
import re
import socket
import time
import uuid
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import duckdb

from saekit import feature_stats as stats
from saekit.artifacts import artifacts_dir, package_versions
from saekit.errors import SaekitError

READ_ONLY_STATEMENTS = {"SELECT", "EXPLAIN", "PRAGMA"}
EXPLAINABLE_STATEMENTS = {"SELECT", "PRAGMA"}
"""What EXPLAIN may wrap: EXPLAIN ANALYZE runs its statement, so COPY, INSTALL, ... under it would write."""

SANDBOX = {"enable_external_access": False, "autoinstall_known_extensions": False,
           "autoload_known_extensions": False, "lock_configuration": True}
"""Connection settings for user SQL: no files or network beyond the database, no extensions,
and no SET to undo it. Read-only opening alone still lets COPY ... TO and read_text() through."""

READ_ONLY_PRAGMAS = {"show_tables", "show_tables_expanded", "show_databases", "table_info", "show", "database_size",
                     "database_list", "storage_info", "metadata_info", "version", "platform", "functions", "collations",
                     "user_agent"}
"""The PRAGMAs that only describe the database. Others can write: import_database runs the COPY and
CREATE statements of a folder's load.sql, and assignments change settings."""

DUCKDB_MAGIC = b"DUCK"
"""Bytes 8-11 of every DuckDB database file."""


class DatabaseError(SaekitError, RuntimeError):
    """The database is missing, a statement was refused, or a write failed."""


class DatabaseBusy(DatabaseError):
    """Another process holds the database's write lock."""


def default_path() -> Path:
    return Path(os.environ.get("SAEKIT_DB") or artifacts_dir() / "saekit.duckdb")


def schema_sql() -> str:
    """schema.sql with the statistics declared in saekit.feature_stats written in (columns, upgrades, view)."""
    text = (resources.files("saekit.db") / "schema.sql").read_text()
    return (text.replace("/*statistic columns: one per declaration in saekit/feature_stats.py*/\n", stats.column_sql())
            .replace("/*statistic upgrades*/\n", stats.upgrade_sql())
            .replace("/*statistics shown*/", stats.view_sql("s")))


TOKEN_RULE_TABLES = ("saes", "features", "story_means", "experiments")
"""Tables that held a copy of their run's token rule before runs.token_rule (moved on upgrade)."""

_OPEN_HERE: collections.Counter[Path] = collections.Counter()
"""Database files this process holds open. DuckDB's file lock is a POSIX record lock, which the
process loses when it closes *any* descriptor of the file, so such a file is never opened again
just to read its header."""


def check_database_path(path: str | Path | None, must_exist: bool = False) -> Path:
    """The database path, refused early when it is a folder or a file that is not a DuckDB database.

    DuckDB itself would open a CSV as an in-memory database (so nothing gets written) and give
    obscure errors for the rest; a missing file is created by writers and refused for readers.
    """
    path = Path(path) if path else default_path()
    if _OPEN_HERE[path.resolve()]:
        return path
    if path.is_dir():
        raise DatabaseError(f"database path {path} is a folder; give a file, e.g. {path / 'saekit.duckdb'}")
    if not path.exists():
        if must_exist:
            raise DatabaseError(f"no database at {path}; run `saekit study` (or a ranking) to create it")
        return path
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError as e:
        raise DatabaseError(f"cannot read the database {path}: {e}") from e
    if head[8:12] != DUCKDB_MAGIC:
        raise DatabaseError(f"{path} exists but is not a DuckDB database; give a .duckdb file, or a new path "
                            "to create one (--db or $SAEKIT_DB)")
    return path


def _open(path: Path, read_only: bool, wait_s: float, config: Mapping[str, Any]) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only, config=dict(config))
        except duckdb.Error as e:
            if not isinstance(e, duckdb.IOException) or "lock" not in str(e).lower():
                raise DatabaseError(f"cannot open {path}: {e}") from e
            if time.monotonic() >= deadline:
                holder = re.search(r"PID (\d+)", str(e))
                who = f" (process {holder.group(1)})" if holder else ""
                raise DatabaseBusy(
                    f"{path} is in use by another process{who}; DuckDB allows one writer at a time. "
                    "Wait for it to finish, or point this run at another file with --db / $SAEKIT_DB."
                ) from e
            time.sleep(0.2)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class Database:
    """A connection to the feature database, with run bookkeeping and transactional replacement."""

    def __init__(self, path: str | Path | None = None, read_only: bool = False, wait_s: float = 10.0,
                 config: Mapping[str, Any] | None = None):
        self.path = check_database_path(path, must_exist=read_only)
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.read_only = read_only
        self._in_transaction = False
        self._streams: list = []
        self.con = _open(self.path, read_only, wait_s, config or {})
        self._key = self.path.resolve()
        _OPEN_HERE[self._key] += 1
        if not read_only:
            self._set_aside_old_examples()
            self._exec(schema_sql())
            self._move_token_rules()
            self._fail_dead_runs()

    def close(self) -> None:
        """Close the connection and any result still streaming: an open stream keeps DuckDB's
        instance of the file alive, and a later open with other settings would be refused."""
        for reader in self._streams:
            reader.close()
        self.con.close()
        if self._key in _OPEN_HERE:
            _OPEN_HERE[self._key] -= 1
            if _OPEN_HERE[self._key] <= 0:
                del _OPEN_HERE[self._key]
            self._key = Path()

    def interrupt(self) -> None:
        """Stop the statement running on this handle (from another thread); nothing if it is closed."""
        try:
            self.con.interrupt()
        except duckdb.ConnectionException:
            pass

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _exec(self, sql: str, params: Sequence | None = None) -> None:
        """Execute a writing statement and consume its result (DuckDB wants results finished)."""
        self.con.execute(sql, params or []).fetchall()

    # ------------------------------------------------------------------ runs

    def start_run(self, kind: str, config: Mapping[str, Any] | None = None, run_id: str | None = None,
                  token_rule: str | None = None) -> str:
        """Record a run as 'running', with this process's pid and host so a killed run can be found, and the
        token rule (JSON) its results count positions by, if it has one."""
        run_id = run_id or f"{kind}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        self._exec(
            "INSERT OR REPLACE INTO runs (run_id, kind, config, versions, started_at, status, pid, host, token_rule) "
            "VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?)",
            [run_id, kind, json.dumps(config or {}, default=str), json.dumps(package_versions()),
             dt.datetime.now(dt.UTC).replace(tzinfo=None), os.getpid(), socket.gethostname(), token_rule],
        )
        return run_id

    def set_token_rule(self, run_id: str, token_rule: str) -> None:
        """The token rule (JSON) of a run started before it was known; every row the run writes refers to it."""
        self._exec("UPDATE runs SET token_rule = ? WHERE run_id = ?", [token_rule, run_id])

    def finish_run(self, run_id: str, status: str = "done") -> None:
        self._exec("UPDATE runs SET finished_at = ?, status = ? WHERE run_id = ?",
                   [dt.datetime.now(dt.UTC).replace(tzinfo=None), status, run_id])

    @contextmanager
    def run(self, kind: str, config: Mapping[str, Any] | None = None, token_rule: str | None = None) -> Iterator[str]:
        """A run whose writes and 'done' mark land in one transaction, or not at all.

        The 'running' row is committed first: an exception marks it 'failed' at once, a killed
        process leaves it for the next writer to mark 'failed' (see _fail_dead_runs).
        """
        run_id = self.start_run(kind, config, token_rule=token_rule)
        try:
            with self.transaction():
                yield run_id
                self.finish_run(run_id)
        except BaseException:
            self.finish_run(run_id, "failed")
            raise

    def _set_aside_old_examples(self) -> None:
        """feature_examples before the token rule had no `kind` in its primary key, which an upgrade
        cannot change: such a table is kept under another name and a new one is created."""
        cols = [r[0] for r in self.con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'feature_examples'").fetchall()]
        if cols and "kind" not in cols:
            self._exec("ALTER TABLE feature_examples RENAME TO feature_examples_before_token_rule")

    def _move_token_rules(self) -> None:
        """Older databases stored the token rule on every row (saes, features, story_means, experiments):
        each run's rule moves to its runs row, and those columns go."""
        for table in TOKEN_RULE_TABLES:
            if self.scalar("SELECT count(*) FROM information_schema.columns WHERE table_name = ? "
                           "AND column_name = 'token_rule'", [table]):
                self._exec(f"UPDATE runs SET token_rule = t.token_rule FROM (SELECT run_id, any_value(token_rule) "
                           f"AS token_rule FROM {table} WHERE token_rule IS NOT NULL GROUP BY run_id) t "
                           "WHERE runs.run_id = t.run_id AND runs.token_rule IS NULL")
                self._exec(f"ALTER TABLE {table} DROP COLUMN token_rule")

    def _fail_dead_runs(self) -> None:
        """Mark 'failed' the runs started on this host whose process is gone (killed mid-run)."""
        rows = self.sql("SELECT run_id, pid FROM runs WHERE status = 'running' AND host = ? AND pid IS NOT NULL",
                        [socket.gethostname()])
        for run_id, pid in rows:
            if not _process_alive(pid):
                self.finish_run(run_id, "failed")

    # ------------------------------------------------------------------ writing

    @contextmanager
    def transaction(self) -> Iterator["Database"]:
        """One transaction; a nested call joins the outer one, so `replace` works inside `run`."""
        if self._in_transaction:
            yield self
            return
        self.con.begin()
        self._in_transaction = True
        try:
            yield self
        except BaseException:
            self.con.rollback()
            raise
        finally:
            self._in_transaction = False
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

    def stream(self, sql: str, batch_rows: int = 65_536):
        """The rows of one read-only statement as a pyarrow RecordBatchReader: nothing is materialised.

        Writing statements are refused first (see check_read_only); errors arise as DatabaseError.
        """
        import pyarrow as pa

        check_read_only(self.con, sql)
        try:
            rel = self.con.sql(sql)
            if rel is None:
                return pa.RecordBatchReader.from_batches(pa.schema([]), [])
            reader = rel.to_arrow_reader(batch_rows)
        except duckdb.Error as e:
            raise query_failed(e) from e
        self._streams.append(reader)
        return pa.RecordBatchReader.from_batches(reader.schema, _as_database_errors(reader))

    def scalar(self, query: str, params: Sequence | None = None) -> Any:
        rows = self.sql(query, params)
        return rows[0][0] if rows else None

    def tables(self) -> list[tuple[str, int]]:
        names = [r[0] for r in self.con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' AND table_type = 'BASE TABLE' "
            "ORDER BY table_name").fetchall()]
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


# ---------------------------------------------------------------------------- the read-only guard


def _statement_kind(con: duckdb.DuckDBPyConnection, sql: str) -> str:
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as e:
        raise DatabaseError(f"cannot parse the query: {e}") from e
    if len(statements) != 1:
        raise DatabaseError(f"give exactly one statement, got {len(statements)}")
    return statements[0].type.name


def _explained(sql: str) -> str:
    """The statement an EXPLAIN wraps: what follows EXPLAIN, ANALYZE and an option list, comments skipped."""
    tokens = duckdb.tokenize(sql)
    ends = [pos for pos, _ in tokens[1:]] + [len(sql)]
    depth = 0
    for (pos, kind), end in zip(tokens, ends):
        text = sql[pos:end].strip().upper()
        if kind == duckdb.token_type.operator:
            depth += text.count("(") - text.count(")")
        elif kind != duckdb.token_type.comment and depth == 0 and text not in ("EXPLAIN", "ANALYZE", "ANALYSE"):
            return sql[pos:]
    return ""


def _pragma_name(sql: str) -> str:
    """The name a PRAGMA statement calls, comments skipped; '=' marks an assignment."""
    words = [sql[pos:end].strip() for (pos, kind), end in
             zip(duckdb.tokenize(sql), [p for p, _ in duckdb.tokenize(sql)[1:]] + [len(sql)])
             if kind != duckdb.token_type.comment]
    name = words[1].lower() if len(words) > 1 else ""
    return "=" if len(words) > 2 and words[2].startswith("=") else name


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse anything but one SELECT, a describing PRAGMA, or an EXPLAIN of those (EXPLAIN ANALYZE runs it).

    This holds with file reads allowed too: reading never means writing.
    """
    kind, allowed, where, body = _statement_kind(con, sql), READ_ONLY_STATEMENTS, "", sql
    if kind == "EXPLAIN":
        body = _explained(sql)
        kind, allowed, where = _statement_kind(con, body), EXPLAINABLE_STATEMENTS, " (under EXPLAIN)"
    if kind not in allowed:
        raise DatabaseError(f"refused: {kind} statements{where}: queries are read-only and run only SELECT, "
                            "PRAGMA, or EXPLAIN of those")
    if kind == "PRAGMA" and (name := _pragma_name(body)) not in READ_ONLY_PRAGMAS:
        what = "a PRAGMA assignment" if name == "=" else f"PRAGMA {name}"
        raise DatabaseError(f"refused: {what}{where} can write or change settings; the read-only PRAGMAs are "
                            f"{', '.join(sorted(READ_ONLY_PRAGMAS))}")


def query_failed(e: Exception) -> DatabaseError:
    hint = ("; reading other files is off (saekit query --allow-file-reads, or open_readonly(allow_files=True))"
            if "disabled by configuration" in str(e) else "")
    return DatabaseError(f"query failed: {e}{hint}")


def _as_database_errors(reader) -> Iterator:
    """The reader's batches, with a failure part-way through the query raised as a DatabaseError."""
    try:
        yield from reader
    except (duckdb.Error, OSError) as e:
        raise query_failed(e) from e


def fetch_dicts(db: Database, query: str, params: Sequence | None = None) -> list[dict[str, Any]]:
    """All rows of a query as dicts by column name (the browser's pages read them by name);
    a failure, such as a table an older database lacks, arises as a DatabaseError."""
    try:
        cur = db.con.execute(query, params or [])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]
    except duckdb.Error as e:
        raise DatabaseError(f"query failed: {e}") from e
