"""What a loaded model is made of, read from the transformers model underneath: sizes, blocks,
unembedding, and the TransformerLens names of the residual stream."""

from __future__ import annotations

import re
from typing import Any, Sequence

import torch

from saekit.model.catalogue import ModelLoadError


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



def hook_layer(hook: str) -> int | None:
    """The block a hook lives in (0 for the embedding hooks, None for hooks after the last block)."""
    m = re.match(r"blocks\.(\d+)\.", hook)
    if m:
        return int(m.group(1))
    return 0 if hook.startswith(("hook_embed", "embed", "hook_pos_embed")) else None



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



def model_device(model) -> torch.device:
    return next(model.parameters()).device
