"""The training loop, in named steps that can each be tested: `init_state`, `train_step`,
`resample_dead`, `finish`, and `train_sae`, which runs them over an activation source.

Under torchrun (saekit.distributed) training is data-parallel: every rank draws the same global
batch, computes on its own slice, and gradients, losses and firing counts are averaged or summed
over ranks, so every rank holds the same SAE and agrees on dead latents; rank 0 writes.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from saekit import distributed as D
from saekit import sae as S
from saekit.activations import ActivationSource, StreamSource
from saekit.artifacts import atomic_write_json, package_versions
from saekit.config import check_config, to_dict
from saekit.model import load_model, parse_dtype
from saekit.train.checkpoints import CHECKPOINTS, TrainState, list_checkpoints, resume_from_latest, save_checkpoint
from saekit.train.config import TrainConfig, sae_metadata, token_rule
from saekit.train.errors import TrainError, TrainingDiverged
from saekit.train.sources import open_source

METRICS_FILE = "metrics.json"
TRAIN_RECORD = "saekit_train.json"


@dataclass
class StepReport:
    step: int
    total_steps: int
    tokens: int
    total_tokens: int
    loss: float
    mse: float
    l0: float
    explained_variance: float
    lr: float
    dead_fraction: float
    tokens_per_s: float



def init_state(cfg: TrainConfig, d_in: int) -> TrainState:
    """A fresh SAE (seeded) with its optimizer and empty firing statistics."""
    torch.manual_seed(cfg.seed)
    d_sae = cfg.sae.resolved_d_sae(d_in)
    sae = S.build_training_sae(cfg.sae, d_in, d_sae, use_aux_loss=cfg.dead_feature_handling == "auxk",
                               normalize_activations=cfg.normalize_activations, dtype=cfg.dtype, device=cfg.device,
                               metadata=sae_metadata(cfg, token_rule(cfg)))
    optimizer = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2))
    return TrainState(sae=sae, optimizer=optimizer, steps_since_fired_F=torch.zeros(d_sae),
                      window_fired_F=torch.zeros(d_sae))


def dead_mask(state: TrainState, cfg: TrainConfig) -> torch.Tensor:
    return state.steps_since_fired_F >= cfg.dead_feature_window


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate at `step`: linear warm-up, constant or cosine, then linear decay to zero."""
    total = cfg.total_steps
    if cfg.lr_warm_up_steps and step < cfg.lr_warm_up_steps:
        return cfg.lr * (step + 1) / cfg.lr_warm_up_steps
    main_end = total - cfg.lr_decay_steps
    floor = cfg.lr_end or cfg.lr / 10
    if cfg.lr_scheduler == "cosine":
        span = max(1, main_end - cfg.lr_warm_up_steps)
        t = min(1.0, (step - cfg.lr_warm_up_steps) / span)
        base = floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * t))
    else:
        base = cfg.lr
    if cfg.lr_decay_steps and step >= main_end:
        return base * max(0.0, (total - step) / cfg.lr_decay_steps)
    return base


def _first_batches(source: ActivationSource, cfg: TrainConfig) -> torch.Tensor:
    """The sample the input scale and the median are estimated on: the first n_batches_for_norm_estimate batches."""
    batches = source.batches(cfg.batch_size, cfg.seed + 7919)
    return torch.cat([next(batches) for _ in range(cfg.n_batches_for_norm_estimate)])


def estimate_scale(source: ActivationSource, cfg: TrainConfig) -> float:
    """sqrt(d_in) / mean token norm, from the first batches (sae-lens' expected_average_only_in)."""
    norms = _first_batches(source, cfg).norm(dim=-1)
    mean = float(norms.mean())
    if not math.isfinite(mean) or mean == 0:
        raise TrainError(f"the activations' mean norm is {mean}: they hold NaN/inf or are all zero; "
                         "check the harvest (rerun it if its shards are damaged)")
    return source.d_in ** 0.5 / mean


def geometric_median(x_ND: torch.Tensor, iters: int = 100, tol: float = 1e-5) -> torch.Tensor:
    """The point with the least summed distance to the rows (Weiszfeld's iteration from the coordinate median)."""
    x_ND = x_ND.double()
    y_D = x_ND.median(0).values
    for _ in range(iters):
        w_N = 1.0 / (x_ND - y_D).norm(dim=1).clamp_min(1e-8)
        y_new = (w_N[:, None] * x_ND).sum(0) / w_N.sum()
        moved = float((y_new - y_D).norm())
        y_D = y_new
        if moved <= tol * max(float(y_D.norm()), 1e-8):
            break
    return y_D


