"""The ranking's config, its error, and the human ratings it reads."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from saekit.errors import SaekitError
from saekit.tokens import TokenRule

SAE_METRICS_FILE = "metrics.json"         # written beside an SAE by `saekit train`
SAE_TRAIN_RECORD = "saekit_train.json"


class RankError(SaekitError, ValueError):
    """A ranking cannot run on what it was given: the message names the file or the option."""


@dataclass
class RankConfig:
    activations: str = "artifacts/study/activations"
    """A finished harvest folder."""
    sae: str | None = None
    """SAE folder (SAELens format) or sae-lens release; None ranks only the emotion vectors."""
    sae_id: str | None = None
    """The SAE's id within a sae-lens release."""
    corpus_id: str | None = None
    """The corpus's id in the database; None: from the harvest's corpus ("shipped", or its path as given)."""
    db: str | None = None
    """Database file (default artifacts/saekit.duckdb or $SAEKIT_DB)."""
    probe_features_per_emotion: int = 5
    """Top selective features per emotion fed to the held-out classifier."""
    n_examples: int = 5
    """Examples stored per feature and kind (top stories by pooled mean; top windows by peak token)."""
    logit_lens_tokens: int = 10
    """Tokens stored per direction's logit lens (promoted and suppressed)."""
    own_word_top: int = 100
    """The logit-lens check: does an emotion's own word rank among its direction's top N promoted tokens?"""
    lens_random: int = 200
    """Random directions of equal norm that give the check's chance rate."""
    skip_first: int | None = None
    """Positions left out at the start of every text (saekit.tokens); None: the SAE's training rule, else 1."""
    max_norm_ratio: float | None = None
    """Also leave out positions above this multiple of the median norm (0: off); None: the SAE's training rule."""
    n_aligned: int = 10
    """SAE features stored per emotion vector, by decoder cosine."""
    neutral_variance: float = 0.5
    """Variance of the neutral dialogues whose principal components are projected out."""
    kmeans_k: int = 10
    """Clusters of the emotion vectors' k-means (fewer when there are fewer emotions)."""
    ratings: str | None = None
    """CSV of human valence/arousal ratings (columns word, valence, arousal; Warriner et al. 2013
    and NRC-VAD column names are recognised). Not shipped: their licences do not allow it."""
    seed: int = 0
    """Seed of the probes, k-means and the random lens directions."""
    eval_corpus: str | None = None
    """An extra labelled corpus (any format the harvest reads) to score the probes on, beyond the study's corpus."""
    eval_text_column: str = "text"
    """The eval corpus's text column."""
    eval_label_column: str = "emotion"
    """The eval corpus's label column: its values are matched to the study's emotions (case ignored)."""

    def __post_init__(self):
        TokenRule(skip_first=1 if self.skip_first is None else self.skip_first,
                  max_norm_ratio=self.max_norm_ratio or 0.0)   # a bad rule fails here, before any compute


def read_ratings(path: str | Path | None) -> dict[str, tuple[float, float]]:
    """{word: (valence, arousal)} from a user's CSV; empty when no file is given."""
    if not path:
        return {}
    path = Path(path)
    if not path.exists():
        raise RankError(f"ratings file {path} does not exist")
    names = {"word": ("word", "Word", "term"), "valence": ("valence", "Valence", "V.Mean.Sum"),
             "arousal": ("arousal", "Arousal", "A.Mean.Sum")}
    delim = "\t" if path.suffix in (".tsv", ".txt") else ","
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delim)
        cols = {k: next((c for c in v if c in (reader.fieldnames or [])), None) for k, v in names.items()}
        missing = [k for k, c in cols.items() if c is None]
        if missing:
            raise RankError(f"{path}: no {missing} column (columns: {reader.fieldnames})")
        return {row[cols["word"]].strip().lower(): (float(row[cols["valence"]]), float(row[cols["arousal"]]))
                for row in reader}
