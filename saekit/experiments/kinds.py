"""Intervention kinds of a spec's conditions: steer, clamp, ablate, scale, steer_feature.

Each kind is one small object that checks its condition, resolves it against the database into
a target and its random controls, says which strengths it sweeps, and builds the edits of one
setting (saekit.interventions). `KINDS` maps a condition's `kind` to its object; a new kind is
one class here (or anywhere) and one `register_kind` line below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Sequence

import torch

from saekit.experiments.controls import control_direction
from saekit.experiments.spec import ConditionSpec, ExperimentError, ExperimentSpec
from saekit.experiments.targets import BASELINE, Resolved, Setting, Target
from saekit.interventions import Ablate, Clamp, Edit, FeatureEdit, Scale, Splice, Steer

if TYPE_CHECKING:
    from saekit.experiments.lookup import Lookup


class InterventionKind:
    """How conditions of one kind are checked, resolved and turned into edits."""
    name: ClassVar[str]
    signed: ClassVar[bool] = False
    """Strengths are multiplied by the condition's sign (-1 steers "down")."""
    has_strength: ClassVar[bool] = True
    """False: the kind runs once per condition, with strength None (ablation)."""

    def check(self, spec: ExperimentSpec, c: ConditionSpec) -> None:
        """Raise ValueError for a condition that cannot run; no database yet."""

    def prepare(self, look: Lookup, conditions: Sequence[ConditionSpec]) -> None:
        """Check what all this kind's conditions need at once, before any is resolved."""

    def resolve(self, look: Lookup, c: ConditionSpec) -> tuple[Target, list[Target] | None]:
        """The condition's target and its random controls (None: the spec asks for none)."""
        raise NotImplementedError

    def strengths(self, spec: ExperimentSpec, c: ConditionSpec) -> list[float | None]:
        """The strengths as written in the spec (the condition's own, else the experiment's)."""
        return list(c.strengths or spec.strengths) if self.has_strength else [None]

    def value(self, c: ConditionSpec, strength: float | None) -> float | None:
        """A strength as applied."""
        return strength * c.sign if self.signed and strength is not None else strength

    def scale_hooks(self, spec: ExperimentSpec) -> list[str]:
        """Hooks whose mean residual norm the edits are scaled by (measured before the first setting)."""
        return []

    def edits(self, res: Resolved, setting: Setting, c: ConditionSpec, positions, rule) -> list[Edit]:
        raise NotImplementedError


class SteerKind(InterventionKind):
    """Add strength x (mean residual norm) x the emotion's unit vector at each steering hook."""
    name = "steer"
    signed = True

    def check(self, spec, c):
        if not c.emotion:
            raise ValueError(f"condition {c.name!r}: steering needs an emotion")

    def prepare(self, look, conditions):
        look.vectors(look.spec.steer_hooks or [look.spec.hook], sorted({c.emotion for c in conditions}))

    def resolve(self, look, c):
        spec = look.spec
        hooks = spec.steer_hooks or [spec.hook]
        vecs = look.vectors(hooks, [c.emotion])
        target = Target(f"vector:{c.emotion}", vectors={h: vecs[h][c.emotion].tolist() for h in hooks})
        controls = [Target(f"random_direction:{k}",
                           vectors={h: control_direction(vecs[h][c.emotion].numel(), spec.seed, k).tolist() for h in hooks})
                    for k in range(spec.controls)]
        return target, controls

    def scale_hooks(self, spec):
        return list(spec.steer_hooks or [spec.hook])

    def edits(self, res, setting, c, positions, rule):
        return [Steer(h, torch.tensor(v), setting.strength, res.mean_norms[h], positions=positions, rule=rule)
                for h, v in setting.target.vectors.items()]


def check_features(spec: ExperimentSpec, c: ConditionSpec) -> None:
    """A condition on SAE features needs the SAE and the features (or an emotion to take the top one of)."""
    if not spec.sae:
        raise ValueError(f"condition {c.name!r}: {c.kind} uses SAE features, so the spec needs sae = ...")
    if c.features is None and not c.emotion:
        raise ValueError(f"condition {c.name!r}: give features (indices or 'top N selective for <emotion>') or an emotion")


