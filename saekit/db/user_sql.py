"""User SQL: `saekit query`, the browser's SQL box and `saekit.open_db` run their own statements here.

Every statement passes `check_read_only` on a handle opened with the SANDBOX settings, so
nothing a user writes can change the database or touch other files; results stream in batches
and can be written to csv, json or parquet in one pass.
"""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from pathlib import Path
from typing import Mapping, Sequence

import duckdb

from saekit.artifacts import OutputError, check_writable
from saekit.db.connection import SANDBOX, Database, DatabaseError, check_read_only, query_failed


def open_readonly(path: str | Path | None = None, allow_files: bool = False, memory_limit: str = "") -> Database:
    """The handle for user SQL (`saekit query`, notebooks, the browser): nothing it runs can write.

    The file is opened read-only with the SANDBOX settings. allow_files lets queries read other
    files (read_csv, glob); statements that write files stay refused by `Database.stream`.
    memory_limit (DuckDB's, e.g. "1GB") bounds what one query may hold; empty: DuckDB's default.
    """
    config: dict[str, object] = dict(SANDBOX, enable_external_access=allow_files)
    if memory_limit:
        config["memory_limit"] = memory_limit
    return Database(path, read_only=True, config=config)


def read_only_query(sql: str, path: str | Path | None = None, allow_files: bool = False):
    """Run one read-only statement and return all its rows as a pyarrow Table (see open_readonly)."""
    with open_readonly(path, allow_files) as db:
        return db.stream(sql).read_all()


def head(reader, n: int):
    """The first n rows of a stream as a pyarrow Table, and whether more follow; reads no further."""
    import pyarrow as pa

    batches, rows = [], 0
    for batch in reader:
        batches.append(batch)
        rows += batch.num_rows
        if rows > n:
            break
    return pa.Table.from_batches(batches, schema=reader.schema).slice(0, n), rows > n


EXPORT_FORMATS = ("csv", "json", "parquet")


class _JsonRecordsWriter:
    """A JSON list of row objects, written batch by batch."""

    def __init__(self, path: Path, schema) -> None:
        self.f = open(path, "w", encoding="utf-8")
        self.sep = "[\n"

    def write_batch(self, batch) -> None:
        for row in batch.to_pylist():
            self.f.write(self.sep + json.dumps(row, default=str))
            self.sep = ",\n"

    def __enter__(self) -> "_JsonRecordsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.f.write("[]\n" if self.sep == "[\n" else "\n]\n")
        self.f.close()


def _writer(fmt: str, path: Path, schema):
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    return {"csv": pacsv.CSVWriter, "json": _JsonRecordsWriter, "parquet": pq.ParquetWriter}[fmt](path, schema)


def _export_path(path: str | Path) -> Path:
    """An export file's path, checked before any row is read: a folder is refused, missing parents made."""
    path = Path(path)
    if path.is_dir():
        raise DatabaseError(f"{path} is a folder; give a file name for the result, e.g. {path / 'result.csv'}")
    try:
        check_writable(path, "output")
        path.parent.mkdir(parents=True, exist_ok=True)
    except OutputError as e:
        raise DatabaseError(str(e)) from None
    except OSError as e:
        raise DatabaseError(f"cannot create the folder {path.parent} for {path}: {e.strerror}") from None
    return path


def write_batches(reader, outputs: Mapping[str, str | Path]) -> int:
    """Stream a result into csv, json (records) or parquet files, all in one pass; returns the rows.

    Each file is written under a temporary name and renamed at the end, so a failed query leaves
    any previous file of that name as it was.
    """
    import pyarrow as pa

    unknown = set(outputs) - set(EXPORT_FORMATS)
    if unknown:
        raise DatabaseError(f"unknown output format {sorted(unknown)}; choose from {EXPORT_FORMATS}")
    paths = {fmt: _export_path(p) for fmt, p in outputs.items()}
    partial = {fmt: p.with_name(f".{p.name}.partial") for fmt, p in paths.items()}
    rows = 0
    try:
        with ExitStack() as stack:
            writers = [stack.enter_context(_writer(fmt, partial[fmt], reader.schema)) for fmt in paths]
            for batch in reader:
                for w in writers:
                    w.write_batch(batch)
                rows += batch.num_rows
        for fmt, p in paths.items():
            os.replace(partial[fmt], p)
    except (OSError, pa.ArrowException) as e:
        hint = "; CSV holds no list or struct columns: use --json or --parquet" if "Unsupported Type" in str(e) else ""
        raise DatabaseError(f"cannot write {', '.join(map(str, paths.values()))}: {e}{hint}") from e
    finally:
        for tmp in partial.values():
            tmp.unlink(missing_ok=True)
    return rows


FRAME_KINDS = ("pandas", "polars")


def query_frame(db: Database, sql: str, params: Sequence | None = None, kind: str = "pandas"):
    """One read-only statement's rows as a pandas or polars DataFrame (DuckDB's own .df() / .pl()).

    The statement passes the same check as `saekit query` (check_read_only) before it runs.
    """
    if kind not in FRAME_KINDS:
        raise DatabaseError(f"unknown frame kind {kind!r}; choose from {FRAME_KINDS}")
    check_read_only(db.con, sql)
    try:
        rel = db.con.sql(sql, params=params or None)
        return rel.df() if kind == "pandas" else rel.pl()
    except duckdb.Error as e:
        raise query_failed(e) from e
    except ModuleNotFoundError as e:   # .pl() without polars installed
        raise DatabaseError(f"polars frames need the polars package (pip install polars): {e}") from e
