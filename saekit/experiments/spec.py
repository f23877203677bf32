"""The experiment spec (analysis/experiments/*.toml): its fields, and the checks that need no registry.

A spec names a model, a hook, an optional SAE, the conditions (each of an intervention kind
registered in experiments.kinds), the strengths to sweep, the metrics, and its task (registered in
experiments.tasks). The `[prompts]` table is the task's own: a dataclass the task declares
(`Task.Prompts`, beside the shared `ids` and `limit` of `Prompts`), parsed when the spec loads
(experiments.load), so a task never reads a field another task declared.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from saekit.errors import SaekitError
from saekit.model import DEFAULT_MODEL

TOP_RE = re.compile(r"^\s*top\s+(\d+)\s+selective\s+for\s+(\S+)\s*$", re.IGNORECASE)
"""A condition's features as "top N selective for <emotion>"."""

MAX_STRENGTH = 1000.0
"""The largest |strength| a spec may ask for. Steering strengths are fractions of the mean residual
norm (0.1 is strong) and clamps multiples of a feature's maximum; beyond this nothing is measured
but overflow."""


class ExperimentError(SaekitError, ValueError):
    """A spec cannot run: the message names the field, emotion, feature or hook at fault."""


@dataclass
class ConditionSpec:
    name: str
    """Condition name, e.g. "desperate_up"; stored in intervention_results.condition."""
    kind: str
    """An intervention kind: steer, clamp, ablate, scale or steer_feature (experiments.kinds.KINDS)."""
    emotion: str | None = None
    """steer: the emotion vector to add. Feature kinds: the emotion whose top feature is edited
    when `features` is not given."""
    features: list[int] | str | None = None
    """SAE feature indices, or "top N selective for <emotion>" (feature_emotion_stats.selectivity_rank)."""
    sign: float = 1.0
    """Strengths are multiplied by this for steer and clamp: -1 steers "down"."""
    clamp_to: Literal["max_multiple", "value"] = "max_multiple"
    """clamp: strength x the feature's max activation on the corpus (features.max_activation), or the strength itself."""
    strengths: list[float] | None = None
    """Overrides the experiment's strengths for this condition."""


def condition_emotion(c: ConditionSpec) -> str | None:
    """The emotion a condition is about: its emotion field, or the one in 'top N selective for <emotion>'."""
    if c.emotion:
        return c.emotion
    m = TOP_RE.match(c.features) if isinstance(c.features, str) else None
    return m.group(2) if m else None


@dataclass
class Prompts:
    """The fields every task's [prompts] table has; a task's own table subclasses this."""
    ids: list[str] | None = None
    """Keep only these items (probe ids, conversation ids, live-dialogue ids)."""
    limit: int = 0
    """Keep the first N items (0 = all)."""


@dataclass
class ExperimentSpec:
    name: str
    task: str
    """probes, impossible_task, trace, side_effects, dose_response, implicit or live_dialogue (experiments.tasks.TASKS)."""
    model: str = DEFAULT_MODEL
    """Model name as loaded (and as stored in the database by `saekit rank`)."""
    hook: str = "blocks.20.hook_resid_post"
    """Where emotion vectors are read and, by default, where steering is applied."""
    sae: str | None = None
    """SAE folder (SAELens format) as given to `saekit rank --sae`; needed for feature edits."""
    dtype: str = "float32"
    """Model compute dtype (float32 or bfloat16); log-probabilities, KL and readings are taken in float32
    either way. A model passed to run_experiment computes in its own dtype, and that is what is stored."""
    corpus_id: str = "shipped"
    db: str | None = None
    """Database file (default artifacts/saekit.duckdb or $SAEKIT_DB)."""
    strengths: list[float] = field(default_factory=lambda: [0.1])
    conditions: list[ConditionSpec] = field(default_factory=list)
    steer_hooks: list[str] | None = None
    """Steering hooks (default [hook]); each needs an emotion vector at that hook in the database."""
    positions: Literal["counted", "all", "last", "all_but_first"] = "counted"
    """Token positions edited: counted = those the SAE's token rule counts (as ranked, with its
    norm filter if it has one; all but the first by default), the same positions the clamp
    strengths and the metrics are measured on."""
    prompts: Any = None
    """The task's own table: an instance of its `Prompts` dataclass once loaded (experiments.load)."""
    metrics: list[str] | None = None
    """Default: every metric of the task."""
    controls: int = 1
    """Random controls of matched statistics per condition (0 = none)."""
    norm_texts: int = 8
    """Neutral texts over which the mean residual norm (steering scale) is measured."""
    n_bootstrap: int = 1000
    seed: int = 0
    out: str = "artifacts/experiments"
    """Folder for generations and plots (a subfolder per experiment)."""

    def wants(self, metric: str) -> bool:
        return self.metrics is None or metric in self.metrics


def check_strengths(strengths: list[float], where: str) -> None:
    if not strengths:
        raise ValueError(f"{where} is empty; give at least one strength")
    big = [s for s in strengths if abs(s) > MAX_STRENGTH]
    if big:
        raise ValueError(f"{where} {big}: beyond +-{MAX_STRENGTH:g} (steering is in units of the mean residual "
                         "norm, clamps in multiples of a feature's maximum)")
