"""Resolution of a spec against the feature database, before any forward pass.

Each condition's kind (experiments.kinds) turns it into a target and its random controls, and
the task adds what it reads (vectors, features); every unknown emotion, out-of-range feature or
missing ranking is an ExperimentError here, naming what the database does hold.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from saekit.config import to_dict
from saekit.db import experiments as dbx
from saekit.experiments.base import TOP_RE, ExperimentError, Resolved
from saekit.experiments.controls import matched_features
from saekit.experiments.kinds import KINDS
from saekit.experiments.tasks import TASKS
from saekit.sae import d_sae_of
from saekit.tokens import TokenRule

if TYPE_CHECKING:
    from saekit.db import Database
    from saekit.experiments.spec import ConditionSpec, ExperimentSpec


def ranked_token_rule(db: Database | None, sae_id: str | None) -> TokenRule:
    """The token rule the SAE was ranked with (the default rule when there is none to read)."""
    if db is None or sae_id is None:
        return TokenRule()
    stored = dbx.sae_token_rule(db, sae_id)
    return TokenRule.from_mapping(json.loads(stored)) if stored else TokenRule()


def find_sae_id(db: Database | None, sae: str) -> str | None:
    """The database's id of an SAE given by folder: its sae_id, or a row whose path is the same folder."""
    if db is None:
        return None
    rows = dbx.sae_paths(db)
    for sid, path in rows:
        if sid == sae or path == sae:
            return sid
    want = Path(sae).expanduser().resolve()
    for sid, path in rows:
        for cand in (sid, path):
            if cand and Path(cand).expanduser().resolve() == want:
                return sid
    return None


def feature_stats(db: Database | None, sae_id: str | None) -> dict[int, tuple[float, float]]:
    return {} if db is None or sae_id is None else dbx.feature_stats(db, sae_id)


@dataclass
class Resolver:
    """The database, the SAE and the shared random state that kinds and tasks resolve through."""
    spec: ExperimentSpec
    db: Database | None
    res: Resolved
    stats: dict[int, tuple[float, float]] = field(default_factory=dict)
    gen: torch.Generator = field(default_factory=torch.Generator)
    """Draws matched feature controls, condition after condition."""
    steer_vectors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def known_emotions(self) -> list[str]:
        if self.db is None:
            return []
        if self.res.sae_id is not None:
            return dbx.ranked_emotions(self.db, self.res.sae_id, self.spec.corpus_id)
        return dbx.vector_emotions(self.db, self.spec.model, self.spec.corpus_id)

    def condition_features(self, c: ConditionSpec) -> list[int]:
        """Feature indices of a condition, checked against the SAE's width and the database."""
        features = c.features if c.features is not None else f"top 1 selective for {c.emotion}"
        d_sae = self.res.d_sae
        assert d_sae is not None, "feature kinds are checked to have an SAE"
        if isinstance(features, list):
            bad = [f for f in features if not 0 <= f < d_sae]
            if bad:
                raise ExperimentError(f"condition {c.name!r}: feature index {bad} out of range: the SAE has "
                                      f"{d_sae} features (0..{d_sae - 1})")
            if not features:
                raise ExperimentError(f"condition {c.name!r}: empty feature list")
            return [int(f) for f in features]
        m = TOP_RE.match(features)
        assert m is not None, "the spec's validation checked the form"
        return self.top_features(c.name, features, m.group(2), int(m.group(1)))

    def top_features(self, name: str, what: str, emotion: str, n: int) -> list[int]:
        """The n features most selective for an emotion; `name` and `what` word the errors."""
        if self.db is None or self.res.sae_id is None:
            raise ExperimentError(f"condition {name!r}: {what!r} needs the SAE ranked into the database "
                                  f"(`saekit rank --sae {self.spec.sae}`); it is not there")
        feats = dbx.top_selective_features(self.db, self.res.sae_id, self.spec.corpus_id, emotion, n)
        if not feats:
            raise ExperimentError(f"condition {name!r}: unknown emotion {emotion!r}; the database ranks "
                                  f"{self.known_emotions()}")
        return feats

    def matched_controls(self, targets: Sequence[int], generator: torch.Generator | None = None) -> list[list[int]]:
        return matched_features(self.stats, targets, self.spec.controls, generator or self.gen)

    def load_vectors(self, hooks: Sequence[str], emotions: Sequence[str] | None) -> dict[str, dict[str, torch.Tensor]]:
        """hook -> emotion -> vector from emotion_vectors; unknown emotions and missing hooks are errors."""
        db, spec = self.db, self.spec
        if db is None:
            raise ExperimentError("emotion vectors come from the feature database, and there is none: run "
                                  "`saekit rank --activations <harvest folder>` first")
        out: dict[str, dict[str, torch.Tensor]] = {}
        for hook in hooks:
            rows = dbx.emotion_vectors(db, spec.model, spec.corpus_id, hook)
            if not rows:
                raise ExperimentError(f"no emotion vectors for model {spec.model!r} at {hook} (corpus {spec.corpus_id!r}) "
                                      f"in {db.path}; it holds {dbx.vector_sources(db)}")
            table = {e: torch.tensor(v, dtype=torch.float32) for e, v in rows.items()}
            unknown = sorted(set(emotions or []) - set(table))
            if unknown:
                raise ExperimentError(f"unknown emotion(s) {unknown}: vectors at {hook} exist for {sorted(table)}")
            out[hook] = {e: table[e] for e in (emotions or sorted(table))}
        return out


def resolve(spec: ExperimentSpec, db: Database | None, sae=None) -> Resolved:
    """Features, values, vectors and controls of every condition, from the database; no forward pass."""
    res = Resolved(spec=spec)
    if spec.sae:
        if sae is None:
            from saekit.sae import load_sae

            sae = load_sae(spec.sae).sae
        res.sae, res.d_sae = sae, d_sae_of(sae)
        res.sae_id = find_sae_id(db, spec.sae)
        res.token_rule = ranked_token_rule(db, res.sae_id)
    ctx = Resolver(spec, db, res, stats=feature_stats(db, res.sae_id), gen=torch.Generator().manual_seed(spec.seed))
    by_kind: dict[str, list[ConditionSpec]] = collections.defaultdict(list)
    for c in spec.conditions:
        by_kind[c.kind].append(c)
    for name, kind in KINDS.items():  # registration order: steering vectors are looked up before any feature
        if by_kind.get(name):
            kind.prepare(ctx, by_kind[name])
    for c in spec.conditions:
        kind = KINDS[c.kind]
        res.targets[c.name], controls = kind.resolve(ctx, c)
        if controls is not None:
            res.controls[c.name] = controls
        res.values[c.name] = [kind.value(c, s) for s in kind.strengths(spec, c)]
    TASKS[spec.task].resolve(ctx)
    return res


def resolved_dict(res: Resolved) -> dict[str, Any]:
    """The spec plus everything resolved, as stored in experiments.spec."""
    def target(t) -> dict:
        d = dataclasses.asdict(t)
        d["vectors"] = {h: {"norm": float(torch.tensor(v).norm())} for h, v in t.vectors.items()}
        return d

    return {"spec": to_dict(res.spec), "sae_id": res.sae_id, "d_sae": res.d_sae,
            "token_rule": json.loads(res.token_rule.to_json()),
            "targets": {k: target(t) for k, t in res.targets.items()},
            "controls": {k: [target(t) for t in ts] for k, ts in res.controls.items()},
            "emotion_features": res.emotion_features, "mean_resid_norm": res.mean_norms}
