"""Quality metrics of an SAE on held-out tokens.

Activation metrics (from activation vectors alone): explained variance and FVU, mean L0, dead
and dense latent fractions over the stated token window, mean cosine of reconstructions.

Language-model metrics (with the model): the SAE's reconstruction is spliced in at its hook
with the interventions' `Splice` (and the hook zeroed with `Zero`); we report the next-token loss clean, with
the SAE, with the SAE plus its error term (a sanity check: it must equal the clean loss), and with
the hook zero-ablated; the fraction of loss recovered; and the KL divergence of the spliced
model's next-token distribution from the clean one's.

The SAE is any object with `encode` and `decode` (an SAE loaded by saekit.sae).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from saekit.errors import SaekitError
from saekit.interventions import Splice, Zero, patched
from saekit.model import model_device, pad_batch
from saekit.sae import d_sae_of
from saekit.tokens import TokenRule


class MetricsError(SaekitError, ValueError):
    """Nothing to measure an SAE on (no held-out activations or texts)."""


@torch.no_grad()
def activation_metrics(sae, acts_ND: torch.Tensor, batch_size: int = 4096,
                       dense_threshold: float = 0.1) -> dict[str, Any]:
    """Reconstruction and sparsity over the N held-out activation vectors."""
    n = acts_ND.shape[0]
    if n == 0:
        raise MetricsError("no held-out activations to measure the SAE on")
    d_sae = d_sae_of(sae)
    mean_D = acts_ND.double().mean(0)
    err = total = l0_sum = cos_sum = 0.0
    fired_F = torch.zeros(d_sae, dtype=torch.float64)
    for s in range(0, n, batch_size):
        x_BD = acts_ND[s:s + batch_size].to(sae.dtype)
        feats_BF = sae.encode(x_BD)
        recon_BD = sae.decode(feats_BF)
        active_BF = feats_BF != 0
        err += float((x_BD.double() - recon_BD.double()).pow(2).sum())
        total += float((x_BD.double() - mean_D).pow(2).sum())
        l0_sum += float(active_BF.sum())
        cos_sum += float(F.cosine_similarity(x_BD.float(), recon_BD.float(), dim=-1).sum())
        fired_F += active_BF.sum(0).double()
    fvu = err / max(total, 1e-12)
    freq_F = fired_F / n
    return {
        "tokens": n,
        "explained_variance": 1 - fvu,
        "fvu": fvu,
        "mse_per_token": err / n,
        "l0": l0_sum / n,
        "cosine": cos_sum / n,
        "dead_fraction": float((freq_F == 0).double().mean()),
        "dense_fraction": float((freq_F > dense_threshold).double().mean()),
        "dead_window_tokens": n,
        "dense_threshold": dense_threshold,
    }


def kl_per_token(clean_logp_BTV: torch.Tensor, other_logp_BTV: torch.Tensor) -> torch.Tensor:
    """KL(clean || other) at each position [B, T], from log-probabilities over the vocabulary.

    The one KL of the package: the SAE metrics and the experiments' side effects both use it."""
    return (clean_logp_BTV.exp() * (clean_logp_BTV - other_logp_BTV)).sum(-1)


def splice_edits(sae, mode: str, hook: str, keep_BT: torch.Tensor, rule: TokenRule | None = None) -> list:
    """The edit replacing the activation with the SAE's output ("sae"), the output plus the error
    term ("sae+error", i.e. the clean activation) or zeros ("zero") at the positions in keep_BT
    (narrowed by the rule's norm filter when it has one); others stay clean."""
    if mode == "zero":
        return [Zero(hook, positions=keep_BT, rule=rule)]
    return [Splice(sae, hook=hook, positions=keep_BT, rule=rule, keep_error=mode == "sae+error")]


@torch.no_grad()
def lm_metrics(model, sae, hook: str, texts: list[str], max_tokens: int = 512, batch_size: int = 8,
               rule: TokenRule = TokenRule()) -> dict[str, Any]:
    """LM loss recovered and KL with the SAE spliced in at `hook`, over held-out texts.

    The splice covers the real tokens that `rule` counts (as in training; by default all but the
    first); the others stay clean. loss_recovered = (L_zero - L_sae) / (L_zero - L_clean).
    """
    tok = model.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = [t[:max_tokens] for t in tok(texts, add_special_tokens=True)["input_ids"] if len(t) > 1]
    device = model_device(model)
    sums = {"clean": 0.0, "sae": 0.0, "sae+error": 0.0, "zero": 0.0}
    kl_sum = {"sae": 0.0, "sae+error": 0.0}
    n_pred = 0
    for b in range(0, len(ids), batch_size):
        tokens_BT, mask_BT = pad_batch(ids[b:b + batch_size], pad_id)
        keep_BT = rule.keep_padded(mask_BT)
        tokens_BT, mask_BT = tokens_BT.to(device), mask_BT.to(device)
        pred_mask = mask_BT[:, 1:]  # predictions of real next tokens
        n_pred += int(pred_mask.sum())

        def run(mode: str | None) -> torch.Tensor:
            edits = [] if mode is None else splice_edits(sae, mode, hook, keep_BT.to(device), rule)
            with patched(model, edits):
                logits = model(tokens_BT, attention_mask=mask_BT.long())
            return logits[:, :-1].float().log_softmax(-1)

        def nll(logp_BTV: torch.Tensor) -> float:
            tgt = tokens_BT[:, 1:]
            per_tok = -logp_BTV.gather(-1, tgt[..., None]).squeeze(-1)
            return float(per_tok[pred_mask].sum())

        clean = run(None)
        sums["clean"] += nll(clean)
        for mode in ("sae", "sae+error", "zero"):
            logp = run(mode)
            sums[mode] += nll(logp)
            if mode in kl_sum:
                kl_sum[mode] += float(kl_per_token(clean, logp)[pred_mask].sum())
    if n_pred == 0:
        raise MetricsError("no held-out texts long enough for the language-model metrics")
    loss = {k: v / n_pred for k, v in sums.items()}

    def recovered(spliced: float) -> float:
        gap = loss["zero"] - loss["clean"]
        return (loss["zero"] - spliced) / gap if abs(gap) > 1e-9 else float("nan")

    return {
        "texts": len(ids), "predicted_tokens": n_pred, "hook": hook,
        "splice_positions": rule.describe(),
        "loss_clean": loss["clean"], "loss_sae": loss["sae"], "loss_sae_with_error": loss["sae+error"],
        "loss_zero_ablation": loss["zero"],
        "loss_recovered": recovered(loss["sae"]),
        "loss_recovered_with_error": recovered(loss["sae+error"]),
        "kl_sae": kl_sum["sae"] / n_pred, "kl_sae_with_error": kl_sum["sae+error"] / n_pred,
    }
