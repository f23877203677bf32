"""Statistics are declared once (saekit/feature_stats.py): a new one reaches the table, rank's rows, SCHEMA.md and the browser."""

from pathlib import Path

import pytest
from conftest import rank_tiny
from starlette.testclient import TestClient

from saekit import feature_stats as St
from saekit.browse import create_app
from saekit.db import read_only_query

ROOT = Path(__file__).resolve().parents[1]


def test_schema_md_statistics_are_generated_from_the_declarations():
    text = (ROOT / "analysis" / "SCHEMA.md").read_text()
    assert St.render_schema_doc(text) == text, "run `python -m saekit.feature_stats` to regenerate analysis/SCHEMA.md"


def test_a_declaration_is_checked():
    with pytest.raises(ValueError, match="SQL type"):
        St.Statistic("odd", "TEXT", "a string", lambda part: part["sel"].auroc)
    with pytest.raises(ValueError, match="exists already"):
        St.register(St.Statistic("auroc", "DOUBLE", "again", lambda part: part["sel"].auroc))


@pytest.fixture
def toy_statistic():
    """A statistic registered from inside the test: twice the AUROC, shown in the browser."""
    stat = St.register(St.Statistic("toy_double_auroc", "DOUBLE", "twice the AUROC (a test's own statistic)",
                                    lambda part: 2 * part["sel"].auroc, heading="toy x2"))
    yield stat
    St.unregister(stat.name)


def test_a_new_statistic_is_one_declaration_and_one_register_line(toy_statistic, tiny_model, tmp_path):
    ranked = rank_tiny(tiny_model, tmp_path, ["calm", "afraid"])
    rows = read_only_query("SELECT toy_double_auroc, auroc FROM feature_emotion_stats", ranked["db"]).to_pylist()
    assert rows and all(r["toy_double_auroc"] == pytest.approx(2 * r["auroc"]) for r in rows)   # rank wrote it
    view = read_only_query("SELECT toy_double_auroc FROM top_features LIMIT 1", ranked["db"]).column_names
    assert view == ["toy_double_auroc"]
    doc = St.render_schema_doc((ROOT / "analysis" / "SCHEMA.md").read_text())
    assert "| toy_double_auroc | DOUBLE | twice the AUROC (a test's own statistic) |" in doc
    assert "| toy_double_auroc | DOUBLE | from feature_emotion_stats |" in doc
    page = TestClient(create_app(ranked["db"]), base_url="http://127.0.0.1:8765").get("/emotion/calm.html")
    assert page.status_code == 200 and "<th>toy x2</th>" in page.text


def test_unregistered_statistics_leave_the_declarations_as_they_were(tmp_path):
    assert "toy_double_auroc" not in St.STATISTICS
    assert [c["heading"] for c in St.browser_columns()] == ["AUROC", "Cohen's d", "q (BH)", "mean in / out",
                                                             "fires in / out", "top-story precision"]
