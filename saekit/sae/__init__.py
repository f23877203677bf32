"""SAEs: the only package that imports sae_lens.

Builds sae-lens training SAEs from one small config class per architecture, saves them in
SAELens' own format and loads them back (from a local folder or sae-lens' registry of published
releases), and checks an SAE against a model.

    base.py        SAEConfig (fields every architecture has), the trainer's access to the weights
    topk.py, batchtopk.py, jumprelu.py, standard.py    one architecture each: its config and build
    storage.py     SAE folders: save by renames, recover a killed save, load (never unpickles)
    interface.py   hook_of, decoder_FD, d_in_of ...: what other modules read an SAE through

A new architecture is one new module with an `SAEConfig` subclass plus one `register` line below
(ARCHITECTURES, the registry, is a plain dict in base.py).
"""

from __future__ import annotations

from typing import Any

from sae_lens import SAE  # noqa: F401  (re-exported)
from sae_lens import __version__ as SAE_LENS_VERSION  # noqa: F401  (re-exported for provenance)
from sae_lens.saes.sae import TrainingSAE, TrainStepOutput

from saekit.sae import batchtopk, jumprelu, standard, topk
from saekit.sae.base import (  # noqa: F401
    ARCHITECTURES,
    SAEConfig,
    SAEError,
    coefficient_values,
    common_fields,
    config_class,
    fold_activation_scale,
    latent_params,
    load_training_state,
    register,
    reinit_latents,
    set_metadata,
    training_state_tensors,
)
from saekit.sae.batchtopk import BatchTopKConfig  # noqa: F401
from saekit.sae.interface import check_against_model, d_in_of, d_sae_of, decoder_FD, describe, hook_of, hook_width, model_name_of  # noqa: F401
from saekit.sae.jumprelu import JumpReLUConfig  # noqa: F401
from saekit.sae.standard import StandardConfig  # noqa: F401
from saekit.sae.storage import (  # noqa: F401
    PICKLE_SUFFIXES,
    SAE_FILES,
    SAFE_REGISTRY_LOADERS,
    LoadedSAE,
    aside_path_for,
    check_finite_weights,
    check_sae_folder,
    load_sae,
    partial_path_for,
    recover_sae_folder,
    sae_files_folder,
    save_sae,
)
from saekit.sae.topk import TopKConfig, topk_training_forward  # noqa: F401

# ---------------------------------------------------------------------------- the architectures
register(topk.TopKConfig)
register(batchtopk.BatchTopKConfig)
register(jumprelu.JumpReLUConfig)
register(standard.StandardConfig)


def sae_config(table: dict[str, Any] | SAEConfig, where: str = "sae") -> SAEConfig:
    """The SAE config a `[sae]` table describes (see SAEConfig.from_table)."""
    return table if isinstance(table, SAEConfig) else SAEConfig.from_table(table, where)


def build_training_sae(architecture: str | SAEConfig, d_in: int, d_sae: int, *, use_aux_loss: bool = True,
                       normalize_activations: str = "none", dtype: str = "float32", device: str = "cpu",
                       metadata: dict[str, Any] | None = None, **fields: Any) -> TrainingSAE:
    """A fresh sae-lens training SAE (weights from torch's current RNG; seed it first).

    `architecture` is a config, or a name whose config takes `fields`; fields that architecture does
    not have are ignored, so one call can build every architecture (as in tests)."""
    if isinstance(architecture, SAEConfig):
        cfg = architecture
    else:
        if architecture not in ARCHITECTURES:
            raise SAEError(f"unknown architecture {architecture!r}; choose one of {list(ARCHITECTURES)}")
        cls = ARCHITECTURES[architecture]
        own = {f for f in cls.__dataclass_fields__ if f != "architecture"}
        cfg = cls(**{k: v for k, v in fields.items() if k in own})
    common = common_fields(d_in, d_sae, normalize_activations, dtype, device, metadata)
    return cfg.build(common, use_aux_loss)


def training_forward(sae: TrainingSAE, sae_in_BD, dead_F, step: int, fast_topk: bool = True) -> TrainStepOutput:
    """One training forward pass of any SAE: the sparse TopK path for a topk SAE, sae-lens' own otherwise
    (the trainer asks its `SAEConfig.training_forward` instead)."""
    if fast_topk and sae.cfg.architecture() == "topk":
        return topk_training_forward(sae, sae_in_BD, dead_F)
    return SAEConfig().training_forward(sae, sae_in_BD, dead_F, step)
