"""The embedded default model, for real: conversion, chat formatting, harvesting at layer 20."""

import re

import pytest
import torch

from saekit import model as M
from saekit.corpus import load_corpus
from saekit.harvest import Activations, HarvestConfig, harvest

pytestmark = pytest.mark.slow  # the real embedded model: left out by `make test-fast`


@pytest.fixture(scope="module")
def smol():
    return M.load_model(M.DEFAULT_MODEL)


def test_converted_folder_matches_gguf_logits():
    folder = M.embedded_model_folder()
    assert (folder / "model.safetensors").exists() and not list(folder.glob("*.bin"))
    gguf_model, tok = M.load_gguf_model()
    converted, _ = M.load_hf(folder)
    ids = tok("The quick brown fox jumps over the lazy dog because", return_tensors="pt").input_ids
    with torch.no_grad():
        ref = gguf_model(ids).logits
        got = converted(ids).logits
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert M.n_layers(converted) == 30 and M.d_model(converted) == 576


def test_chat_formatting_gives_sensible_answers(smol):
    tok = smol.tokenizer
    sad = M.generate(smol, tok, M.format_chat(tok, [{"role": "user", "content": "My dog died this morning. I can't stop crying."}]), 25)
    assert re.search(r"\b(sorry|loss|hear)\b", sad, re.I), sad
    fact = M.generate(smol, tok, M.format_chat(tok, [{"role": "user", "content": "What is the capital of France?"}]), 15)
    assert "Paris" in fact, fact


def test_harvest_embedded_model_at_two_thirds_depth(smol, tmp_path):
    records = load_corpus(emotions=["calm", "afraid"], include_neutral=False)[:6]
    cfg = HarvestConfig(hooks=["blocks.20.hook_resid_post"], out=str(tmp_path / "acts"), batch_size=3)
    acts = Activations.open(harvest(cfg, model=smol, records=records))
    pooled = acts.pooled("blocks.20.hook_resid_post")
    assert pooled.shape == (6, 576) and torch.isfinite(pooled).all()
    assert acts.manifest["n_layers"] == 30


REDUCED_SPEC = """
name = "reduced_probes"
task = "probes"
strengths = [0.5]
controls = 1
n_bootstrap = 200
[prompts]
limit = 3
words = ["afraid", "calm"]
[[conditions]]
name = "afraid_up"
kind = "steer"
emotion = "afraid"
"""


def test_reduced_study_on_embedded_model(tmp_path):
    """The main job's config, reduced to a corpus slice and a short training run, end to end."""
    import json

    from typer.testing import CliRunner

    from saekit.cli import app

    spec = tmp_path / "reduced_probes.toml"
    spec.write_text(REDUCED_SPEC)
    train = tmp_path / "train.toml"
    train.write_text('batch_size = 512\n'
                     'training_tokens = 16384\nlr = 1e-3\nnormalize_activations = "expected_average_only_in"\n'
                     'checkpoint_every = 16\neval_tokens = 4000\neval_docs = 6\nmax_tokens = 96\n'
                     '[sae]\narchitecture = "topk"\nexpansion_factor = 2\nk = 16\n')
    cfg = tmp_path / "study.toml"
    cfg.write_text("\n".join([
        'model = "smollm2-135m-instruct"', 'hook = "blocks.20.hook_resid_post"',
        'vector_hooks = ["blocks.10.hook_resid_post"]', f'out = "{tmp_path / "study"}"',
        f'db = "{tmp_path / "study.duckdb"}"', f'train_config = "{train}"',
        f'experiments = ["{spec}"]', "limit = 60", "max_tokens = 96", ""]))
    result = CliRunner().invoke(app, ["study", str(cfg)])
    assert result.exit_code == 0, result.output
    steps = json.loads((tmp_path / "study" / "steps.json").read_text())
    assert steps["harvest activations"]["summary"]["documents"] == 60
    ev = steps["train SAE"]["summary"]["explained_variance"]
    assert ev is not None and -10 < ev <= 1  # 32 steps: plumbing, not quality (tests/test_train.py checks that)
    assert "random control" in steps["experiment reduced_probes"]["summary"]["finding"]
    assert "data:image/png;base64," in (tmp_path / "study" / "report.html").read_text()
