"""What every SAE architecture shares: its config's common fields, the checks, and the training hooks.

An architecture is one module holding one `SAEConfig` subclass: its own fields, its checks, and
`build`, which makes the sae-lens training SAE. `saekit.sae.__init__` registers each class by its
`architecture` name in ARCHITECTURES; the trainer only calls the methods below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from sae_lens.saes.sae import SAEMetadata, TrainingSAE, TrainStepInput, TrainStepOutput

from saekit.config import ConfigError, from_dict
from saekit.errors import SaekitError


class SAEError(SaekitError, RuntimeError):
    """An SAE could not be built, saved, loaded or matched to a model; the message says why."""


@dataclass
class SAEConfig:
    """The `[sae]` table of a training config: fields every architecture has."""
    architecture: str = field(default="", init=False)
    """Set by each subclass; the `[sae]` table's `architecture` picks the subclass."""
    d_sae: int = 0
    """Number of latents; 0 means expansion_factor * d_model."""
    expansion_factor: int = 8
    has_aux_loss: ClassVar[bool] = False
    """Whether dead_feature_handling = "auxk" has an auxiliary loss to switch on."""

    @classmethod
    def from_table(cls, table: dict[str, Any], where: str = "sae") -> "SAEConfig":
        """The config of the architecture `table["architecture"]` names (default topk), from the rest
        of the table; a field that architecture does not have is a ConfigError naming it."""
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table, got {type(table).__name__}")
        rest = dict(table)
        name = rest.pop("architecture", "topk" if cls is SAEConfig else cls().architecture)
        chosen = config_class(name, where)
        if cls is not SAEConfig and chosen is not cls:
            raise ConfigError(f"{where}.architecture: {name!r} is not {cls().architecture!r}")
        return from_dict(chosen, rest, where)

    def validate(self) -> None:
        if self.d_sae < 0 or (self.d_sae == 0 and self.expansion_factor < 1):
            raise ValueError("set d_sae > 0 or expansion_factor >= 1")
        if self.d_sae:
            self.check_width(self.d_sae)

    def resolved_d_sae(self, d_in: int) -> int:
        return self.d_sae or self.expansion_factor * d_in

    def check_width(self, d_sae: int, how: str = "") -> None:
        """Refuse a latent count the architecture cannot use (known only with d_in when d_sae = 0)."""

    def check_training(self, normalize_activations: str, dead_feature_handling: str) -> None:
        """Refuse trainer settings this architecture cannot train with."""
        if dead_feature_handling == "auxk" and not self.has_aux_loss:
            raise ValueError(f"the {self.architecture} SAE has no auxiliary dead-latent loss; "
                             "use dead_feature_handling = \"resample\" or \"none\"")

    def sparse_latents(self) -> float | None:
        """Latents per token the training pass computes through when it skips the rest (None: dense)."""
        return None

    def build(self, common: dict[str, Any], use_aux_loss: bool) -> TrainingSAE:
        """The sae-lens training SAE; `common` holds d_in, d_sae, dtype, device, normalisation, metadata."""
        raise NotImplementedError

    def training_forward(self, sae: TrainingSAE, sae_in_BD: torch.Tensor, dead_F: torch.Tensor | None,
                         step: int) -> TrainStepOutput:
        """One training forward pass; sae-lens' own unless an architecture has a faster one."""
        return sae.training_forward_pass(TrainStepInput(
            sae_in=sae_in_BD, coefficients=coefficient_values(sae, step), dead_neuron_mask=dead_F,
            n_training_steps=step, is_logging_step=False))


ARCHITECTURES: dict[str, type[SAEConfig]] = {}
"""Architecture name -> its config class, filled by the `register` lines in saekit/sae/__init__.py."""


def register(cls: type[SAEConfig]) -> type[SAEConfig]:
    ARCHITECTURES[cls().architecture] = cls
    return cls


def config_class(architecture: str, where: str = "sae") -> type[SAEConfig]:
    if architecture not in ARCHITECTURES:
        raise ConfigError(f"{where}.architecture: unknown architecture {architecture!r}; "
                          f"choose one of {list(ARCHITECTURES)}")
    return ARCHITECTURES[architecture]


def common_fields(d_in: int, d_sae: int, normalize_activations: str = "none", dtype: str = "float32",
                  device: str = "cpu", metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sae-lens config fields every architecture takes.

    The trainer estimates and folds "expected_average_only_in" itself (as sae-lens' trainer does),
    so the SAE sees already scaled inputs and its config says "none".
    """
    sae_norm = "layer_norm" if normalize_activations == "layer_norm" else "none"
    return dict(d_in=d_in, d_sae=d_sae, dtype=dtype, device=device, normalize_activations=sae_norm,
                metadata=SAEMetadata(**(metadata or {})))


def coefficient_values(sae: TrainingSAE, step: int) -> dict[str, float]:
    """The sparsity coefficients at `step` (linear warm-up, as sae-lens' CoefficientScheduler)."""
    out = {}
    for name, c in sae.get_coefficients().items():
        value, warm = (c, 0) if isinstance(c, (int, float)) else (c.value, c.warm_up_steps)
        out[name] = value * min(1.0, (step + 1) / warm) if warm > 0 else value
    return out


# ---------------------------------------------------------------------------- the trainer's access to the weights


def set_metadata(sae: TrainingSAE, fields: dict[str, Any]) -> None:
    """Set fields of the metadata that save_sae writes into cfg.json (extra keys load in sae-lens too)."""
    for key, value in fields.items():
        sae.cfg.metadata[key] = value


def fold_activation_scale(sae: TrainingSAE, scaling_factor: float) -> None:
    """Fold a constant input scaling into the weights (sae-lens' own fold)."""
    sae.fold_activation_norm_scaling_factor(scaling_factor)


def training_state_tensors(sae: TrainingSAE) -> dict[str, torch.Tensor]:
    """Parameters and buffers of a training SAE, for checkpoints."""
    return {k: v.detach().contiguous() for k, v in sae.state_dict().items()}


def load_training_state(sae: TrainingSAE, tensors: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        sae.load_state_dict(tensors, strict=True)


_LATENT_DIM = {"W_enc": 1, "W_dec": 0, "b_enc": 0, "threshold": 0}


def latent_params(sae: TrainingSAE) -> list[tuple[torch.nn.Parameter, int]]:
    """Each parameter with one slice per latent, and the dimension that indexes the latents."""
    params = dict(sae.named_parameters())
    return [(params[name], dim) for name, dim in _LATENT_DIM.items() if name in params]


@torch.no_grad()
def reinit_latents(sae: TrainingSAE, dead_F: torch.Tensor, inputs_KD: torch.Tensor) -> torch.Tensor:
    """Point the dead latents at `inputs_KD` (one input per dead latent); returns their indices.

    The decoder row becomes the input's unit direction (b_dec removed), the encoder column that
    direction at 0.2 x the mean live encoder norm, and the encoder bias zero (Anthropic, 2023).
    """
    idx = dead_F.nonzero().flatten().to(inputs_KD.device)
    dirs_KD = inputs_KD - sae.b_dec
    dirs_KD = dirs_KD / dirs_KD.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    alive = ~dead_F.to(inputs_KD.device)
    enc_norm = sae.W_enc[:, alive].norm(dim=0).mean() if bool(alive.any()) else torch.tensor(1.0)
    sae.W_dec[idx] = dirs_KD.to(sae.W_dec.dtype)
    sae.W_enc[:, idx] = (dirs_KD * 0.2 * enc_norm).T.to(sae.W_enc.dtype)
    sae.b_enc[idx] = 0
    return idx
