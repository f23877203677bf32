"""What a spec resolves to: targets, the settings measured, and the rows they store.

A condition resolves to a `Target` (features with their statistics, or directions at hooks) and
random controls of the same shape; a `Setting` is one condition at one strength (or the clean
model), and a task turns each setting into rows of measurements.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from saekit.experiments.spec import ConditionSpec, ExperimentError, ExperimentSpec, Prompts
from saekit.tokens import TokenRule

Row = dict[str, Any]


@dataclass
class Target:
    """One thing intervened on: features with values, or directions at hooks."""
    label: str
    features: list[int] = field(default_factory=list)
    max_activation: list[float] = field(default_factory=list)
    firing_rate: list[float] = field(default_factory=list)
    vectors: dict[str, list[float]] = field(default_factory=dict)
    """hook -> direction (steering)."""


@dataclass
class Setting:
    """One condition at one strength, ready to turn into edits."""
    condition: str
    kind: str
    target: Target
    strength: float | None
    is_control: bool

    def key(self) -> tuple:
        return (self.kind, tuple(self.target.features), tuple(sorted(self.target.vectors)),
                self.target.label if self.target.vectors else "", self.strength)


BASELINE = "none"
"""The condition name (and kind) of the clean model's setting."""


def baseline_setting(strength: float | None = 0.0) -> Setting:
    return Setting(BASELINE, BASELINE, Target(BASELINE), strength, False)


@dataclass
class TaskInputs:
    """What a task looked up for itself while the spec resolved (Task.resolve returns it)."""
    vectors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    """hook -> emotion -> vector, for readings."""
    emotion_features: dict[str, list[int]] = field(default_factory=dict)
    """emotion -> its top selective features (feature readings)."""
    controls: dict[str, list[Target]] = field(default_factory=dict)
    """"<task>:<emotion>" -> matched random feature sets, one per control draw."""
    lookups: dict[str, Any] = field(default_factory=dict)
    """Anything else (e.g. the training stories' mean activation)."""


@dataclass
class Resolved:
    """A spec with everything looked up in the database: targets, controls, vectors, values."""
    spec: ExperimentSpec
    sae_id: str | None = None
    sae: Any = None
    d_sae: int | None = None
    targets: dict[str, Target] = field(default_factory=dict)
    controls: dict[str, list[Target]] = field(default_factory=dict)
    values: dict[str, list[float | None]] = field(default_factory=dict)
    """condition -> the strengths as applied (sign included; [None] for kinds without a strength)."""
    vectors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    """hook -> emotion -> vector, for trace readings."""
    emotion_features: dict[str, list[int]] = field(default_factory=dict)
    mean_norms: dict[str, float] = field(default_factory=dict)
    token_rule: TokenRule = field(default_factory=TokenRule)
    """The positions counted: the ranking's rule for the SAE (features.max_activation was measured on it)."""
    lookups: dict[str, Any] = field(default_factory=dict)
    """What a task looked up in the database for itself (e.g. the training stories' mean activation)."""

    def add(self, found: TaskInputs) -> None:
        """Take in what the task looked up (its controls beside the conditions')."""
        if found.vectors:
            self.vectors = found.vectors
        self.emotion_features.update(found.emotion_features)
        self.controls.update(found.controls)
        self.lookups.update(found.lookups)

    def settings(self) -> list[Setting]:
        """Baseline first, then each condition over its strengths, then its controls."""
        out = [baseline_setting()]
        for c in self.spec.conditions:
            for value in self.values[c.name]:
                out.append(Setting(c.name, c.kind, self.targets[c.name], value, False))
                for t in self.controls.get(c.name, []):
                    out.append(Setting(c.name, c.kind, t, value, True))
        return out

    def condition(self, name: str) -> ConditionSpec:
        return next(c for c in self.spec.conditions if c.name == name)


def result_rows(setting: Setting, prompt_id: str, metrics: dict[str, float]) -> list[Row]:
    """intervention_results rows of one setting on one prompt: one per metric."""
    return [{"condition": setting.condition, "target": setting.target.label, "strength": setting.strength,
             "is_control": setting.is_control, "prompt_id": prompt_id, "metric": m, "value": v}
            for m, v in metrics.items()]


def select_items(items: list[dict], prompts: Prompts, key: str = "id") -> list[dict]:
    """The prompts' ids (in their order) or all items, then the first `limit`."""
    if prompts.ids is not None:
        by_id = {it[key]: it for it in items}
        unknown = [i for i in prompts.ids if i not in by_id]
        if unknown:
            raise ExperimentError(f"prompts.ids {unknown} not found; known: {sorted(by_id)[:8]} ...")
        items = [by_id[i] for i in prompts.ids]
    return items[:prompts.limit] if prompts.limit else items
