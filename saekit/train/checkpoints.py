"""Checkpoints: the training state in safetensors and JSON (no pickle), written by renames.

A checkpoint holds the SAE, Adam's moments, the firing statistics and the step; the data order is
a pure function of (seed, epoch), so a resumed run sees the same batches and ends at the same weights.

    checkpoints/step-00000200/{state.safetensors,state.json}
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from saekit import __version__
from saekit import sae as S
from saekit.artifacts import content_hash, match_umask
from saekit.config import to_dict
from saekit.train.config import TrainConfig
from saekit.train.errors import CorruptCheckpoint, TrainError

CHECKPOINTS = "checkpoints"
CKPT_TENSORS = "state.safetensors"
CKPT_STATE = "state.json"


@dataclass
class TrainState:
    """Everything a resumed run needs: the SAE, its optimizer, the firing statistics and the step."""
    sae: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step: int = 0
    tokens: int = 0
    scale: float | None = None
    first_loss: float | None = None
    steps_since_fired_F: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    window_fired_F: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    window_tokens: int = 0
    last_checkpoint: Path | None = None


def config_identity(cfg: TrainConfig) -> str:
    """What must match for a checkpoint to be resumed (everything but logging and evaluation)."""
    d = to_dict(cfg)
    for k in ("out", "wandb", "wandb_project", "log_every", "eval_tokens", "eval_docs", "lm_metrics",
              "checkpoint_every", "keep_checkpoints", "dense_threshold", "activations"):
        d.pop(k)
    return content_hash(d)


def save_checkpoint(state: TrainState, cfg: TrainConfig, folder: Path) -> Path:
    """Write state.safetensors + state.json under a temporary name, then rename (never half a checkpoint)."""
    target = folder / CHECKPOINTS / f"step-{state.step:08d}"
    tmp = target.with_name(f".{target.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {f"sae.{k}": v.cpu() for k, v in S.training_state_tensors(state.sae).items()}
    opt = state.optimizer.state_dict()
    for i, s in opt["state"].items():
        for key, value in s.items():
            tensors[f"optim.{i}.{key}"] = value.detach().cpu().contiguous().reshape(value.shape)
    tensors["trainer.steps_since_fired"] = state.steps_since_fired_F.contiguous()
    tensors["trainer.window_fired"] = state.window_fired_F.contiguous()
    save_file(tensors, str(tmp / CKPT_TENSORS))
    match_umask(tmp / CKPT_TENSORS)
    meta = {"step": state.step, "tokens": state.tokens, "scale": state.scale, "first_loss": state.first_loss,
            "window_tokens": state.window_tokens, "param_groups": opt["param_groups"],
            "identity": config_identity(cfg), "config": to_dict(cfg), "saekit_version": __version__}
    (tmp / CKPT_STATE).write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    state.last_checkpoint = target
    for old in list_checkpoints(folder)[:-cfg.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(folder: Path) -> list[Path]:
    root = Path(folder) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith("step-") and (p / CKPT_STATE).exists())


def load_checkpoint(state: TrainState, cfg: TrainConfig, path: Path) -> None:
    """Restore SAE, optimizer, firing statistics and step from a checkpoint folder.

    Unreadable files raise CorruptCheckpoint; a checkpoint of another config raises TrainError.
    """
    try:
        meta = json.loads((path / CKPT_STATE).read_text())
        tensors = load_file(str(path / CKPT_TENSORS))
    except (OSError, ValueError, SafetensorError) as e:
        raise CorruptCheckpoint(f"checkpoint {path} cannot be read ({e})") from e
    if meta.get("identity") != config_identity(cfg):
        old = meta.get("config", {})
        diff = sorted(k for k, v in to_dict(cfg).items() if old.get(k) != v)
        raise TrainError(f"checkpoint {path} was written with a different config (differs in {diff}); "
                         "resume with the same config or train into another out folder")
    try:
        _apply_checkpoint(state, meta, tensors)
    except (KeyError, RuntimeError, ValueError) as e:
        raise CorruptCheckpoint(f"checkpoint {path} is incomplete ({type(e).__name__}: {e})") from e
    state.last_checkpoint = path


def _apply_checkpoint(state: TrainState, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    S.load_training_state(state.sae, {k[4:]: v for k, v in tensors.items() if k.startswith("sae.")})
    opt_state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, i, key = k.split(".", 2)
            opt_state.setdefault(int(i), {})[key] = v
    state.optimizer.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
    state.steps_since_fired_F = tensors["trainer.steps_since_fired"].clone()
    state.window_fired_F = tensors["trainer.window_fired"].clone()
    state.step, state.tokens = meta["step"], meta["tokens"]
    state.scale, state.first_loss = meta["scale"], meta["first_loss"]
    state.window_tokens = meta["window_tokens"]


def resume_from_latest(state: TrainState, cfg: TrainConfig, checkpoints: list[Path]) -> Path:
    """Load the newest readable checkpoint, skipping damaged ones with a warning.

    The data order is a pure function of the step, so resuming from an older checkpoint only
    repeats some steps and still ends at the uninterrupted run's weights.
    """
    skipped = []
    for path in reversed(checkpoints):
        try:
            load_checkpoint(state, cfg, path)
        except CorruptCheckpoint as e:
            skipped.append(str(e))
            continue
        if skipped:
            warnings.warn(f"{'; '.join(skipped)}; resuming from the older {path} instead", stacklevel=2)
        return path
    raise TrainError(f"no checkpoint can be read: {'; '.join(skipped)}. Delete {checkpoints[0].parent} "
                     "to train from scratch")
