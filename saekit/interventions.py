"""Interventions: small edit objects applied inside a scope that always removes its hooks.

    with patched(model, [Splice(sae, [Clamp([12], 8.0)]), Steer(hook, vector, 0.1, norm)]):
        logits = model(tokens)

`Splice` puts an SAE into its hook point and keeps the reconstruction error, so that only the
edit changes the output: with features f = encode(x) and edited features f',

    out = decode(f') + (x - decode(f))

which is x itself when nothing is edited. For SAEs whose decoder is affine (no output
normalisation: every architecture saekit trains) this is computed as x + (f' - f)[:, S] @ W_dec[S]
over the edited features S only, which is the same number up to rounding and costs one encoder
matmul; otherwise decode is called twice, literally.

`Steer` adds strength x scale x unit(direction) at a hook, where scale is the mean residual norm
at that layer (`mean_resid_norm`), as the paper defines steering strength.

`Zero` replaces the activation with zeros (the zero-ablation baseline of the SAE metrics).

All work on any model loaded through saekit.model, whose `add_hooks` scopes the hooks, and any
SAE the saekit.sae adapter reads; this module calls neither backend directly. Positions: None
(every token), a list of token indices (negative from the end) or a boolean mask [T] or [B, T]
(e.g. the real tokens of a right-padded batch).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence, Union

import torch

from saekit.errors import SaekitError
from saekit.model import add_hooks, capture, d_model, hook_names
from saekit.sae import d_in_of, d_sae_of, decoder_FD, hook_of
from saekit.tokens import TokenRule

Positions = Union[None, Sequence[int], torch.Tensor]


class InterventionError(SaekitError, ValueError):
    """An edit does not fit the SAE or model it is applied to; raised before any forward pass."""


# ---------------------------------------------------------------------------- feature edits


def _index(features: Sequence[int] | int) -> tuple[int, ...]:
    out = (int(features),) if isinstance(features, int) else tuple(int(f) for f in features)
    if not out:
        raise InterventionError("a feature edit needs at least one feature")
    return out


@dataclass(frozen=True)
class Ablate:
    """Set features to 0."""
    features: tuple[int, ...]

    def __init__(self, features: Sequence[int] | int):
        object.__setattr__(self, "features", _index(features))

    def apply(self, feats_NS: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(feats_NS)


@dataclass(frozen=True)
class Clamp:
    """Set features to fixed values (one value, or one per feature)."""
    features: tuple[int, ...]
    values: tuple[float, ...]

    def __init__(self, features: Sequence[int] | int, values: float | Sequence[float]):
        idx = _index(features)
        vals = (float(values),) * len(idx) if isinstance(values, (int, float)) else tuple(float(v) for v in values)
        if len(vals) != len(idx):
            raise InterventionError(f"Clamp got {len(idx)} features but {len(vals)} values")
        object.__setattr__(self, "features", idx)
        object.__setattr__(self, "values", vals)

    def apply(self, feats_NS: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.values, dtype=feats_NS.dtype, device=feats_NS.device).expand_as(feats_NS)


@dataclass(frozen=True)
class Scale:
    """Multiply features by a factor."""
    features: tuple[int, ...]
    factor: float

    def __init__(self, features: Sequence[int] | int, factor: float):
        object.__setattr__(self, "features", _index(features))
        object.__setattr__(self, "factor", float(factor))

    def apply(self, feats_NS: torch.Tensor) -> torch.Tensor:
        return feats_NS * self.factor


FeatureEdit = Union[Ablate, Clamp, Scale]


def edit_features(feats_NF: torch.Tensor, edits: Sequence[FeatureEdit]) -> torch.Tensor:
    """The edited copy of a [..., F] feature tensor (later edits win on shared features)."""
    out = feats_NF.clone()
    for e in edits:
        idx = torch.tensor(e.features, device=out.device)
        out[..., idx] = e.apply(out[..., idx])
    return out


# ---------------------------------------------------------------------------- hooks


def position_mask(positions: Positions, shape_BT: tuple[int, int], device) -> torch.Tensor | None:
    """A boolean [B, T] mask of the positions to edit, or None for every position."""
    B, T = shape_BT
    if positions is None:
        return None
    if isinstance(positions, torch.Tensor):
        mask = positions.to(device=device, dtype=torch.bool)
        if mask.dim() == 1:
            mask = mask[None].expand(B, -1)
        if mask.shape != (B, T):
            raise InterventionError(f"position mask of shape {tuple(mask.shape)} does not fit activations [B={B}, T={T}]")
        return mask
    mask = torch.zeros(B, T, dtype=torch.bool, device=device)
    for p in positions:
        if not -T <= int(p) < T:
            continue  # a position past a short prompt's end: nothing to edit there
        mask[:, int(p)] = True
    return mask


def _edit_mask(positions: Positions, rule: TokenRule | None, act_BTD: torch.Tensor) -> torch.Tensor | None:
    """Where an edit applies: the given positions, less those a norm-filtering token rule drops."""
    mask = position_mask(positions, (act_BTD.shape[0], act_BTD.shape[1]), act_BTD.device)
    if rule is None or not rule.uses_norm:
        return mask
    norm_ok = rule.norm_ok(act_BTD)
    return norm_ok if mask is None else mask & norm_ok


@dataclass
class Splice:
    """An SAE spliced into its hook point, with feature edits, keeping the reconstruction error."""
    sae: Any
    edits: Sequence[FeatureEdit] = ()
    hook: str | None = None
    """The hook point (default: the hook the SAE was trained on)."""
    positions: Positions = None
    rule: TokenRule | None = None
    """Narrows `positions` to the tokens a norm-filtering token rule counts (its position part is
    expressed through `positions`)."""
    keep_error: bool = True
    """False: the output is the (edited) reconstruction alone, as the SAE metrics' spliced loss needs."""

    def __post_init__(self) -> None:
        self.hook = self.hook or hook_of(self.sae)
        if self.hook is None:
            raise InterventionError("the SAE names no hook (cfg.metadata.hook_name); pass hook=")
        d_sae = d_sae_of(self.sae)
        for e in self.edits:
            bad = [f for f in e.features if not 0 <= f < d_sae]
            if bad:
                raise InterventionError(f"feature index {bad} out of range: the SAE has {d_sae} features (0..{d_sae - 1})")
        self._affine = getattr(self.sae.cfg, "normalize_activations", "none") in ("none", None)
        self._edited = sorted({f for e in self.edits for f in e.features})

    def __call__(self, act_BTD: torch.Tensor, hook=None) -> torch.Tensor:
        sae = self.sae
        x = act_BTD.to(sae.dtype)
        feats = sae.encode(x)
        if not self.keep_error:
            out = sae.decode(edit_features(feats, self.edits))
        elif self._affine:
            # decode(f') + x - decode(f) = x + (f' - f) @ W_dec for an affine decoder: touch edited columns only
            idx = torch.tensor(self._edited, device=feats.device, dtype=torch.long)
            sub = feats[..., idx]
            delta = edit_features(feats, self.edits)[..., idx] - sub if len(idx) else sub
            out = x + delta @ decoder_FD(sae)[idx] if len(idx) else x
        else:
            # one decode call for both: sae-lens' output normalisation consumes the statistics encode() stored
            both = sae.decode(torch.stack([edit_features(feats, self.edits), feats]))
            out = both[0] + (x - both[1])
        out = out.to(act_BTD.dtype)
        mask = _edit_mask(self.positions, self.rule, act_BTD)
        return out if mask is None else torch.where(mask[..., None], out, act_BTD)


