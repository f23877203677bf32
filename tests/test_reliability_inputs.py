"""Input the third reliability round found accepted silently or failing with a traceback: corpora,
SAE folders, compare's database and out folder, and export and query targets that cannot be written."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from saekit.cli import app
from saekit.corpus import CorpusError, load_corpus
from saekit.sae import SAEError, build_training_sae, load_sae, save_sae

runner = CliRunner()


def cli_fails_clearly(args, *expected):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "Traceback" not in result.output
    for piece in expected:
        assert piece in " ".join(result.output.split()), result.output
    return result.output


# ---------------------------------------------------------------------------- corpora


def test_duplicate_ids_are_refused_before_the_model_loads(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": f"text {n}", "emotion": "calm"}) + "\n"
                            for n, i in enumerate(["a", "b", "a"])))
    with pytest.raises(CorpusError, match=r"ids \['a'\] appear more than once"):
        load_corpus(path)
    cli_fails_clearly(["harvest", "--model", "tiny", "--hook", "blocks.1.hook_resid_post", "--corpus", path,
                       "--out", tmp_path / "h"], "appear more than once")
    assert not (tmp_path / "h").exists()


def test_a_csv_with_a_byte_order_mark_keeps_its_id_column(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes("\ufeffid,text,emotion\nx1,some text,calm\nx2,more text,afraid\n".encode())
    assert [r.id for r in load_corpus(path)] == ["x1", "x2"]


def test_a_lone_surrogate_is_refused_by_corpus_stats_and_harvest(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "a", "text": "fine", "emotion": "calm"}\n{"id": "b", "text": "bad \\ud800 here", "emotion": "calm"}\n')
    for args in (["corpus", "stats", path], ["harvest", "--model", "tiny", "--hook", "blocks.1.hook_resid_post",
                                             "--corpus", path, "--out", tmp_path / "h"]):
        cli_fails_clearly(args, f"{path}:2", "not valid Unicode")
    assert not (tmp_path / "h").exists()


# ---------------------------------------------------------------------------- SAE folders


def saved_sae(tmp_path, **cfg_changes):
    folder = save_sae(build_training_sae("topk", 16, 32, k=4, metadata={"hook_name": "blocks.1.hook_resid_post",
                                                                         "model_name": "tiny"}), tmp_path / "sae")
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg.update(cfg_changes)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize("k,words", [(0, "k = 0; a TopK SAE keeps at least 1"), (64, "k = 64 is more than d_sae = 32")])
def test_sae_load_refuses_an_impossible_k(tmp_path, k, words):
    folder = saved_sae(tmp_path, k=k)
    with pytest.raises(SAEError, match=words):
        load_sae(folder)
    cli_fails_clearly(["sae", "load", folder], words)


def test_sae_load_refuses_absurd_weights(tmp_path):
    folder = saved_sae(tmp_path)
    weights = load_file(str(folder / "sae_weights.safetensors"))
    weights["W_dec"][0, 0] = 1e38
    save_file(weights, str(folder / "sae_weights.safetensors"))
    cli_fails_clearly(["sae", "load", folder], "'W_dec' holds values up to 1e+38")
    assert torch.isfinite(load_file(str(folder / "sae_weights.safetensors"))["W_enc"]).all()


# ---------------------------------------------------------------------------- compare, exports and query targets


def test_compare_on_a_missing_database_creates_nothing(tmp_path):
    cli_fails_clearly(["compare", "m@10", "m@20", "--db", tmp_path / "missing.duckdb", "--out", tmp_path / "c"],
                      "no database at")
    assert not (tmp_path / "missing.duckdb").exists() and not (tmp_path / "c").exists()


def test_compare_out_that_is_a_file_is_refused_before_compute(tmp_path, monkeypatch):
    import saekit.compare

    monkeypatch.setattr(saekit.compare, "compare", lambda *a, **k: pytest.fail("compared before checking --out"))
    (tmp_path / "c").write_text("mine")
    cli_fails_clearly(["compare", "m@10", "m@20", "--out", tmp_path / "c"], "is a file")
    assert (tmp_path / "c").read_text() == "mine"


@pytest.fixture
def db(tmp_path):
    from saekit.db import Database

    path = tmp_path / "f.duckdb"
    with Database(path) as d:
        d.insert("emotions", [{"emotion": "calm"}])
    return path


def test_outputs_under_a_file_are_one_clear_message(db, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    under = blocker / "sub" / "out"
    cli_fails_clearly(["browse", "--db", db, "--export", under], "afile is a file")
    cli_fails_clearly(["export", "vectors", under, "--db", db], "afile is a file")
    cli_fails_clearly(["export", "features", under, "--db", db], "afile is a file")
    cli_fails_clearly(["query", "SELECT * FROM emotions", "--db", db, "--csv", under / "r.csv"], "afile is a file")
    assert blocker.read_text() == "x"


def test_export_into_the_current_folder_is_refused_not_a_traceback(db, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    cli_fails_clearly(["browse", "--db", db, "--export", "."], "refusing to overwrite")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_read_only_target_is_refused_before_any_work(db, tmp_path, monkeypatch):
    """The survey's read-only filesystem, as os.access reports it (root writes through chmod here)."""
    import os

    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if str(p).startswith(str(tmp_path / "ro")) else real(p, mode, **k))
    (tmp_path / "ro").mkdir()
    for args in (["browse", "--db", db, "--export", tmp_path / "ro" / "site"],
                 ["export", "vectors", tmp_path / "ro" / "v", "--db", db],
                 ["query", "SELECT * FROM emotions", "--db", db, "--csv", tmp_path / "ro" / "r.csv"]):
        cli_fails_clearly(args, "read-only filesystem or no permission")
    assert list((tmp_path / "ro").iterdir()) == []
