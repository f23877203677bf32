"""JumpReLU SAE (Rajamanoharan et al., 2024): a learned threshold per latent, trained through a
straight-through estimator of width `jumprelu_bandwidth` with an L0 penalty."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
from sae_lens.saes.sae import TrainingSAE

from saekit.sae.base import SAEConfig


@dataclass
class JumpReLUConfig(SAEConfig):
    architecture: str = field(default="jumprelu", init=False)
    l0_coefficient: float = 1.0
    """Sparsity coefficient of the L0 loss."""
    jumprelu_init_threshold: float = 0.01
    jumprelu_bandwidth: float = 0.05
    aux_loss_coefficient: float = 1 / 32
    """Weight of the pre-activation loss on dead latents (dead_feature_handling = "auxk")."""
    has_aux_loss = True

    def validate(self) -> None:
        for name in ("l0_coefficient", "aux_loss_coefficient", "jumprelu_init_threshold"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.jumprelu_bandwidth <= 0:
            raise ValueError(f"jumprelu_bandwidth must be positive, got {self.jumprelu_bandwidth}")
        super().validate()

    def build(self, common: dict[str, Any], use_aux_loss: bool) -> TrainingSAE:
        return JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(
            l0_coefficient=self.l0_coefficient, jumprelu_init_threshold=self.jumprelu_init_threshold,
            jumprelu_bandwidth=self.jumprelu_bandwidth,
            pre_act_loss_coefficient=self.aux_loss_coefficient if use_aux_loss else None, **common))
