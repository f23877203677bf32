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


def test_database_rows_and_the_size_figure_come_from_the_studies_rows(tiny_study, tmp_path):
    import duckdb

    one = tiny_study / "study"
    db = tmp_path / "copy.duckdb"
    shutil.copy(tiny_study / "study.duckdb", db)
    with duckdb.connect(str(db)) as con:
        probe = con.execute("SELECT accuracy FROM probe_results WHERE method = 'vector_projection' "
                            "AND hook = 'blocks.2.hook_resid_post'").fetchone()[0]
        pcs = con.execute("SELECT predictor, r FROM style_geometry WHERE hook = 'blocks.2.hook_resid_post' "
                          "AND target = 'valence_sign' ORDER BY predictor").fetchall()
        model = con.execute("SELECT DISTINCT model_id FROM probe_results").fetchone()[0]
        # intervals and the corpus-only baseline come from `saekit compare`'s row; one with known values stands in
        sides = {"a": {"probes": [{"method": "vector_projection", "accuracy": probe, "ci_lo": 0.01, "ci_hi": 0.99}]},
                 "baseline": {"probes": [{"method": "lexical_nearest_mean", "accuracy": 0.123, "ci_lo": 0.1,
                                          "ci_hi": 0.15}]}}
        con.execute("INSERT INTO comparisons (comparison_id, side_a, side_b, corpus_id, metrics, created_at) "
                    "VALUES ('compare-x', ?, 'other@x', 'shipped', ?, now())",
                    [f"{model}@blocks.2.hook_resid_post", json.dumps({"sides": sides})])
    figure = tmp_path / "sizes.png"
    lines = side_by_side.table([one], db, figure).splitlines()

    assert f"| vector probe accuracy [95% CI], SAE layer | {probe:.3f} [0.010, 0.990] |" in lines
    assert "| lexical TF-IDF probe (corpus only, same test stories) | 0.123 [0.100, 0.150] |" in lines
    geometry = next(line for line in lines if line.startswith("| PCs vs clusters' valence sign (r), SAE layer |"))
    assert pcs and all(f"{name} {r:+.2f}" in geometry for name, r in pcs)
    best = max(pcs, key=lambda p: abs(p[1]))[0]
    assert geometry.endswith(f"best {best} |")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_implicit_and_impossible_rows_read_the_finding_and_the_effects(tmp_path):
    import duckdb

    study = tmp_path / "s"
    study.mkdir()
    (study / "study_config.json").write_text(json.dumps({"model": "m", "hook": "blocks.1.hook_resid_post"}))
    finding = ("Implicit emotion (argmax, centred on the train mean): the emotion vectors classify the implicit "
               "prompts at 0.300 [0.133, 0.467] over 40 emotions (chance 0.025; random 0.027, range [0.000, 0.067])")
    (study / "steps.json").write_text(json.dumps({
        "experiment implicit": {"seconds": 1.0, "summary": {"finding": finding}},
        "experiment impossible_task": {"seconds": 2.0, "summary": {"experiment_id": "e1", "finding": "x"}}}))
    db = tmp_path / "d.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE probe_results (run_id VARCHAR, model_id VARCHAR, hook VARCHAR, method VARCHAR, "
                    "accuracy DOUBLE, ci_lo DOUBLE, ci_hi DOUBLE)")
        con.execute("CREATE TABLE style_geometry (model_id VARCHAR, hook VARCHAR, predictor VARCHAR, target VARCHAR, "
                    "r DOUBLE, ci_lo DOUBLE, ci_hi DOUBLE, p_value DOUBLE)")
        con.execute("CREATE TABLE comparisons (side_a VARCHAR, side_b VARCHAR, metrics JSON, created_at TIMESTAMP)")
        con.execute("CREATE TABLE rating_geometry (model_id VARCHAR, hook VARCHAR, target VARCHAR, predictor VARCHAR, "
                    "r DOUBLE, ci_lo DOUBLE, ci_hi DOUBLE)")
        con.execute("CREATE TABLE experiment_effects (experiment_id VARCHAR, condition VARCHAR, strength DOUBLE, "
                    "metric VARCHAR, effect_minus_control DOUBLE, diff_lo DOUBLE, diff_hi DOUBLE, n_prompts INTEGER)")
        con.execute("INSERT INTO experiment_effects VALUES ('e1', 'calm', 0.1, 'margin_mean', 0.0233, 0.0026, 0.044, 16),"
                    "('e1', 'calm', 0.1, 'margin_sum', 9.0, 1.0, 2.0, 16), ('e2', 'calm', 0.1, 'margin_mean', 5.0, 4.0, 6.0, 16)")
    lines = side_by_side.table([study], db).splitlines()
    assert "| implicit prompts: vector accuracy [95% CI] (chance / random) | 0.300 [0.133, 0.467] (0.025 / 0.027) |" in lines
    assert "| impossible task: calm +0.1, margin beyond random [95% CI] (prompts) | +0.0233 [+0.0026, +0.0440] (16) |" in lines


