"""Which token positions count: one rule shared by training, metrics, ranking, examples and experiments.

On SmolLM2 the first token of every text is an attention sink whose residual norm is about 95x
the others'. A statistic that includes it is dominated by it, so every stage asks this module
which positions to keep, and every stored result records the rule (`TokenRule.to_json`).

The default counts every position except the first. Optionally positions whose residual norm
exceeds `max_norm_ratio` times a reference median norm are dropped too; the reference is measured
once (`with_reference`) and stored with the rule, so the same tokens are dropped everywhere.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping

import torch

from saekit.errors import SaekitError


class TokenRuleError(SaekitError, ValueError):
    """A token rule that cannot be applied (bad field, or no reference norm for the norm filter)."""


@dataclass(frozen=True)
class TokenRule:
    skip_first: int = 1
    """Positions dropped at the start of every text (1: the attention-sink first token)."""
    max_norm_ratio: float = 0.0
    """Also drop positions whose residual norm exceeds this multiple of the reference median (0: off)."""
    reference_norm: float | None = None
    """Median residual norm of the positions kept by `skip_first`, measured once on the activations."""

    def __post_init__(self):
        if not isinstance(self.skip_first, int) or self.skip_first < 0:
            raise TokenRuleError(f"skip_first must be a whole number >= 0, got {self.skip_first!r}")
        if not math.isfinite(self.max_norm_ratio) or self.max_norm_ratio < 0:
            raise TokenRuleError(f"max_norm_ratio must be a finite number >= 0 (0 = off), got {self.max_norm_ratio!r}")
        if self.max_norm_ratio and 0 < self.max_norm_ratio <= 1:
            raise TokenRuleError(f"max_norm_ratio {self.max_norm_ratio} would drop about half the tokens or more; "
                                 "use a multiple above 1 (e.g. 10) or 0 for off")

    @property
    def uses_norm(self) -> bool:
        return self.max_norm_ratio > 0

    def describe(self) -> str:
        """A short human-readable statement, e.g. 'positions >= 1' (stored next to results)."""
        text = f"positions >= {self.skip_first}" if self.skip_first else "all positions"
        if self.uses_norm:
            ref = f"{self.reference_norm:.4g}" if self.reference_norm is not None else "unmeasured"
            text += f", residual norm <= {self.max_norm_ratio:g} x median ({ref})"
        return text

    def to_json(self) -> str:
        return json.dumps(dict(asdict(self), description=self.describe()), sort_keys=True)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> "TokenRule":
        """A rule from its stored JSON/dict form (unknown keys such as 'description' are ignored)."""
        data = dict(data or {})
        return cls(skip_first=int(data.get("skip_first", 1)), max_norm_ratio=float(data.get("max_norm_ratio", 0.0)),
                   reference_norm=data.get("reference_norm"))

    def with_reference(self, x_TD: torch.Tensor, position_T: torch.Tensor) -> "TokenRule":
        """The rule with its reference median norm measured on these activations (no-op when unused)."""
        if not self.uses_norm or self.reference_norm is not None:
            return self
        norms = x_TD.float().norm(dim=-1)[position_T >= self.skip_first]
        if norms.numel() == 0:
            raise TokenRuleError("no positions left to measure the reference norm on")
        return replace(self, reference_norm=float(norms.median()))

    def measured_on(self, shards) -> "TokenRule":
        """The rule with its reference measured on the first of `shards` (dicts with "acts" and
        "position", as Activations.iter_shard_tensors yields), read only when the rule needs it."""
        if not self.uses_norm or self.reference_norm is not None:
            return self
        first = next(iter(shards))
        return self.with_reference(first["acts"], first["position"])

    def keep_positions(self, position_T: torch.Tensor) -> torch.Tensor:
        """Boolean mask [T] of the positions `skip_first` keeps (the norm filter not applied)."""
        return position_T >= self.skip_first

    def norm_ok(self, x_SD: torch.Tensor) -> torch.Tensor:
        """Boolean mask [...] of the vectors the norm filter keeps (all of them when it is off)."""
        if not self.uses_norm:
            return torch.ones(x_SD.shape[:-1], dtype=torch.bool, device=x_SD.device)
        if self.reference_norm is None:
            raise TokenRuleError("the norm filter needs a reference norm: call with_reference() first")
        return x_SD.float().norm(dim=-1) <= self.max_norm_ratio * self.reference_norm

    def keep(self, position_T: torch.Tensor, x_TD: torch.Tensor | None = None) -> torch.Tensor:
        """Boolean mask [T] of the positions that count."""
        mask_T = self.keep_positions(position_T)
        if self.uses_norm:
            if x_TD is None:
                raise TokenRuleError("the norm filter needs the activations, not only the positions")
            mask_T &= self.norm_ok(x_TD)
        return mask_T

    def keep_padded(self, mask_BT: torch.Tensor, x_BTD: torch.Tensor | None = None) -> torch.Tensor:
        """The same rule for a right-padded batch [B, T] (positions are column indices)."""
        position_BT = torch.arange(mask_BT.shape[1], device=mask_BT.device).expand_as(mask_BT)
        flat = self.keep(position_BT.reshape(-1), None if x_BTD is None else x_BTD.reshape(-1, x_BTD.shape[-1]))
        return mask_BT.bool() & flat.view_as(mask_BT)


DEFAULT = TokenRule()
