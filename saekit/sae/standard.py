"""The standard ReLU SAE with an L1 penalty (Bricken et al., 2023); dead latents are resampled,
as it has no auxiliary loss."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sae_lens.saes.sae import TrainingSAE
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig

from saekit.sae.base import SAEConfig


@dataclass
class StandardConfig(SAEConfig):
    architecture: str = field(default="standard", init=False)
    l1_coefficient: float = 5.0
    """Sparsity coefficient of the L1 loss."""
    l1_warm_up_steps: int = 0

    def validate(self) -> None:
        if self.l1_coefficient < 0:
            raise ValueError(f"l1_coefficient must be >= 0, got {self.l1_coefficient}")
        super().validate()

    def build(self, common: dict[str, Any], use_aux_loss: bool) -> TrainingSAE:
        return StandardTrainingSAE(StandardTrainingSAEConfig(
            l1_coefficient=self.l1_coefficient, l1_warm_up_steps=self.l1_warm_up_steps, **common))