def test_a_full_impossible_task_run_stands_for_the_studys_subset(tmp_path):
    """Where the database holds an `impossible_task_full` run on the study's model and hook, the table
    reads its effects (24 prompts, every strength), not the study's subset; another hook's run is ignored."""
    import duckdb

    study = tmp_path / "s"
    study.mkdir()
    hook = "blocks.1.hook_resid_post"
    (study / "study_config.json").write_text(json.dumps({"model": "m", "hook": hook}))
    (study / "steps.json").write_text(json.dumps({
        "experiment impossible_task": {"seconds": 2.0, "summary": {"experiment_id": "sub", "finding": "x"}}}))
    db = tmp_path / "d.duckdb"
    with duckdb.connect(str(db)) as con:
        for ddl in ("probe_results (run_id VARCHAR, model_id VARCHAR, hook VARCHAR, method VARCHAR)",
                    "style_geometry (model_id VARCHAR, hook VARCHAR, predictor VARCHAR, target VARCHAR, r DOUBLE, "
                    "ci_lo DOUBLE, ci_hi DOUBLE, p_value DOUBLE)",
                    "comparisons (side_a VARCHAR, side_b VARCHAR, metrics JSON, created_at TIMESTAMP)",
                    "rating_geometry (model_id VARCHAR, hook VARCHAR, target VARCHAR, predictor VARCHAR, r DOUBLE, "
                    "ci_lo DOUBLE, ci_hi DOUBLE)",
                    "experiment_effects (experiment_id VARCHAR, condition VARCHAR, strength DOUBLE, metric VARCHAR, "
                    "effect_minus_control DOUBLE, diff_lo DOUBLE, diff_hi DOUBLE, n_prompts INTEGER)",
                    "experiments (experiment_id VARCHAR, name VARCHAR, model_id VARCHAR, spec JSON, created_at TIMESTAMP)"):
            con.execute(f"CREATE TABLE {ddl}")
        con.execute("INSERT INTO experiments VALUES "
                    "('full', 'impossible_task_full', 'm', ?, TIMESTAMP '2026-12-07 10:00:00'), "
                    "('other', 'impossible_task_full', 'm', ?, TIMESTAMP '2026-12-07 11:00:00')",
                    [json.dumps({"spec": {"hook": hook}}), json.dumps({"spec": {"hook": "blocks.0.hook_resid_post"}})])
        con.execute("INSERT INTO experiment_effects VALUES "
                    "('sub', 'calm', 0.1, 'margin_mean', 0.02, 0.01, 0.03, 8), "
                    "('full', 'calm', 0.1, 'margin_mean', 0.05, 0.04, 0.06, 24), "
                    "('full', 'calm', -0.05, 'margin_mean', -0.01, -0.02, 0.0, 24), "
                    "('other', 'calm', 0.1, 'margin_mean', 9.0, 8.0, 10.0, 24)")
    lines = side_by_side.table([study], db).splitlines()
    assert "| impossible task: calm +0.1, margin beyond random [95% CI] (prompts) | +0.0500 [+0.0400, +0.0600] (24) |" in lines
    assert "| impossible task: calm -0.05, margin beyond random [95% CI] (prompts) | -0.0100 [-0.0200, +0.0000] (24) |" in lines
    assert not any("(8) |" in line for line in lines)


def test_the_figure_draws_each_vector_at_its_strongest_strength_each_way():
    def run(condition, strength):
        return {f"{condition} {strength:+g}": {"condition": condition, "strength": strength}}

    small = run("calm", 0.1) | run("desperate", 0.1)
    large = {k: v for c in ("calm", "desperate") for s in (0.05, 0.1, -0.05, -0.1) for k, v in run(c, s).items()}
    assert side_by_side.strongest_settings([small, large]) == ["calm +0.1", "calm -0.1", "desperate +0.1",
                                                               "desperate -0.1"]
    assert side_by_side.strongest_settings([run("calm", -0.05)]) == ["calm -0.05"]
