"""The embedded default model, for real: conversion, chat formatting, harvesting at layer 20."""

import re

import pytest
import torch

from saekit import model as M
from saekit.corpus import load_corpus
from saekit.harvest import Activations, HarvestConfig, harvest


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