def init_b_dec_at_median(state: TrainState, source: ActivationSource, cfg: TrainConfig) -> None:
    """b_dec = the geometric median of the first batches, in the scaled space the SAE trains in."""
    x_ND = _first_batches(source, cfg).float()
    if state.scale is not None:
        x_ND = x_ND * state.scale
    b_dec = state.sae.get_parameter("b_dec")
    with torch.no_grad():
        b_dec.copy_(geometric_median(x_ND).to(b_dec.dtype))


def train_step(state: TrainState, batch_BD: torch.Tensor, cfg: TrainConfig) -> StepReport:
    """One optimisation step; raises TrainingDiverged (weights untouched) on NaN/inf or exploding loss."""
    sae = state.sae
    sae.train()
    full_BD = batch_BD.to(cfg.device, parse_dtype(cfg.dtype))
    if not bool(torch.isfinite(full_BD).all()):
        raise TrainingDiverged(f"the activations of step {state.step} hold NaN or inf: the activation source "
                               "is damaged (rerun the harvest, or check where the activations come from)")
    if state.scale is not None:
        full_BD = full_BD * state.scale
    x_BD = D.local_rows(full_BD)  # this rank's share of the global batch (all of it for one process)
    lr = lr_at(cfg, state.step)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    dead_F = dead_mask(state, cfg) if cfg.dead_feature_handling == "auxk" else None
    out = cfg.sae.training_forward(sae, x_BD, dead_F, state.step)
    loss, mse = D.all_reduce_(torch.stack([out.loss.detach(), out.losses["mse_loss"].detach()]).double().cpu(),
                              "mean").tolist()
    if not math.isfinite(loss):
        raise TrainingDiverged(f"loss is {loss} at step {state.step}")
    if state.first_loss is None:
        state.first_loss = loss
    elif loss > cfg.max_loss_ratio * max(state.first_loss, 1e-12):
        raise TrainingDiverged(f"loss exploded to {loss:.4g} at step {state.step} "
                               f"({loss / state.first_loss:.0f}x the first step's {state.first_loss:.4g})")
    state.optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    D.average_gradients(sae.parameters())
    grad_norm = float(torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.max_grad_norm))
    if not math.isfinite(grad_norm):
        state.optimizer.zero_grad(set_to_none=True)
        raise TrainingDiverged(f"gradient norm is {grad_norm} at step {state.step}")
    state.optimizer.step()
    with torch.no_grad():
        counts_F, l0 = firing_counts(out.feature_acts.detach())
        D.all_reduce_(counts_F)
        state.steps_since_fired_F += 1
        state.steps_since_fired_F[counts_F > 0] = 0
        state.window_fired_F += counts_F
        state.window_tokens += full_BD.shape[0]
        ev = float(explained_variance(out.sae_in.float(), out.sae_out.detach().float()))
        l0, ev = D.all_reduce_(torch.tensor([l0, ev], dtype=torch.float64), "mean").tolist()  # ev: mean of the ranks' slices
    state.step += 1
    state.tokens += full_BD.shape[0]
    if cfg.dead_feature_handling == "resample" and state.step % cfg.resample_every == 0:
        resample_dead(state, full_BD, cfg)
    return StepReport(step=state.step, total_steps=cfg.total_steps, tokens=state.tokens,
                      total_tokens=cfg.total_steps * cfg.batch_size, loss=loss, mse=mse, l0=l0,
                      explained_variance=ev, lr=lr, dead_fraction=float(dead_mask(state, cfg).float().mean()),
                      tokens_per_s=0.0)


