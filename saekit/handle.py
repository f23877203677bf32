"""A read-only handle on the feature database for Python users: every answer is a DataFrame.

`saekit.open_db(path)` opens the file through `db.open_readonly`, the sandbox `saekit query` uses:
nothing the handle runs can write the database or any other file, and `sql()` refuses what the
command line refuses. Each method is one SQL statement over a table or view of analysis/SCHEMA.md,
so what a notebook sees is what `saekit query` sees. Frames are DuckDB's own (`.df()`, or `.pl()`
with frames="polars").
"""

from __future__ import annotations

from pathlib import Path

from saekit.db import Database, DatabaseError, open_readonly, query_frame
from saekit.db import frames as F


def open_db(path: str | Path | None = None, frames: str = "pandas", allow_file_reads: bool = False) -> "FeatureDB":
    """A read-only handle on the feature database (default artifacts/saekit.duckdb or $SAEKIT_DB).

    Close it (or use `with`) before a command writes to the same file: DuckDB lets one process
    write only while no other holds the file open.
    """
    return FeatureDB(open_readonly(path, allow_files=allow_file_reads), frames)


class FeatureDB:
    """Questions a notebook asks of the feature database, answered as pandas (or polars) frames."""

    def __init__(self, db: Database, frames: str = "pandas"):
        self.db, self.frames = db, frames

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "FeatureDB":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def sql(self, query: str, params: list | None = None):
        """Your own read-only statement (one SELECT, PRAGMA or EXPLAIN of those), checked like `saekit query`."""
        return self._ask(query_frame, query, params)

    def _ask(self, question, *args):
        """A frame from one of saekit.db.frames' questions (or query_frame); a missing view is explained."""
        try:
            return question(self.db, *args, self.frames)
        except DatabaseError as e:
            if "top_features" in str(e) or "experiment_effects" in str(e) or "latest_runs" in str(e):
                raise DatabaseError(f"{e}; this database predates saekit's views: any command that writes to "
                                    "it (saekit rank, saekit experiment run) adds them") from e
            raise

    def top_features(self, emotion: str, n: int = 10, sae: str | None = None):
        """The n most selective features for an emotion (per SAE), with logit lens and top story."""
        if n < 1:
            raise DatabaseError(f"n must be at least 1, got {n}")
        return self._known(self._ask(F.top_features, emotion, n, sae), "emotion", emotion)

    def feature(self, idx: int, sae: str | None = None):
        """One feature's statistics for every emotion, most selective first, with its lens and top story."""
        frame = self._ask(F.feature, idx, sae)
        if len(frame) == 0:
            raise DatabaseError(f"feature {idx} is not in {self.db.path}"
                                + (f" for SAE {sae}" if sae else "") + f"; SAEs and their sizes: {F.sae_sizes(self.db)}")
        return frame

    def vectors(self, hook: str):
        """The emotion vectors at a hook (one row per model, corpus and emotion; `vector` holds the floats)."""
        return self._known(self._ask(F.vectors, hook), "hook", hook)

    def experiment(self, name: str):
        """An experiment's effects vs controls (experiment_effects) by id, run id or name (its latest run)."""
        return self._known(self._ask(F.experiment, name), "experiment", name)

    def _known(self, frame, what: str, value: str):
        """The frame; when it is empty because `value` names nothing, a DatabaseError listing what exists.
        Checked only on an empty answer, so a good question costs one query."""
        if len(frame) == 0:
            known = F.known(self.db, what)
            if value not in known:
                raise DatabaseError(f"no {what} {value!r} in {self.db.path}; known: {known[:20]}"
                                    + (f" ... ({len(known)} in all)" if len(known) > 20 else ""))
        return frame
