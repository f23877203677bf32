"""TopK SAE (Gao et al., 2024): each token keeps its k largest latents; AuxK revives dead ones.

`topk_training_forward` is a faster training pass than sae-lens' own: it selects the k latents
with a dense encoder matmul under no_grad, then computes their values, the decoding and all
gradients through the k selected latents only (as EleutherAI's sparsify does).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from sae_lens.saes.sae import TrainingSAE, TrainStepOutput
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

from saekit.sae.base import SAEConfig, SAEError


@dataclass
class TopKConfig(SAEConfig):
    architecture: str = field(default="topk", init=False)
    k: float = 32
    """Active latents per token (a whole number)."""
    aux_loss_coefficient: float = 1 / 32
    """Weight of the AuxK loss on dead latents (dead_feature_handling = "auxk")."""
    k_aux: int = 0
    """Dead latents AuxK reconstructs the residual with, per token; 0 = sae-lens' d_in // 2. Near k, each
    dead latent's target is large enough to win a place in the top k again (README "SAE health")."""
    aux_on_rank_score: bool = False
    """AuxK decodes each chosen dead latent's ranking score (pre-activation x its decoder row's norm, the
    number TopK compares) instead of sae-lens' pre-activation, the norm held constant: the loss then
    grows the score that must beat the k-th live latent's. With decoder-norm rescaling (sae-lens'
    default) this left no latent dead where sae-lens' AuxK left 13-14% (README "SAE health")."""
    fast_topk: bool = True
    """Select, decode and back-propagate only the k active latents (same maths as sae-lens)."""
    has_aux_loss = True

    def validate(self) -> None:
        check_topk_fields(self)
        if self.k != int(self.k):
            raise ValueError(f"topk needs a whole k, got {self.k}")
        if self.k_aux < 0 or self.k_aux != int(self.k_aux):
            raise ValueError(f"k_aux must be a whole number >= 0 (0: d_in // 2), got {self.k_aux}")
        if self.k_aux and not self.fast_topk:
            raise ValueError("k_aux needs fast_topk = true: sae-lens' own training pass always uses d_in // 2")
        if self.aux_on_rank_score and not self.fast_topk:
            raise ValueError("aux_on_rank_score needs fast_topk = true: sae-lens' own training pass decodes "
                             "the pre-activation")
        super().validate()

    def check_width(self, d_sae: int, how: str = "") -> None:
        check_k_below(self.k, d_sae, how)

    def check_training(self, normalize_activations: str, dead_feature_handling: str) -> None:
        check_aux_normalisation(normalize_activations, dead_feature_handling)

    def sparse_latents(self) -> float | None:
        return self.k if self.fast_topk else None

    def build(self, common: dict[str, Any], use_aux_loss: bool) -> TrainingSAE:
        aux = self.aux_loss_coefficient if use_aux_loss else 0.0
        return TopKTrainingSAE(TopKTrainingSAEConfig(k=int(self.k), aux_loss_coefficient=aux, **common))

    def training_forward(self, sae, sae_in_BD, dead_F, step) -> TrainStepOutput:
        if self.fast_topk:
            return topk_training_forward(sae, sae_in_BD, dead_F, k_aux=int(self.k_aux),
                                         aux_on_rank_score=self.aux_on_rank_score)
        return super().training_forward(sae, sae_in_BD, dead_F, step)


def check_topk_fields(cfg) -> None:
    """k and the AuxK weight of the TopK family (topk, batchtopk)."""
    if cfg.k <= 0:
        raise ValueError(f"k must be positive, got {cfg.k}")
    if cfg.aux_loss_coefficient < 0:
        raise ValueError(f"aux_loss_coefficient must be >= 0, got {cfg.aux_loss_coefficient}")


def check_k_below(k: float, d_sae: int, how: str = "") -> None:
    """TopK needs fewer active latents than latents."""
    if k >= d_sae:
        raise ValueError(f"k ({k}) must be less than d_sae ({d_sae}{how}); lower k or widen the SAE")


def check_aux_normalisation(normalize_activations: str, dead_feature_handling: str) -> None:
    if normalize_activations == "layer_norm" and dead_feature_handling == "auxk":
        raise ValueError("TopK's auxiliary loss does not work with layer_norm normalisation "
                         "(sae-lens refuses it); use expected_average_only_in")


# ---------------------------------------------------------------------------- sparse TopK


class _SelectedPreacts(torch.autograd.Function):
    """pre_BK = x_BD @ W_enc[:, idx_BK] + b_enc[idx_BK], with O(B*K*D) backward.

    The values come precomputed from the dense no-grad encoder matmul; only the gradients are
    computed here, through the selected latents alone (a dense backward costs O(B*F*D)).
    """

    @staticmethod
    def forward(ctx, x_BD, W_enc_DF, b_enc_F, idx_BK, pre_BK):
        ctx.save_for_backward(x_BD, W_enc_DF, idx_BK)
        return pre_BK.clone()

    @staticmethod
    def backward(ctx, grad_BK):
        x_BD, W_enc_DF, idx_BK = ctx.saved_tensors
        B, K = idx_BK.shape
        n_latents = W_enc_DF.shape[1]
        flat_idx = idx_BK.reshape(-1)
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(idx_BK, W_enc_DF.t().contiguous(), per_sample_weights=grad_BK, mode="sum")
        if ctx.needs_input_grad[1]:
            rows = torch.arange(B, device=x_BD.device).repeat_interleave(K)
            g_FB = torch.sparse_coo_tensor(torch.stack([flat_idx, rows]), grad_BK.reshape(-1),
                                           (n_latents, B), check_invariants=False)
            grad_W = torch.sparse.mm(g_FB, x_BD).t()
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(n_latents, dtype=grad_BK.dtype, device=grad_BK.device)
            grad_b.index_add_(0, flat_idx, grad_BK.reshape(-1))
        return grad_x, grad_W, grad_b, None, None


