"""analysis/side_by_side.py: the README's two-model table comes from the study folders' own files."""

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "analysis"))

import side_by_side  # noqa: E402


def test_each_column_reads_its_own_study(tiny_study, tmp_path):
    one = tiny_study / "study"
    two = tmp_path / "other"
    shutil.copytree(one, two, ignore=shutil.ignore_patterns("activations", "experiments", "checkpoints"))
    summary = json.loads((one / "rank_summary.json").read_text())
    changed = dict(summary, **{"SAE top-feature probe accuracy @ blocks.2.hook_resid_post": 0.987654})
    (two / "rank_summary.json").write_text(json.dumps(changed))
    cfg = json.loads((two / "study_config.json").read_text())
    (two / "study_config.json").write_text(json.dumps(dict(cfg, model="other-model")))

    lines = side_by_side.table([one, two]).splitlines()
    assert lines[0] == "| | tiny | other-model |"
    row = next(line for line in lines if line.startswith("| SAE top-feature probe accuracy |"))
    mine = summary["SAE top-feature probe accuracy @ blocks.2.hook_resid_post"]
    assert row == f"| SAE top-feature probe accuracy | {mine:.3f} | 0.988 |"
    vector = next(line for line in lines if line.startswith("| vector probe accuracy, SAE layer |"))
    assert f"{summary['vector probe accuracy @ blocks.2.hook_resid_post']:.3f} (layer 2)" in vector
    steps = json.loads((one / "steps.json").read_text())
    total = round(sum(v["seconds"] for v in steps.values()))
    assert f"({total} s)" in next(line for line in lines if line.startswith("| time: whole study"))
    finding = steps["experiment tiny_probes"]["summary"]["finding"]
    assert any(line.startswith(f"| finding: tiny_probes | {finding} |") for line in lines)


def test_a_missing_file_reads_as_na(tmp_path):
    (tmp_path / "study_config.json").write_text(json.dumps({"model": "m", "hook": "blocks.1.hook_resid_post"}))
    lines = side_by_side.table([tmp_path]).splitlines()
    assert "| SAE explained variance (held-out) | n/a |" in lines