@dataclass
class Steer:
    """Add strength x scale x unit(direction) at a hook (scale: the layer's mean residual norm)."""
    hook: str
    direction: torch.Tensor
    strength: float
    scale: float = 1.0
    positions: Positions = None
    rule: TokenRule | None = None
    """As in Splice: positions whose norm the token rule filters out are left alone."""
    unit: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        d = torch.as_tensor(self.direction, dtype=torch.float32).flatten()
        norm = d.norm()
        if not torch.isfinite(norm) or norm == 0:
            raise InterventionError(f"steering direction at {self.hook} has norm {float(norm)}; it must be non-zero")
        self.unit = d / norm

    @property
    def added(self) -> torch.Tensor:
        return self.strength * self.scale * self.unit

    def __call__(self, act_BTD: torch.Tensor, hook=None) -> torch.Tensor:
        add_D = self.added.to(device=act_BTD.device, dtype=act_BTD.dtype)
        mask = _edit_mask(self.positions, self.rule, act_BTD)
        if mask is None:
            return act_BTD + add_D
        return act_BTD + mask[..., None].to(act_BTD.dtype) * add_D


@dataclass
class Zero:
    """Replace the activation at a hook with zeros (at `positions`, less those `rule` filters out)."""
    hook: str
    positions: Positions = None
    rule: TokenRule | None = None

    def __call__(self, act_BTD: torch.Tensor, hook=None) -> torch.Tensor:
        mask = _edit_mask(self.positions, self.rule, act_BTD)
        zeros = torch.zeros_like(act_BTD)
        return zeros if mask is None else torch.where(mask[..., None], zeros, act_BTD)


Edit = Union[Splice, Steer, Zero]


def _width(e: Edit) -> int | None:
    if isinstance(e, Splice):
        return d_in_of(e.sae)
    return e.unit.numel() if isinstance(e, Steer) else None


def check_edits(model, edits: Sequence[Edit]) -> None:
    """Every hook exists on the model and every width fits; raises InterventionError otherwise."""
    hooks = set(hook_names(model))
    for e in edits:
        if e.hook not in hooks:
            resid = sorted(h for h in hooks if h.endswith("hook_resid_post"))
            raise InterventionError(f"the model has no hook {e.hook!r} (residual hooks: {resid[:2]} ... {resid[-1:]})")
        width = _width(e)
        if width is not None and "hook_resid" in e.hook and width != d_model(model):
            what = "SAE d_in" if isinstance(e, Splice) else "steering vector length"
            raise InterventionError(f"{what} is {width} but {e.hook} has width {d_model(model)}")


@contextmanager
def patched(model, edits: Sequence[Edit] | Edit) -> Iterator[None]:
    """Apply edits for the duration of the block; their hooks are removed on exit, even on error."""
    edits = [edits] if isinstance(edits, (Splice, Steer, Zero)) else list(edits)
    check_edits(model, edits)
    with add_hooks(model, [(str(e.hook), e) for e in edits]):
        yield


# ---------------------------------------------------------------------------- measurements


@torch.no_grad()
def mean_resid_norm(model, hook: str, token_ids: Sequence[Sequence[int]], rule: TokenRule = TokenRule()) -> float:
    """Mean L2 norm of the activations at `hook` over the tokens `rule` counts (by default all but
    the first, an attention sink with an outsized norm)."""
    total, count = 0.0, 0
    for ids in token_ids:
        x_TD = capture(model, torch.tensor([list(ids)]), None, [hook])[hook][0].float()
        norms = x_TD.norm(dim=-1)[rule.keep(torch.arange(len(x_TD), device=x_TD.device), x_TD)]
        total += float(norms.sum())
        count += len(norms)
    if count == 0:
        raise InterventionError("no tokens to measure the residual norm on")
    return total / count
