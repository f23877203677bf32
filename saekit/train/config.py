"""The training config: trainer fields at the top, the SAE's own in an `[sae]` table.

    model = "tiny"
    hook = "blocks.2.hook_resid_post"
    lr = 3e-3
    [sae]
    architecture = "topk"       # picks the config class registered in saekit.sae
    expansion_factor = 4
    k = 8

Configs written before the `[sae]` table (its keys at the top level) still load: the keys are moved
into the table with a FutureWarning naming the new keys.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from saekit import __version__
from saekit.config import ConfigError, from_dict, load_toml, set_key
from saekit.model import DEFAULT_MODEL, hf_model_id, parse_dtype
from saekit.sae import SAEConfig, TopKConfig, config_class
from saekit.tokens import TokenRule


@dataclass
class TrainConfig:
    model: str = DEFAULT_MODEL
    """Model folder, hub name, "smollm2-135m-instruct" (embedded default), "gemma3-270m" (saekit[gemma]),
    "qwen2.5-coder-1.5b-instruct" (saekit[qwen]) or "tiny"."""
    hook: str = "blocks.20.hook_resid_post"
    """TransformerLens hook whose activations the SAE reconstructs."""
    activations: str = ""
    """Harvest folder (`saekit harvest --out`); empty: stream activations from the model over `corpus`."""
    mix: list[str] = field(default_factory=list)
    """More harvest folders to train on beside `activations` (broad text, say): each gives its
    `mix_shares` share of every batch, `activations` the rest; each keeps its own held-out documents."""
    mix_shares: list[float] = field(default_factory=list)
    """The share of every batch each `mix` folder gives (together below 1)."""
    corpus: str = "shipped"
    """Corpus for streaming (ignored with `activations`): "shipped" or a file / dataset, as for harvest."""
    out: str = "artifacts/saes/default"
    """Output folder: the SAE in SAELens' format, metrics, checkpoints."""
    sae: SAEConfig = field(default_factory=TopKConfig)
    """The `[sae]` table: `architecture` and that architecture's fields (saekit.sae.ARCHITECTURES)."""
    lr: float = 4e-4
    lr_scheduler: Literal["constant", "cosine"] = "constant"
    lr_warm_up_steps: int = 0
    lr_decay_steps: int = 0
    """Linear decay to zero over the last N steps (sae-lens' lr_decay_steps)."""
    lr_end: float = 0.0
    """Floor of the cosine schedule; 0 means lr / 10."""
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    max_grad_norm: float = 1.0
    batch_size: int = 4096
    """Tokens per training step."""
    training_tokens: int = 2_000_000
    seed: int = 0
    dtype: str = "float32"
    """SAE parameter dtype."""
    device: str = "cpu"
    normalize_activations: Literal["none", "expected_average_only_in", "layer_norm"] = "none"
    """expected_average_only_in scales inputs to mean norm sqrt(d_in) and folds the scale into the saved weights."""
    n_batches_for_norm_estimate: int = 8
    init_b_dec: Literal["zeros", "median"] = "zeros"
    """median: start the decoder bias at the geometric median of the first batches (after scaling), so the
    latents start on the data's spread rather than on its offset from zero (a residual stream can sit far
    from the origin: Gemma's does)."""
    dead_feature_handling: Literal["auxk", "resample", "none"] = "auxk"
    """auxk: the architecture's auxiliary loss on dead latents (TopK's AuxK, JumpReLU's pre-activation
    loss); resample: re-initialise dead latents towards badly reconstructed inputs (standard SAEs)."""
    dead_feature_window: int = 200
    """A latent that has not fired for this many steps counts as dead."""
    resample_every: int = 500
    """Steps between resamplings (dead_feature_handling = resample)."""
    exclude_first_token: bool = True
    """Leave out each text's first token: its residual stream is an outlier (attention sink)."""
    max_norm_ratio: float = 0.0
    """Also leave out positions whose residual norm exceeds this multiple of the median (0: off).
    With exclude_first_token this is the token rule (saekit.tokens) stored with the SAE."""
    shuffle_buffer_tokens: int = 65536
    max_tokens: int = 512
    """Streaming: texts are truncated to this many tokens."""
    stream_batch_size: int = 8
    """Streaming: texts per model forward pass."""
    checkpoint_every: int = 100
    """Steps between checkpoints (0: none)."""
    keep_checkpoints: int = 2
    max_loss_ratio: float = 1000.0
    """Stop when the loss exceeds this multiple of the first step's loss (exploding)."""
    eval_tokens: int = 50_000
    """Held-out tokens for the activation metrics."""
    eval_docs: int = 48
    """Held-out texts for the language-model loss metrics."""
    lm_metrics: bool = True
    """Measure LM loss recovered and KL with the SAE spliced in (loads the model if not given)."""
    dense_threshold: float = 0.1
    """A latent firing on more than this fraction of held-out tokens counts as dense."""
    wandb: bool = False
    """Log to Weights & Biases (off unless asked for)."""
    wandb_project: str = "saekit"
    log_every: int = 10

    def validate(self) -> None:
        for name in ("batch_size", "training_tokens", "shuffle_buffer_tokens", "max_tokens",
                     "stream_batch_size", "dead_feature_window", "resample_every", "log_every",
                     "n_batches_for_norm_estimate", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.training_tokens < self.batch_size:
            raise ValueError(f"training_tokens ({self.training_tokens}) is less than one batch ({self.batch_size})")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.lr_end < 0:
            raise ValueError(f"lr_end must be >= 0, got {self.lr_end}")
        if self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be positive, got {self.max_grad_norm}")
        if self.max_loss_ratio <= 1:
            raise ValueError(f"max_loss_ratio must exceed 1, got {self.max_loss_ratio}")
        if self.lr_warm_up_steps + self.lr_decay_steps > self.total_steps:
            raise ValueError("lr_warm_up_steps + lr_decay_steps exceed the number of steps")
        if self.checkpoint_every < 0:
            raise ValueError("checkpoint_every must be >= 0")
        for name in ("eval_docs", "eval_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if len(self.mix) != len(self.mix_shares):
            raise ValueError(f"mix names {len(self.mix)} folders but mix_shares gives {len(self.mix_shares)} shares")
        if self.mix and not self.activations:
            raise ValueError("mix needs activations: the harvest folder that gives the rest of every batch")
        if self.mix and (min(self.mix_shares) <= 0 or sum(self.mix_shares) >= 1):
            raise ValueError(f"mix_shares {self.mix_shares} must each be above 0 and together below 1 "
                             "(activations gives the rest)")
        self.sae.check_training(self.normalize_activations, self.dead_feature_handling)
        if not (0 < self.dense_threshold < 1):
            raise ValueError("dense_threshold must be between 0 and 1")
        parse_dtype(self.dtype)

    @property
    def total_steps(self) -> int:
        return self.training_tokens // self.batch_size


# ---------------------------------------------------------------------------- loading


LEGACY_SAE_KEYS = ("architecture", "d_sae", "expansion_factor", "k", "l1_coefficient", "l1_warm_up_steps",
                   "l0_coefficient", "jumprelu_init_threshold", "jumprelu_bandwidth", "aux_loss_coefficient",
                   "fast_topk")
"""Keys of the flat configs written before the `[sae]` table; they now live in it."""


def nest_flat_keys(data: dict[str, Any], where: str) -> dict[str, Any]:
    """Move a flat config's SAE keys into its `[sae]` table, with a FutureWarning naming the new keys.

    Keys of other architectures (the flat config held every architecture's) are dropped: they never
    had an effect on this one."""
    flat = [k for k in LEGACY_SAE_KEYS if k in data]
    if not flat:
        return data
    data, table = dict(data), dict(data.get("sae") or {})
    both = [k for k in flat if k in table]
    if both:
        raise ConfigError(f"{where}: {both} given both at the top level and in [sae]; keep the [sae] ones")
    table.update({k: data.pop(k) for k in flat})
    own = {f.name for f in fields(config_class(table.get("architecture", "topk"), f"{where}.sae"))}
    dropped = sorted(k for k in table if k not in own)
    data["sae"] = {k: v for k, v in table.items() if k in own}
    moved = ", ".join(f"{k} -> sae.{k}" for k in flat if k in own)
    gone = f"; dropped {dropped}: the {table.get('architecture', 'topk')} SAE has no such fields" if dropped else ""
    warnings.warn(f"{where}: SAE keys at the top level are deprecated; put them in an [sae] table "
                  f"({moved}){gone}", FutureWarning, stacklevel=3)
    return data


def train_config(data: dict[str, Any], where: str = "train config") -> TrainConfig:
    """A TrainConfig from a TOML-shaped dict; unknown fields are ConfigErrors naming the field."""
    return from_dict(TrainConfig, nest_flat_keys(data, where), where)


def load_train_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    """A TrainConfig from a TOML file and optional overrides ("lr", or "sae.k" for the `[sae]` table)."""
    data = nest_flat_keys(load_toml(path), str(path))
    for key, value in nest_flat_keys(dict(overrides or {}), "overrides").items():
        if key == "sae" and isinstance(value, dict):
            for inner, v in value.items():
                set_key(data, f"sae.{inner}", v)
        else:
            set_key(data, key, value)
    return train_config(data, str(path))


# ---------------------------------------------------------------------------- what the config means


def token_rule(cfg: TrainConfig) -> TokenRule:
    """The positions this config trains on; ranking, examples and experiments reuse it."""
    return TokenRule(skip_first=int(cfg.exclude_first_token), max_norm_ratio=cfg.max_norm_ratio)


def sae_metadata(cfg: TrainConfig, rule: TokenRule, provenance: dict | None = None) -> dict:
    """What a user needs to rebuild the SAE's training activations, in sae-lens' metadata fields where they
    exist: the model's hub id, BOS, context, dataset and counted positions (seqpos_slice; the full rule,
    norm filter included, in saekit_token_rule). `provenance` is the activation source's part: dataset,
    its hash, context size and BOS (a source of the user's own tensors has none)."""
    return {"model_name": hf_model_id(cfg.model), "hook_name": cfg.hook, "prepend_bos": False,
            "seqpos_slice": [rule.skip_first, None], "exclude_special_tokens": False, "saekit_model": cfg.model,
            "saekit_token_rule": json.loads(rule.to_json()), "saekit_version": __version__} | (provenance or {})
