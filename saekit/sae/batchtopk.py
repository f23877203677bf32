"""BatchTopK SAE (Bussmann et al., 2024): the batch keeps its k x batch largest latents, so k is a
mean per token; at inference it becomes a JumpReLU SAE (sae-lens saves it that way)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
from sae_lens.saes.sae import TrainingSAE

from saekit.sae.base import SAEConfig
from saekit.sae.topk import check_aux_normalisation, check_k_below, check_topk_fields


@dataclass
class BatchTopKConfig(SAEConfig):
    architecture: str = field(default="batchtopk", init=False)
    k: float = 32
    """Active latents on average per token."""
    aux_loss_coefficient: float = 1 / 32
    """Weight of the AuxK loss on dead latents (dead_feature_handling = "auxk")."""
    has_aux_loss = True

    def validate(self) -> None:
        check_topk_fields(self)
        super().validate()

    def check_width(self, d_sae: int, how: str = "") -> None:
        check_k_below(self.k, d_sae, how)

    def check_training(self, normalize_activations: str, dead_feature_handling: str) -> None:
        check_aux_normalisation(normalize_activations, dead_feature_handling)

    def build(self, common: dict[str, Any], use_aux_loss: bool) -> TrainingSAE:
        aux = self.aux_loss_coefficient if use_aux_loss else 0.0
        return BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(k=float(self.k), aux_loss_coefficient=aux, **common))
