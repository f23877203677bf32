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

Both work on any model loaded through saekit.model (a TransformerLens TransformerBridge) and
any sae-lens SAE. Positions: None (every token), a list of token indices (negative from the end)
or a boolean mask [T] or [B, T] (e.g. the real tokens of a right-padded batch).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence, Union

import torch

from saekit.tokens import TokenRule
from saekit.errors import SaekitError

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
    mask = position_mask(positions, act_BTD.shape[:2], act_BTD.device)
    if rule is None or not rule.uses_norm:
        return mask
    norm_ok = rule.norm_ok(act_BTD)
    return norm_ok if mask is None else mask & norm_ok


@dataclass
class Splice:
    """An SAE spliced into its hook point, with feature edits, keeping the reconstruction error."""
    sae: object
    edits: Sequence[FeatureEdit] = ()
    hook: str | None = None
    """The hook point (default: the SAE's cfg.metadata.hook_name)."""
    positions: Positions = None
    rule: TokenRule | None = None
    """Narrows `positions` to the tokens a norm-filtering token rule counts (its position part is
    expressed through `positions`)."""

    def __post_init__(self) -> None:
        self.hook = self.hook or self.sae.cfg.metadata.hook_name
        if self.hook is None:
            raise InterventionError("the SAE names no hook (cfg.metadata.hook_name); pass hook=")
        d_sae = int(self.sae.cfg.d_sae)
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
        if self._affine:
            # decode(f') + x - decode(f) = x + (f' - f) @ W_dec for an affine decoder: touch edited columns only
            idx = torch.tensor(self._edited, device=feats.device, dtype=torch.long)
            sub = feats[..., idx]
            delta = edit_features(feats, self.edits)[..., idx] - sub if len(idx) else sub
            out = x + delta @ sae.W_dec[idx] if len(idx) else x
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


Edit = Union[Splice, Steer]


def check_edits(model, edits: Sequence[Edit]) -> None:
    """Every hook exists on the model and every width fits; raises InterventionError otherwise."""
    from saekit.model import d_model

    hooks = set(model.hook_dict)
    for e in edits:
        if e.hook not in hooks:
            resid = sorted(h for h in hooks if h.endswith("hook_resid_post"))
            raise InterventionError(f"the model has no hook {e.hook!r} (residual hooks: {resid[:2]} ... {resid[-1:]})")
        width = e.sae.cfg.d_in if isinstance(e, Splice) else e.unit.numel()
        if "hook_resid" in e.hook and width != d_model(model):
            what = "SAE d_in" if isinstance(e, Splice) else "steering vector length"
            raise InterventionError(f"{what} is {width} but {e.hook} has width {d_model(model)}")


@contextmanager
def patched(model, edits: Sequence[Edit] | Edit) -> Iterator[None]:
    """Apply edits for the duration of the block; their hooks are removed on exit, even on error."""
    edits = [edits] if isinstance(edits, (Splice, Steer)) else list(edits)
    check_edits(model, edits)
    points = []
    try:
        for e in edits:
            points.append(model.hook_dict[e.hook])
            points[-1].add_hook(e, dir="fwd")
        yield
    finally:
        for point in points:
            _remove(point, edits)


def _remove(point, edits) -> None:
    """Remove only our hook functions from a hook point, leaving others' hooks in place."""
    kept = []
    for handle in list(point.fwd_hooks):
        if any(handle.user_hook is e for e in edits):
            handle.hook.remove()
        else:
            kept.append(handle)
    point.fwd_hooks = kept


# ---------------------------------------------------------------------------- measurements


@torch.no_grad()
def mean_resid_norm(model, hook: str, token_ids: Sequence[Sequence[int]], rule: TokenRule = TokenRule()) -> float:
    """Mean L2 norm of the activations at `hook` over the tokens `rule` counts (by default all but
    the first, an attention sink with an outsized norm)."""
    from saekit.model import n_layers

    total, count = 0.0, 0
    seen: dict[str, torch.Tensor] = {}

    def grab(act, hook):
        seen["a"] = act.detach()
        return act

    layer = _layer(hook)
    stop = layer + 1 if layer is not None and layer + 1 < n_layers(model) else None
    device = next(model.parameters()).device
    for ids in token_ids:
        model.run_with_hooks(torch.tensor([list(ids)], device=device), fwd_hooks=[(hook, grab)],
                             stop_at_layer=stop, return_type=None)
        x_TD = seen["a"][0].float()
        norms = x_TD.norm(dim=-1)[rule.keep(torch.arange(len(x_TD), device=x_TD.device), x_TD)]
        total += float(norms.sum())
        count += len(norms)
    if count == 0:
        raise InterventionError("no tokens to measure the residual norm on")
    return total / count


def _layer(hook: str) -> int | None:
    parts = hook.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit() else None