def firing_counts(feats_BF: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Tokens each latent fired on [F], and the mean L0, from dense or sparse COO latents."""
    if feats_BF.is_sparse:
        idx = feats_BF._indices()
        on = feats_BF._values() > 0
        counts_F = torch.bincount(idx[1][on].cpu(), minlength=feats_BF.shape[1]).float()
        return counts_F, float(on.sum()) / feats_BF.shape[0]
    fired_BF = feats_BF > 0
    return fired_BF.sum(0).float().cpu(), float(fired_BF.sum(-1).float().mean())


def explained_variance(x_BD: torch.Tensor, recon_BD: torch.Tensor) -> torch.Tensor:
    """1 - FVU: 1 - sum |x - x_hat|^2 / sum |x - mean(x)|^2."""
    return 1 - (x_BD - recon_BD).pow(2).sum() / (x_BD - x_BD.mean(0)).pow(2).sum().clamp_min(1e-12)


@torch.no_grad()
def resample_dead(state: TrainState, x_BD: torch.Tensor, cfg: TrainConfig) -> int:
    """Re-initialise dead latents towards inputs the SAE reconstructs worst (Anthropic, 2023).

    Inputs are drawn with probability proportional to their squared loss (S.reinit_latents says
    what becomes of the weights), and Adam's moments of those latents are reset. Deterministic in
    (seed, step).
    """
    sae = state.sae
    dead_F = dead_mask(state, cfg)
    n_dead = int(dead_F.sum())
    if n_dead == 0:
        return 0
    recon_BD = sae(x_BD)
    err_B = (x_BD - recon_BD).pow(2).sum(-1)
    gen = torch.Generator(device=x_BD.device).manual_seed(cfg.seed * 31 + state.step)
    weights_B = err_B.pow(2) if bool(err_B.pow(2).sum() > 0) else torch.ones_like(err_B)
    picks = torch.multinomial(weights_B, n_dead, replacement=True, generator=gen)
    idx = S.reinit_latents(sae, dead_F, x_BD[picks])
    for param, dim in S.latent_params(sae):
        if param in state.optimizer.state:
            for key in ("exp_avg", "exp_avg_sq"):
                state.optimizer.state[param][key].index_fill_(dim, idx, 0.0)
    state.steps_since_fired_F[dead_F] = 0
    return n_dead


def train_sae(cfg: TrainConfig, activations=None, model=None,
              progress: Callable[[StepReport], None] | None = None, resume: bool = False) -> Path:
    """Train an SAE as `cfg` says and save it, its metrics and its record in cfg.out; returns cfg.out.

    `activations`: an ActivationSource, a harvest folder (path or Activations), or None for
    cfg.activations (or streaming from the model when that is empty too). `model` is used for
    streaming and for the language-model metrics (loaded from cfg.model when needed and not given).
    `progress(report)` is called after every step. With `resume`, training continues from the last
    checkpoint in cfg.out; without it, a folder holding checkpoints is refused.
    """
    check_config(cfg, "train config")
    D.setup(cfg.device)
    if cfg.batch_size % D.world():
        raise TrainError(f"batch_size {cfg.batch_size} does not split evenly over {D.world()} processes")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise TrainError(f"out {out} is a file, not a folder; choose another out folder")
    if out.is_dir() and (foreign := sorted(p.name for p in out.iterdir() if not _ours(p.name))):
        raise TrainError(f"out {out} holds files that are not an SAE's ({', '.join(foreign[:5])}"
                         f"{' ...' if len(foreign) > 5 else ''}); training writes into its out folder, and an SAE "
                         "saved over them could later be replaced with them: choose a new or empty out folder")
    if D.is_main():  # a kill inside save_sae may have left the checkpoints in its aside folder
        S.recover_sae_folder(out)
    D.barrier()
    existing = list_checkpoints(out)
    if existing and not resume:
        raise TrainError(f"{out} holds checkpoints of an earlier run (last: {existing[-1].name}); "
                         "pass --resume to continue it, or choose another out folder")
    source = open_source(cfg, activations, model)
    if model is None and isinstance(source, StreamSource):
        model = source.model
    try:
        cfg.sae.check_width(cfg.sae.resolved_d_sae(source.d_in),
                            f" = expansion_factor {cfg.sae.expansion_factor} x d_in {source.d_in}")
    except ValueError as e:
        raise TrainError(str(e)) from e
    state = init_state(cfg, source.d_in)
    if resume and existing:
        resume_from_latest(state, cfg, existing)
    if cfg.normalize_activations == "expected_average_only_in" and state.scale is None:
        state.scale = estimate_scale(source, cfg)
    if cfg.init_b_dec == "median" and not (resume and existing):
        init_b_dec_at_median(state, source, cfg)
    logger = _wandb_logger(cfg) if D.is_main() else None
    started, start_tokens = time.perf_counter(), state.tokens
    batches = itertools.islice(source.batches(cfg.batch_size, cfg.seed), state.step, None)
    while state.step < cfg.total_steps:
        batch = next(batches)
        try:
            report = train_step(state, batch, cfg)
        except TrainingDiverged as e:
            written = list_checkpoints(out)
            kept = state.last_checkpoint or (written[-1] if written else None)
            where = f"the last good checkpoint {kept} is kept" if kept else "no checkpoint was written yet"
            raise TrainingDiverged(f"{e}; training stopped ({where}). Check the activations' scale (mean norm; "
                                   "normalize_activations = \"expected_average_only_in\" rescales them), then lower "
                                   "lr or max_grad_norm") from e
        report.tokens_per_s = (state.tokens - start_tokens) / max(time.perf_counter() - started, 1e-9)
        if progress is not None:
            progress(report)
        if logger is not None and state.step % cfg.log_every == 0:
            logger(report)
        if state.step == cfg.total_steps or (cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0):
            _save_on_main(state, cfg, out)  # the last one lets a run killed while saving the SAE finish
    elapsed = time.perf_counter() - started
    if D.is_main():
        finish(state, cfg, source, out, model, elapsed, state.tokens - start_tokens)
    D.barrier()
    return out


SAE_FOLDER = {"cfg.json", "sae_weights.safetensors", "sparsity.safetensors", METRICS_FILE, TRAIN_RECORD, CHECKPOINTS,
              "study_key.json"}
"""What an SAE folder written by saekit holds (the study adds study_key.json)."""


def _ours(name: str) -> bool:
    """A name saekit writes into an SAE folder (its files, checkpoints, a save's partial and aside folders)."""
    return name in SAE_FOLDER or name.startswith(".")


def _save_on_main(state: TrainState, cfg: TrainConfig, out: Path) -> None:
    """Rank 0 writes the checkpoint; the others wait for it."""
    if D.is_main():
        save_checkpoint(state, cfg, out)
    D.barrier()


def finish(state: TrainState, cfg: TrainConfig, source: ActivationSource, out: Path, model,
           elapsed: float, tokens_trained: int) -> Path:
    """Fold the input scale, save the SAE in SAELens' format, measure it, write the record."""
    from saekit import metrics as M

    sae = state.sae
    rule = getattr(source, "rule", None) or token_rule(cfg)   # a user's own source may not carry one
    if state.scale is not None:
        S.fold_activation_scale(sae, state.scale)
    S.set_metadata(sae, sae_metadata(cfg, rule, getattr(source, "provenance", None)))
    freq_F = state.window_fired_F / max(state.window_tokens, 1)
    S.save_sae(sae, out, log_sparsity_F=torch.log10(freq_F + 1e-10))
    loaded = S.load_sae(out)
    held = source.held_out(cfg.eval_tokens)
    metrics = {"activations": M.activation_metrics(loaded.sae, held, dense_threshold=cfg.dense_threshold)
               if held.shape[0] else None, "lm": None}
    if hasattr(source, "held_out_by_part"):   # a mix: the same metrics on each source's own held-out tokens
        metrics["by_source"] = {name: M.activation_metrics(loaded.sae, x, dense_threshold=cfg.dense_threshold)
                                for name, x in source.held_out_by_part(cfg.eval_tokens).items() if x.shape[0]}
        metrics["shares"] = dict(getattr(source, "shares"))
    if cfg.lm_metrics:
        texts = source.held_out_texts(cfg.eval_docs)
        if texts:
            model = model if model is not None else load_model(cfg.model, device=cfg.device)
            metrics["lm"] = M.lm_metrics(model, loaded.sae, cfg.hook, texts, max_tokens=cfg.max_tokens,
                                         rule=rule)
    metrics["training_window"] = {"tokens": state.window_tokens,
                                  "dead_fraction": float((freq_F == 0).float().mean()),
                                  "dense_fraction": float((freq_F > cfg.dense_threshold).float().mean())}
    metrics["token_rule"] = json.loads(rule.to_json())
    record = {"config": to_dict(cfg), "seed": cfg.seed, "token_rule": metrics["token_rule"], "versions": package_versions(),
              "steps": state.step, "tokens": state.tokens, "seconds_this_run": round(elapsed, 2),
              "tokens_per_s_this_run": round(tokens_trained / max(elapsed, 1e-9), 1),
              "d_in": source.d_in, "d_sae": cfg.sae.resolved_d_sae(source.d_in),
              "activation_scale_folded": state.scale, "metrics": metrics}
    atomic_write_json(out / METRICS_FILE, metrics)
    atomic_write_json(out / TRAIN_RECORD, record)
    return out


def read_metrics(folder: str | Path) -> dict:
    """The metrics.json written beside a trained SAE."""
    path = Path(folder) / METRICS_FILE
    if not path.exists():
        raise TrainError(f"{path} does not exist: not an SAE trained by saekit")
    return json.loads(path.read_text())


def _wandb_logger(cfg: TrainConfig):
    if not cfg.wandb:
        return None
    try:
        import wandb
    except ImportError as e:
        raise TrainError("wandb = true needs the wandb package: pip install wandb") from e
    run = wandb.init(project=cfg.wandb_project, config=to_dict(cfg))

    def log(r: StepReport) -> None:
        run.log({"loss": r.loss, "mse": r.mse, "l0": r.l0, "explained_variance": r.explained_variance,
                 "lr": r.lr, "dead_fraction": r.dead_fraction, "tokens_per_s": r.tokens_per_s}, step=r.step)
    return log
