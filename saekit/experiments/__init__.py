"""Causal experiments from a spec: steer, clamp, ablate or scale, and measure what changes.

A spec (analysis/experiments/*.toml, loaded into `ExperimentSpec`) names a model, a hook, an
optional SAE, the conditions, the strengths to sweep, the prompts and the metrics. `run_experiment`
checks everything it can before any forward pass, runs every setting x prompt, and stores one row
per measurement in `intervention_results` under a run id that is also the experiment id. Every
condition gets random controls of matched statistics; reports put effects next to the controls'.

Layout:
    spec.py      the spec and its validation
    resolve.py   resolution against the database (targets, controls, vectors)
    kinds.py     intervention kinds of conditions (steer, clamp, ablate, scale): KINDS
    controls.py  matched random features and random directions
    batches.py   padded forward passes under a setting's edits, and what is read off them
    stats.py     bootstrap intervals and Spearman's rank correlation
    tasks/       one module per task (probes, impossible_task, trace, side_effects): TASKS
    runner.py    run_experiment: resolve, check, measure, store
    report.py    the report of a stored experiment, through its task
"""

from saekit.experiments.base import ExperimentError, Resolved, Setting, Target, condition_emotion
from saekit.experiments.batches import candidate_logprob, chat_ids, kl_per_text, positions_mask, read_acts, run_logits, word_token
from saekit.experiments.controls import matched_features, random_direction
from saekit.experiments.kinds import KINDS, InterventionKind, make_edits, register_kind
from saekit.experiments.resolve import find_sae_id, ranked_token_rule, resolve, resolved_dict
from saekit.experiments.runner import check_model, run_experiment
from saekit.experiments.spec import ConditionSpec, ExperimentSpec, PromptSpec, load_spec
from saekit.experiments.stats import bootstrap_ci, spearman
from saekit.experiments.tasks import TASKS, InterventionTask, Task, register_task

__all__ = [
    "ExperimentError", "Resolved", "Setting", "Target", "condition_emotion",
    "candidate_logprob", "chat_ids", "kl_per_text", "positions_mask", "read_acts", "run_logits", "word_token",
    "matched_features", "random_direction", "KINDS", "InterventionKind", "make_edits", "register_kind",
    "find_sae_id", "ranked_token_rule", "resolve", "resolved_dict", "check_model", "run_experiment",
    "ConditionSpec", "ExperimentSpec", "PromptSpec", "load_spec", "bootstrap_ci", "spearman",
    "TASKS", "InterventionTask", "Task", "register_task",
]
