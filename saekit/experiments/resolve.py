"""Resolution of a spec against the feature database, before any forward pass.

Each condition's kind (experiments.kinds) turns it into a target and its random controls, and
the task adds what it reads (vectors, features), both through a read-only experiments.lookup.Lookup;
every unknown emotion, out-of-range feature or missing ranking is an ExperimentError, naming what
the database does hold.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from saekit.config import to_dict
from saekit.db import experiments as dbx
from saekit.experiments.kinds import KINDS
from saekit.experiments.lookup import Lookup
from saekit.experiments.spec import ConditionSpec, ExperimentSpec
from saekit.experiments.targets import Resolved
from saekit.experiments.tasks import TASKS
from saekit.sae import d_sae_of
from saekit.tokens import TokenRule

if TYPE_CHECKING:
    from saekit.db import Database


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


def resolve(spec: ExperimentSpec, db: Database | None, sae=None) -> Resolved:
    """Features, values, vectors and controls of every condition, from the database; no forward pass.

    Kinds and the task read through one `Lookup` (never the database itself); what the task looks
    up comes back as its `TaskInputs`."""
    res = Resolved(spec=spec)
    if spec.sae:
        if sae is None:
            from saekit.sae import load_sae

            sae = load_sae(spec.sae).sae
        res.sae, res.d_sae = sae, d_sae_of(sae)
        res.sae_id = find_sae_id(db, spec.sae)
        res.token_rule = ranked_token_rule(db, res.sae_id)
    look = Lookup(spec, db, sae=res.sae, d_sae=res.d_sae, sae_id=res.sae_id, stats=feature_stats(db, res.sae_id),
                  gen=torch.Generator().manual_seed(spec.seed))
    by_kind: dict[str, list[ConditionSpec]] = collections.defaultdict(list)
    for c in spec.conditions:
        by_kind[c.kind].append(c)
    for name, kind in KINDS.items():  # registration order: steering vectors are looked up before any feature
        if by_kind.get(name):
            kind.prepare(look, by_kind[name])
    for c in spec.conditions:
        kind = KINDS[c.kind]
        res.targets[c.name], controls = kind.resolve(look, c)
        if controls is not None:
            res.controls[c.name] = controls
        res.values[c.name] = [kind.value(c, s) for s in kind.strengths(spec, c)]
    res.add(TASKS[spec.task].resolve(spec, look))
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
