"""The experiment spec (analysis/experiments/*.toml) and its validation.

A spec names a model, a hook, an optional SAE, the conditions (each of an intervention kind
registered in experiments.kinds), the strengths to sweep, the prompts and the metrics of its task
(registered in experiments.tasks). Unknown fields, tasks, kinds and metrics are errors at load.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from saekit.config import check_config, from_dict, load_toml
from saekit.experiments.base import TOP_RE
from saekit.experiments.kinds import KINDS
from saekit.experiments.tasks import TASKS
from saekit.model import DEFAULT_MODEL, parse_dtype


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

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind {self.kind!r} is not one of {list(KINDS)}")


@dataclass
class CommonPrompts:
    ids: list[str] | None = None
    """Keep only these items (probe ids, conversation ids, live-dialogue ids)."""
    limit: int = 0
    """Keep the first N items (0 = all)."""


def compose_prompts(tasks) -> type:
    """The [prompts] table's dataclass: the shared fields, then each registered task's own.

    Every task's fields are accepted whatever the task (as they always were); a name two tasks
    declare must mean one thing, so it is an error."""
    fields: list[tuple[str, Any, Any]] = []
    owner: dict[str, str] = {}
    for source in (CommonPrompts, *(t.Prompts for t in tasks.values() if t.Prompts is not None)):
        hints = typing.get_type_hints(source)
        for f in dataclasses.fields(source):
            if f.name in owner:
                raise TypeError(f"prompt field {f.name!r} is declared by both {owner[f.name]} and {source.__name__}")
            owner[f.name] = source.__name__
            kw = {"default": f.default} if f.default is not dataclasses.MISSING else {"default_factory": f.default_factory}
            fields.append((f.name, hints[f.name], field(**kw)))
    cls = dataclasses.make_dataclass("PromptSpec", fields)
    cls.__module__ = __name__
    return cls


if TYPE_CHECKING:
    PromptSpec = Any  # a class composed at import; its fields are only known then
else:
    PromptSpec = compose_prompts(TASKS)


@dataclass
class ExperimentSpec:
    name: str
    task: str
    """probes, impossible_task, trace or side_effects (experiments.tasks.TASKS)."""
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
    prompts: PromptSpec = field(default_factory=PromptSpec)
    metrics: list[str] | None = None
    """Default: every metric of the task."""
    controls: int = 1
    """Random controls of matched statistics per condition (0 = none)."""
    trace_features: int = 1
    """trace: the emotion's top-N selective SAE features whose summed activation is its feature reading."""
    norm_texts: int = 8
    """Neutral texts over which the mean residual norm (steering scale) is measured."""
    n_bootstrap: int = 1000
    seed: int = 0
    out: str = "artifacts/experiments"
    """Folder for generations and plots (a subfolder per experiment)."""

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task {self.task!r} is not one of {list(TASKS)}")
        parse_dtype(self.dtype)
        task = TASKS[self.task]
        allowed = task.metrics
        bad = [m for m in self.metrics or [] if m not in allowed]
        if bad:
            raise ValueError(f"metrics {bad} do not exist for task {self.task!r}; choose from {list(allowed)}")
        task.check(self)
        if task.takes_conditions and not self.conditions:
            raise ValueError(f"task {self.task!r} needs at least one [[conditions]] entry")
        names = [c.name for c in self.conditions]
        if len(set(names)) != len(names) or "none" in names:
            raise ValueError(f"condition names must be unique and not 'none': {names}")
        for c in self.conditions:
            if c.kind not in KINDS:
                raise ValueError(f"condition {c.name!r}: kind {c.kind!r} is not one of {list(KINDS)}")
            KINDS[c.kind].check(self, c)
            top = TOP_RE.match(c.features) if isinstance(c.features, str) else None
            if isinstance(c.features, str) and top is None:
                raise ValueError(f"condition {c.name!r}: features {c.features!r} should read 'top N selective for <emotion>'")
            if top is not None and int(top.group(1)) < 1:
                raise ValueError(f"condition {c.name!r}: {c.features!r} selects no features; N must be at least 1")
        for name in ("controls", "norm_texts", "n_bootstrap", "trace_features"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        check_strengths(self.strengths, "strengths")
        for c in self.conditions:
            if c.strengths is not None:
                check_strengths(c.strengths, f"condition {c.name!r}: strengths")
        for f in dataclasses.fields(self.prompts):
            value = getattr(self.prompts, f.name)
            if isinstance(value, int) and not isinstance(value, bool) and value < 0:
                raise ValueError(f"prompts.{f.name} = {value} is negative; counts are 0 or more")
            if isinstance(value, list) and any(isinstance(v, str) and not v.strip() for v in value):
                raise ValueError(f"prompts.{f.name} holds an empty string")

    def wants(self, metric: str) -> bool:
        return self.metrics is None or metric in self.metrics


MAX_STRENGTH = 1000.0
"""The largest |strength| a spec may ask for. Steering strengths are fractions of the mean residual
norm (0.1 is strong) and clamps multiples of a feature's maximum; beyond this nothing is measured
but overflow."""


def check_strengths(strengths: list[float], where: str) -> None:
    if not strengths:
        raise ValueError(f"{where} is empty; give at least one strength")
    big = [s for s in strengths if abs(s) > MAX_STRENGTH]
    if big:
        raise ValueError(f"{where} {big}: beyond +-{MAX_STRENGTH:g} (steering is in units of the mean residual "
                         "norm, clamps in multiples of a feature's maximum)")


def load_spec(spec: str | Path | dict | ExperimentSpec) -> ExperimentSpec:
    """An ExperimentSpec from a TOML path, a dict or itself; unknown fields are errors."""
    if isinstance(spec, ExperimentSpec):
        check_config(spec, "experiment spec")
        return spec
    if isinstance(spec, dict):
        return from_dict(ExperimentSpec, spec, where="experiment spec")
    return from_dict(ExperimentSpec, load_toml(spec), where=str(spec))