def _decode_selected(idx_BK, acts_BK, W_dec_FD):
    return F.embedding_bag(idx_BK, W_dec_FD, per_sample_weights=acts_BK, mode="sum")


def topk_training_forward(sae: TopKTrainingSAE, x_BD: torch.Tensor,
                          dead_F: torch.Tensor | None, k_aux: int = 0,
                          aux_on_rank_score: bool = False) -> TrainStepOutput:
    """sae-lens' TopK training pass (same loss, same gradients) that never decodes dense latents.

    `k_aux`: dead latents per token in the AuxK loss (0: sae-lens' d_in // 2); `aux_on_rank_score`:
    see TopKConfig (False: sae-lens' AuxK).
    `feature_acts` is returned as a sparse COO tensor [B, F] (sae-lens' trainer accepts those too).
    """
    cfg = sae.cfg
    if cfg.normalize_activations != "none":
        raise SAEError("the sparse TopK path needs normalize_activations 'none' inside the SAE")
    sae_in_BD = x_BD.to(sae.dtype)
    centred_BD = sae_in_BD - sae.b_dec * cfg.apply_b_dec_to_input
    norm_F = sae.W_dec.norm(dim=-1) if cfg.rescale_acts_by_decoder_norm else None
    with torch.no_grad():
        # rank by pre * norm, folding the norms into the (small) weights instead of the [B, F] output
        if norm_F is not None:
            ranked_BF = torch.addmm(sae.b_enc * norm_F, centred_BD, sae.W_enc * norm_F)
        else:
            ranked_BF = torch.addmm(sae.b_enc, centred_BD, sae.W_enc)
        top_BK, idx_BK = ranked_BF.topk(cfg.k, dim=-1, sorted=False)
        pre_BK = top_BK / norm_F[idx_BK] if norm_F is not None else top_BK
    pre_BK = _SelectedPreacts.apply(centred_BD, sae.W_enc, sae.b_enc, idx_BK, pre_BK)
    if norm_F is not None:
        sel_norm_BK = norm_F[idx_BK]
        acts_BK = (pre_BK * sel_norm_BK).relu()
        recon_BD = _decode_selected(idx_BK, acts_BK / sel_norm_BK, sae.W_dec) + sae.b_dec
    else:
        acts_BK = pre_BK.relu()
        recon_BD = _decode_selected(idx_BK, acts_BK, sae.W_dec) + sae.b_dec
    mse = (recon_BD - sae_in_BD).pow(2).sum(-1).mean()
    aux = _topk_aux_loss(sae, sae_in_BD, centred_BD, recon_BD, ranked_BF, norm_F, dead_F, k_aux, aux_on_rank_score)
    B, K = idx_BK.shape
    rows = torch.arange(B, device=idx_BK.device).repeat_interleave(K)
    feats_BF = torch.sparse_coo_tensor(torch.stack([rows, idx_BK.reshape(-1)]), acts_BK.detach().reshape(-1),
                                       (B, cfg.d_sae), check_invariants=False)
    return TrainStepOutput(sae_in=sae_in_BD, sae_out=recon_BD, feature_acts=feats_BF, hidden_pre=ranked_BF,
                           loss=mse + aux, losses={"mse_loss": mse, "auxiliary_reconstruction_loss": aux})


def _topk_aux_loss(sae, sae_in_BD, centred_BD, recon_BD, ranked_BF, norm_F, dead_F, k_aux: int = 0,
                   on_rank_score: bool = False):
    """sae-lens' AuxK loss: the top k_aux dead latents reconstruct the live latents' residual.

    The weight min(n_dead / k_aux, 1) is sae-lens'; so is k_aux = d_in // 2 when it is 0. With
    on_rank_score the chosen latents' ranked scores are decoded as they are (TopKConfig.aux_on_rank_score)."""
    n_dead = int(dead_F.sum()) if dead_F is not None else 0
    if n_dead == 0 or sae.cfg.aux_loss_coefficient == 0:
        return recon_BD.new_tensor(0.0)
    k_aux = k_aux or sae_in_BD.shape[-1] // 2
    scale = min(n_dead / k_aux, 1.0)
    k_aux = min(k_aux, n_dead)
    with torch.no_grad():
        dead_idx = dead_F.nonzero().flatten().to(ranked_BF.device)
        top_BK, pos_BK = ranked_BF.index_select(1, dead_idx).topk(k_aux, dim=-1, sorted=False)
        idx_BK = dead_idx[pos_BK]
        pre_BK = top_BK / norm_F[idx_BK] if norm_F is not None and not on_rank_score else top_BK
    pre_BK = _SelectedPreacts.apply(centred_BD, sae.W_enc, sae.b_enc, idx_BK, pre_BK)
    # with decoder-norm rescaling the acts are pre * norm, decoded through W_dec / norm: the norms cancel
    recons_BD = _decode_selected(idx_BK, pre_BK, sae.W_dec)
    residual_BD = (sae_in_BD - recon_BD).detach()
    return sae.cfg.aux_loss_coefficient * scale * (recons_BD - residual_BD).pow(2).sum(-1).mean()
