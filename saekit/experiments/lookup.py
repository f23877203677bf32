"""What intervention kinds and tasks may read while a spec resolves, and nothing more.

A `Lookup` answers from the feature database (emotion vectors, top selective features, feature
statistics, the training stories' mean) and draws matched random controls from one seeded
generator; it never hands out the database itself. Every unknown emotion, out-of-range feature
or missing ranking is an ExperimentError here, naming what the database does hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch

from saekit.db import experiments as dbx
from saekit.experiments.controls import matched_features
from saekit.experiments.spec import TOP_RE, ConditionSpec, ExperimentError, ExperimentSpec

if TYPE_CHECKING:
    from saekit.db import Database


@dataclass
class Lookup:
    """Read-only views of the database for one spec, its SAE, and the random state controls are drawn from."""
    spec: ExperimentSpec
    _db: Database | None = field(repr=False)
    sae: Any = None
    """The loaded SAE (feature kinds read its decoder), or None."""
    d_sae: int | None = None
    sae_id: str | None = None
    """The SAE's id in the database (None: not ranked there)."""
    stats: dict[int, tuple[float, float]] = field(default_factory=dict)
    """feature -> (max activation, firing rate) of the SAE's features."""
    gen: torch.Generator = field(default_factory=torch.Generator)
    """Draws matched feature controls, condition after condition."""
    _tables: dict[str, dict[str, list[float]]] = field(default_factory=dict, repr=False)

    @property
    def db_path(self) -> Any:
        """The database's file, for messages."""
        return self._db.path if self._db is not None else None

    def known_emotions(self) -> list[str]:
        if self._db is None:
            return []
        if self.sae_id is not None:
            return dbx.ranked_emotions(self._db, self.sae_id, self.spec.corpus_id)
        return dbx.vector_emotions(self._db, self.spec.model, self.spec.corpus_id)

    def condition_features(self, c: ConditionSpec) -> list[int]:
        """Feature indices of a condition, checked against the SAE's width and the database."""
        features = c.features if c.features is not None else f"top 1 selective for {c.emotion}"
        d_sae = self.d_sae
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
        assert m is not None, "the spec's check read the form"
        return self.top_features(c.name, features, m.group(2), int(m.group(1)))

    def top_features(self, name: str, what: str, emotion: str, n: int) -> list[int]:
        """The n features most selective for an emotion; `name` and `what` word the errors."""
        if self._db is None or self.sae_id is None:
            raise ExperimentError(f"condition {name!r}: {what!r} needs the SAE ranked into the database "
                                  f"(`saekit rank --sae {self.spec.sae}`); it is not there")
        feats = dbx.top_selective_features(self._db, self.sae_id, self.spec.corpus_id, emotion, n)
        if not feats:
            raise ExperimentError(f"condition {name!r}: unknown emotion {emotion!r}; the database ranks "
                                  f"{self.known_emotions()}")
        return feats

    def matched_controls(self, targets: Sequence[int], generator: torch.Generator | None = None) -> list[list[int]]:
        """spec.controls sets of random features matched to the targets' statistics."""
        return matched_features(self.stats, targets, self.spec.controls, generator or self.gen)

    def vectors(self, hooks: Sequence[str], emotions: Sequence[str] | None) -> dict[str, dict[str, torch.Tensor]]:
        """hook -> emotion -> vector from emotion_vectors (all emotions when None); unknown emotions and
        missing hooks are errors."""
        spec = self.spec
        if self._db is None:
            raise ExperimentError("emotion vectors come from the feature database, and there is none: run "
                                  "`saekit rank --activations <harvest folder>` first")
        out: dict[str, dict[str, torch.Tensor]] = {}
        for hook in hooks:
            rows = self._table(hook)
            if not rows:
                raise ExperimentError(f"no emotion vectors for model {spec.model!r} at {hook} (corpus {spec.corpus_id!r}) "
                                      f"in {self._db.path}; it holds {dbx.vector_sources(self._db)}")
            table = {e: torch.tensor(v, dtype=torch.float32) for e, v in rows.items()}
            unknown = sorted(set(emotions or []) - set(table))
            if unknown:
                raise ExperimentError(f"unknown emotion(s) {unknown}: vectors at {hook} exist for {sorted(table)}")
            out[hook] = {e: table[e] for e in (emotions or sorted(table))}
        return out

    def _table(self, hook: str) -> dict[str, list[float]]:
        assert self._db is not None
        if hook not in self._tables:
            self._tables[hook] = dbx.emotion_vectors(self._db, self.spec.model, self.spec.corpus_id, hook)
        return self._tables[hook]

    def story_mean(self, hook: str) -> tuple[list[float], int] | None:
        """The training stories' mean activation at a hook and how many stories it is over (None: not stored)."""
        if self._db is None:
            return None
        return dbx.story_mean(self._db, self.spec.model, self.spec.corpus_id, hook)