class SteerFeatureKind(InterventionKind):
    """Add strength x (mean residual norm) x the unit decoder direction of SAE features (summed) at the
    SAE's hook: steering along what a feature writes, without splicing the SAE in."""
    name = "steer_feature"
    signed = True

    def check(self, spec, c):
        check_features(spec, c)

    def resolve(self, look, c):
        from saekit.sae import decoder_FD, hook_of

        feats = look.condition_features(c)
        hook = hook_of(look.sae) or look.spec.hook
        direction = decoder_FD(look.sae)[feats].float().sum(0).detach().cpu()
        target = Target(f"decoder:{','.join(map(str, feats))}", features=feats, vectors={hook: direction.tolist()})
        controls = [Target(f"random_direction:{k}", vectors={hook: control_direction(direction.numel(), look.spec.seed, k).tolist()})
                    for k in range(look.spec.controls)]
        return target, controls

    def scale_hooks(self, spec):
        return [_sae_hook(spec)]

    def edits(self, res, setting, c, positions, rule):
        return [Steer(h, torch.tensor(v), setting.strength, res.mean_norms[h], positions=positions, rule=rule)
                for h, v in setting.target.vectors.items()]


def _sae_hook(spec: ExperimentSpec) -> str:
    """The hook an SAE reads, from its folder's cfg.json without loading it (the spec's hook otherwise)."""
    import json
    from pathlib import Path

    try:
        cfg = json.loads((Path(spec.sae or "") / "cfg.json").read_text())
        return str((cfg.get("metadata") or {}).get("hook_name") or cfg.get("hook_name") or spec.hook)
    except (OSError, ValueError):
        return spec.hook


class FeatureKind(InterventionKind):
    """Edit SAE features (by index or "top N selective for <emotion>") inside a Splice."""

    def check(self, spec, c):
        check_features(spec, c)

    def resolve(self, look, c):
        feats = look.condition_features(c)
        t = Target(f"features:{','.join(map(str, feats))}", features=feats)
        stats = look.stats
        if stats:
            t.max_activation = [stats.get(f, (0.0, 0.0))[0] for f in feats]
            t.firing_rate = [stats.get(f, (0.0, 0.0))[1] for f in feats]
        self.check_stats(look, c)
        if not look.spec.controls:
            return t, None
        if not stats:
            raise ExperimentError(f"condition {c.name!r}: matched random-feature controls need feature statistics "
                                  f"in the database (`saekit rank --sae {look.spec.sae}`), or set controls = 0")
        controls = [Target(f"random_features:{','.join(map(str, draw))}", features=draw,
                           max_activation=[stats[f][0] for f in draw], firing_rate=[stats[f][1] for f in draw])
                    for draw in look.matched_controls(feats)]
        return t, controls

    def check_stats(self, look: Lookup, c: ConditionSpec) -> None:
        """Raise when the kind's values need feature statistics the database lacks."""

    def edits(self, res, setting, c, positions, rule):
        return [Splice(res.sae, [self.feature_edit(setting, c)], positions=positions, rule=rule)]

    def feature_edit(self, setting: Setting, c: ConditionSpec) -> FeatureEdit:
        raise NotImplementedError


class AblateKind(FeatureKind):
    name = "ablate"
    has_strength = False

    def feature_edit(self, setting, c):
        return Ablate(setting.target.features)


class ScaleKind(FeatureKind):
    name = "scale"

    def feature_edit(self, setting, c):
        return Scale(setting.target.features, setting.strength)


class ClampKind(FeatureKind):
    """Clamp to strength x each feature's max activation on the corpus, or to the strength itself."""
    name = "clamp"
    signed = True

    def check_stats(self, look, c):
        if c.clamp_to == "max_multiple" and not look.stats:
            raise ExperimentError(f"condition {c.name!r}: clamping to a multiple of the max activation needs "
                                  f"features.max_activation for SAE {look.spec.sae!r} in the database (`saekit rank --sae`)")

    def feature_edit(self, setting, c):
        t = setting.target
        if c.clamp_to == "max_multiple":
            return Clamp(t.features, [setting.strength * m for m in t.max_activation])
        return Clamp(t.features, setting.strength)


KINDS: dict[str, InterventionKind] = {}
"""Condition kind -> its object, in registration order."""


def register_kind(kind: InterventionKind) -> InterventionKind:
    KINDS[kind.name] = kind
    return kind


register_kind(SteerKind())
register_kind(ClampKind())
register_kind(AblateKind())
register_kind(ScaleKind())
register_kind(SteerFeatureKind())


def make_edits(res: Resolved, setting: Setting, mask_BT: torch.Tensor | None) -> list[Edit]:
    """The interventions of one setting, applied at `mask_BT` (None: every position)."""
    if setting.kind == BASELINE:
        return []
    rule = res.token_rule if res.spec.positions == "counted" else None
    return KINDS[setting.kind].edits(res, setting, res.condition(setting.condition), mask_BT, rule)
