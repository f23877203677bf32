"""The feature database: the only package that imports duckdb, and the only place SQL is written.

    connection.py  Database (runs, transactions, replace), opening and errors, the read-only guard
    user_sql.py    user SQL (saekit query, the browser's SQL box, saekit.open_db): sandboxed, streamed
    ids.py         the one rule naming an SAE (sae_id_of) and a corpus (corpus_id_of)
    ranking.py     the writes of a ranking (saekit rank), table by table, scope by scope
    features.py    typed reads of features, their statistics, emotion vectors and the stored geometry
    summaries.py   reads that summarise a ranking across tables (lens checks, probes, geometry) for the write-up
    browse.py      the browser's reads, one function per page fact
    frames.py      the notebook handle's questions (saekit.open_db), answered as DataFrames
    experiments.py an experiment and its results
    schema.sql     every table and view, documented in analysis/SCHEMA.md

A new table: its CREATE in schema.sql, its section in analysis/SCHEMA.md, and its reads and
writes as functions in the module of the stage that owns it. A new feature x emotion statistic is
not a schema edit: it is declared in saekit/feature_stats.py, and schema_sql() writes its column in.
A run's token rule is stored once, in runs.token_rule; rows refer to it by run_id.
"""

from saekit.db.connection import (  # noqa: F401
                                  DUCKDB_MAGIC,
                                  EXPLAINABLE_STATEMENTS,
                                  READ_ONLY_STATEMENTS,
                                  SANDBOX,
                                  Database,
                                  DatabaseBusy,
                                  DatabaseError,
                                  check_database_path,
                                  check_read_only,
                                  default_path,
                                  fetch_dicts,
                                  query_failed,
                                  schema_sql,
)
from saekit.db.ids import SHIPPED, corpus_id_of, sae_id_of  # noqa: F401
from saekit.db.user_sql import EXPORT_FORMATS, FRAME_KINDS, head, open_readonly, query_frame, read_only_query, write_batches  # noqa: F401
