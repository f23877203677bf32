"""The feature x emotion statistics, each declared once: name, SQL type, how it is computed, what it means.

Everything else follows from these declarations: the columns of `feature_emotion_stats` (and of the
`top_features` view), the rows `saekit rank` writes, the table's entries in analysis/SCHEMA.md
(`python -m saekit.feature_stats` rewrites them) and the columns of the browser's emotion page.

A new statistic is one declaration (a `Statistic` in its own file or below) and one `register` line
at the bottom of this module. Its `compute` receives the SAE evidence of a ranking (the dict
saekit.rank's `sae_evidence` returns: `sel` the Selectivity, `enc` the encoded documents,
`precision` the top-story precision, ...) and returns an emotions x features tensor. This module
imports nothing heavy, so the database layer can read the declarations; a `compute` that needs
torch imports it inside.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

from saekit.errors import SaekitError

SQL_TYPES = ("DOUBLE", "INTEGER", "BIGINT", "BOOLEAN")


class StatisticError(SaekitError, ValueError):
    """A declaration cannot be registered (a name taken), or SCHEMA.md lacks a generated block."""


@dataclass(frozen=True)
class Statistic:
    """One column of `feature_emotion_stats`: a number per feature and emotion."""
    name: str
    sql_type: str
    meaning: str
    """One line for analysis/SCHEMA.md."""
    compute: Callable[[Mapping[str, Any]], Any]
    """SAE evidence of a ranking -> an emotions x features tensor (E x F, the Selectivity's layout)."""
    heading: str | None = None
    """The browser's column heading; statistics sharing a heading share a cell ("a / b"). None: not a
    column of its own in the browser, nor in the top_features view."""
    fmt: Literal["num", "pct"] = "num"
    """How the browser prints it."""

    def __post_init__(self):
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"statistic name {self.name!r}: use lower-case letters, digits and _")
        if self.sql_type not in SQL_TYPES:
            raise ValueError(f"statistic {self.name}: SQL type {self.sql_type!r} is not one of {SQL_TYPES}")


STATISTICS: dict[str, Statistic] = {}
"""Name -> declaration, in column order; filled by the `register` lines at the bottom of this module."""

KEY_COLUMNS = ("sae_id", "corpus_id", "feature", "emotion")


def register(stat: Statistic) -> Statistic:
    if stat.name in STATISTICS or stat.name in KEY_COLUMNS + ("run_id",):
        raise StatisticError(f"a statistic or column named {stat.name!r} exists already")
    STATISTICS[stat.name] = stat
    return stat


def unregister(name: str) -> None:
    """Forget a statistic (tests that register their own); its column stays in databases that have it."""
    STATISTICS.pop(name, None)


def shown() -> list[Statistic]:
    """The statistics with a browser column, which the top_features view also carries."""
    return [s for s in STATISTICS.values() if s.heading is not None]


def browser_columns() -> list[dict[str, Any]]:
    """The emotion page's statistic columns: heading, the statistics in its cell, and their format."""
    columns: list[dict[str, Any]] = []
    for s in shown():
        if columns and columns[-1]["heading"] == s.heading:
            columns[-1]["names"].append(s.name)
        else:
            columns.append({"heading": s.heading, "names": [s.name], "fmt": s.fmt})
    return columns


def stat_rows(part: Mapping[str, Any]) -> dict[str, list]:
    """Every statistic's values, flattened emotion-major (row e * F + f), as rank writes them."""
    return {s.name: s.compute(part).flatten().tolist() for s in STATISTICS.values()}


# ---------------------------------------------------------------------------- SQL and SCHEMA.md


def column_sql() -> str:
    """The statistics' lines of `CREATE TABLE feature_emotion_stats`."""
    return "".join(f"    {s.name:<15} {s.sql_type},\n" for s in STATISTICS.values())


def upgrade_sql() -> str:
    """A database made before a statistic was declared gets its column."""
    return "".join(f"ALTER TABLE feature_emotion_stats ADD COLUMN IF NOT EXISTS {s.name} {s.sql_type};\n"
                   for s in STATISTICS.values())


def view_sql(alias: str) -> str:
    """The shown statistics as the top_features view selects them."""
    return "".join(f"{alias}.{s.name}, " for s in shown())


def schema_doc_rows(view: bool = False) -> str:
    """The statistics' rows of analysis/SCHEMA.md: the table's, or the top_features view's."""
    stats = shown() if view else list(STATISTICS.values())
    return "".join(f"| {s.name} | {s.sql_type} | {'from feature_emotion_stats' if view else s.meaning} |\n"
                   for s in stats)


BLOCKS = {"statistics": False, "statistics in top_features": True}


def render_schema_doc(text: str) -> str:
    """SCHEMA.md's text with its generated blocks (between `<!-- NAME: generated ... -->` and
    `<!-- end NAME -->`) written from the declarations."""
    for name, view in BLOCKS.items():
        pattern = re.compile(rf"(<!-- {re.escape(name)}: generated[^\n]*-->\n)(.*?)(<!-- end {re.escape(name)} -->)",
                             re.S)
        if not pattern.search(text):
            raise StatisticError(f"SCHEMA.md has no generated block {name!r}")
        text = pattern.sub(lambda m: m.group(1) + schema_doc_rows(view) + m.group(3), text)
    return text


# ---------------------------------------------------------------------------- the declarations


def _sel(attr: str) -> Callable[[Mapping[str, Any]], Any]:
    return lambda part: getattr(part["sel"], attr)


register(Statistic("selectivity_rank", "INTEGER", "1 = most selective feature for the emotion (AUROC, then d)",
                   _sel("rank")))
register(Statistic("auroc", "DOUBLE", "probability a random in-story outscores a random out-story",
                   _sel("auroc"), heading="AUROC"))
register(Statistic("cohens_d", "DOUBLE", "standardised mean difference (pooled SD)", _sel("cohens_d"),
                   heading="Cohen's d"))
register(Statistic("q_value", "DOUBLE", "Benjamini-Hochberg over all feature x emotion pairs", _sel("q_value"),
                   heading="q (BH)"))
register(Statistic("mean_in", "DOUBLE", "mean pooled activation on the emotion's stories", _sel("mean_in"),
                   heading="mean in / out"))
register(Statistic("mean_out", "DOUBLE", "mean on the other emotions' stories", _sel("mean_out"),
                   heading="mean in / out"))
register(Statistic("rate_in", "DOUBLE", "fraction of the emotion's stories where the feature fires", _sel("rate_in"),
                   heading="fires in / out", fmt="pct"))
register(Statistic("rate_out", "DOUBLE", "same on the other stories", _sel("rate_out"),
                   heading="fires in / out", fmt="pct"))
register(Statistic("top_story_precision", "DOUBLE", "fraction of the feature's top-n stories (by the same pooled "
                   "mean, all splits) that carry this emotion", lambda part: part["precision"],
                   heading="top-story precision"))
register(Statistic("p_value", "DOUBLE", "two-sided Mann-Whitney U, normal approximation with tie correction",
                   _sel("p_value")))


if __name__ == "__main__":   # python -m saekit.feature_stats [SCHEMA.md]: rewrite the generated blocks
    doc = Path(sys.argv[1] if len(sys.argv) > 1 else "analysis/SCHEMA.md")
    doc.write_text(render_schema_doc(doc.read_text()))
