"""Rank SAE features by emotion selectivity, build the paper's emotion vectors, and store it all.

    config.py       RankConfig, RankError and the human ratings file
    stage.py        the stage (run_rank): vectors, probes and geometry per hook; the SAE's evidence; the token rule
    eval_corpus.py  probes scored beyond the corpus (--eval-corpus)
    rows.py         the rows every table gets, written in one transaction

The feature x emotion statistics themselves are declared in saekit/feature_stats.py.
"""

from saekit.rank.config import SAE_METRICS_FILE, SAE_TRAIN_RECORD, RankConfig, RankError, read_ratings  # noqa: F401
from saekit.rank.eval_corpus import EVAL_CENTRING, EvalCorpus, EvalCorpusError, eval_probes, read_eval_corpus  # noqa: F401
from saekit.rank.rows import write_results  # noqa: F401
from saekit.rank.stage import (  # noqa: F401
    Activations,
    Ev,
    emotion_vector_analysis,
    preflight,
    resolve_token_rule,
    run_rank,
    sae_evidence,
    study_emotions,
    train_style,
)
