"""analysis/compare_databases.py: two databases with the same results read as the same, float noise
and JSON key order included; a real difference, a missing row or a lost column does not."""

import json
import runpy
import sys
from pathlib import Path

import pytest

from saekit.db import Database

SCRIPT = Path(__file__).parents[1] / "analysis" / "compare_databases.py"


def make(path: Path, valence: float, metrics: dict, extra_story: bool = False) -> Path:
    with Database(path) as db:
        db.insert("emotions", [{"emotion": "calm", "cluster": "peace", "valence": valence, "arousal": 0.1},
                               {"emotion": "afraid", "cluster": "fear", "valence": -0.7, "arousal": 0.8}])
        db.insert("runs", [{"run_id": f"r-{path.stem}", "kind": "rank", "config": json.dumps(metrics),
                            "versions": "{}", "status": "done", "started_at": "2026-11-29 00:00:00"}])
        db.insert("saes", [{"sae_id": "s", "model_id": "tiny", "hook": "blocks.2.hook_resid_post",
                            "metrics": json.dumps(metrics)}])
        if extra_story:
            db.insert("emotions", [{"emotion": "sad", "cluster": "grief", "valence": -0.5, "arousal": 0.2}])
    return path


def compare(a: Path, b: Path, capsys, *options: str) -> tuple[int, str]:
    sys.argv = [str(SCRIPT), str(a), str(b), *options]
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    return done.value.code, capsys.readouterr().out


def test_float_noise_and_json_key_order_are_the_same(tmp_path, capsys):
    a = make(tmp_path / "a.duckdb", 0.6, {"ev": 0.8, "l0": 32.0})
    b = make(tmp_path / "b.duckdb", 0.6 + 1e-9, {"l0": 32.0, "ev": 0.8 + 1e-9})
    code, out = compare(a, b, capsys)
    assert code == 0 and "0 shared table(s) differ" in out


def test_a_changed_value_or_a_missing_row_differs(tmp_path, capsys):
    a = make(tmp_path / "a.duckdb", 0.6, {"ev": 0.8})
    code, out = compare(a, make(tmp_path / "b.duckdb", 0.5, {"ev": 0.8}), capsys)
    assert code == 1 and "emotions" in out and "column valence" in out
    code, out = compare(a, make(tmp_path / "c.duckdb", 0.6, {"ev": 0.7}), capsys)
    assert code == 1 and "column metrics" in out
    code, out = compare(a, make(tmp_path / "d.duckdb", 0.6, {"ev": 0.8}, extra_story=True), capsys)
    assert code == 1 and "2 rows before, 3 after" in out


def test_an_ignored_column_is_left_out_and_said(tmp_path, capsys):
    a = make(tmp_path / "a.duckdb", 0.6, {"ev": 0.8})
    b = make(tmp_path / "b.duckdb", 0.5, {"ev": 0.8})
    code, out = compare(a, b, capsys, "--ignore", "emotions.valence")
    assert code == 0 and "not compared: emotions.valence" in out
    code, out = compare(a, b, capsys, "--ignore", "saes.valence")   # another table's column of that name counts
    assert code == 1 and "column valence" in out
