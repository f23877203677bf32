"""Loading: a user's model argument resolved to a local folder or hub name, and loaded as the plain
transformers model, the TransformerLens bridge, or its tokenizer alone. Only safetensors are read."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from saekit.model.catalogue import (
    CHATML_TEMPLATE,
    DEFAULT_MODEL,
    TINY_MODEL,
    ModelLoadError,
    embedded,
    hub_offline,
    hub_reachable,
    known_names,
    parse_dtype,
)
from saekit.model.gguf import embedded_model_folder, tiny_model_folder


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



def format_chat(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """Chat text for a model; ChatML models get no injected default system prompt. Tokenise it without
    added special tokens: a template that wants BOS writes it itself."""
    template = getattr(tokenizer, "chat_template", None)
    if template is None or "<|im_start|>" in template:
        template = CHATML_TEMPLATE
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def chat_token_ids(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> list[int]:
    """A conversation in the model's own chat format, as token ids starting with exactly one BOS when the
    model's texts start with one (a template that writes BOS keeps it; a tokenizer that adds BOS to plain
    text gets it here too; never two)."""
    text = format_chat(tokenizer, messages, add_generation_prompt=add_generation_prompt)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = tokenizer.bos_token_id
    if bos is not None and prepends_bos(tokenizer) and ids[:1] != [bos]:
        ids = [bos] + ids
    while bos is not None and ids[:2] == [bos, bos]:
        ids = ids[1:]
    return ids

