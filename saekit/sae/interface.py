"""The small interface other modules read an SAE through, never through sae-lens attributes:
its hook, model, decoder and sizes, its fit to a model, and a printable summary."""

from __future__ import annotations

from typing import Any

import torch

from saekit.model import capture, d_model, hook_names
from saekit.sae.base import SAEError


def hook_of(sae) -> str | None:
    """The hook point the SAE was trained on (sae-lens keeps it in cfg.metadata)."""
    return getattr(getattr(sae.cfg, "metadata", None), "hook_name", None)


def model_name_of(sae) -> str | None:
    return getattr(getattr(sae.cfg, "metadata", None), "model_name", None)


def decoder_FD(sae) -> torch.Tensor:
    """Decoder rows [d_sae, d_in]: one direction per latent."""
    return sae.W_dec


def d_in_of(sae) -> int:
    return int(sae.cfg.d_in)


def d_sae_of(sae) -> int:
    return int(sae.cfg.d_sae)


def hook_width(model, hook: str) -> int:
    """The last dimension of `hook`'s activations, from a one-token forward pass."""
    names = hook_names(model)
    if hook not in names:
        raise SAEError(f"the SAE reads hook {hook!r}, which this model does not have "
                       f"(e.g. {sorted(h for h in names if 'resid_post' in h)[:3]})")
    if "hook_resid" in hook:
        return d_model(model)
    return int(capture(model, torch.zeros((1, 1), dtype=torch.long), None, [hook])[hook].shape[-1])


def check_against_model(loaded, model, hook: str | None = None) -> None:
    """Raise SAEError when the SAE's hook is missing from the model or its d_in is not the hook's width.

    `loaded` is an SAE or a LoadedSAE."""
    sae = getattr(loaded, "sae", loaded)
    hook = hook or hook_of(sae)
    if hook is None:
        width, where = d_model(model), "the model's d_model"
    else:
        width, where = hook_width(model, hook), f"the width of {hook}"
    if d_in_of(sae) != width:
        raise SAEError(f"SAE d_in is {d_in_of(sae)} but {where} is {width}: this SAE was trained on "
                       f"another model or hook (SAE model: {model_name_of(sae)!r})")


def describe(loaded) -> dict[str, Any]:
    """A summary for printing: architecture, sizes, hook, model, source (of a LoadedSAE)."""
    cfg = loaded.sae.cfg
    out = {"source": loaded.source, "architecture": cfg.architecture(), "d_in": cfg.d_in, "d_sae": cfg.d_sae,
           "hook": hook_of(loaded.sae), "model": model_name_of(loaded.sae), "dtype": cfg.dtype}
    if hasattr(cfg, "k"):
        out["k"] = cfg.k
    return out
