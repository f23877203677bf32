"""Causal experiments from a spec: steer, clamp, ablate or scale, and measure what changes.

A spec (analysis/experiments/*.toml, loaded into `ExperimentSpec`) names a model, a hook, an
optional SAE, the conditions, the strengths to sweep, the metrics, and its task, whose own
[prompts] table it fills. `run_experiment` checks everything it can before any forward pass, runs
every setting x prompt, and stores one row per measurement in `intervention_results` under a run
id that is also the experiment id. Every condition gets random controls of matched statistics;
reports put effects next to the controls'.

Layout (lower modules never import higher ones; no import circle, tests/test_import_graph.py):
    spec.py      the spec's fields, its error and the checks that need no registry
    targets.py   what a spec resolves to: targets, settings, what a task looked up, result rows
    controls.py  matched random features and random directions
    lookup.py    Lookup: what kinds and tasks may read from the database while resolving
    kinds.py     intervention kinds of conditions (steer, clamp, ablate, scale, steer_feature): KINDS
    batches.py   padded forward passes under a setting's edits, and what is read off them
    sampling.py  sampled generation under edits through a KV cache (side_effects, the steer page)
    stats.py     bootstrap intervals, Spearman and Pearson statistics
    render.py    number formatting and headless matplotlib for reports
    tasks/       task.py (the Task interface and its Cost), intervention.py and reading.py (the two
                 shared shapes), one module per task, and TASKS in tasks/__init__.py
    load.py      load_spec: the task's [prompts] table parsed, every check against tasks and kinds
    resolve.py   resolution against the database (kinds, then the task, through one Lookup)
    runner.py    run_experiment: load, resolve, check, measure, store
    summary.py   the report of a stored experiment, through its task
"""

from saekit.experiments.batches import candidate_logprob, chat_ids, kl_per_text, positions_mask, read_acts, run_logits, word_token
from saekit.experiments.controls import matched_features, random_direction
from saekit.experiments.kinds import KINDS, InterventionKind, make_edits, register_kind
from saekit.experiments.load import load_spec
from saekit.experiments.resolve import find_sae_id, ranked_token_rule, resolve, resolved_dict
from saekit.experiments.runner import check_model, run_experiment
from saekit.experiments.spec import ConditionSpec, ExperimentError, ExperimentSpec, Prompts, condition_emotion
from saekit.experiments.stats import bootstrap_ci, spearman
from saekit.experiments.targets import Resolved, Setting, Target, TaskInputs
from saekit.experiments.tasks import TASKS, Cost, InterventionTask, ReadingTask, Task, register_task

__all__ = [
    "ExperimentError", "Resolved", "Setting", "Target", "TaskInputs", "condition_emotion",
    "candidate_logprob", "chat_ids", "kl_per_text", "positions_mask", "read_acts", "run_logits", "word_token",
    "matched_features", "random_direction", "KINDS", "InterventionKind", "make_edits", "register_kind",
    "find_sae_id", "ranked_token_rule", "resolve", "resolved_dict", "check_model", "run_experiment",
    "ConditionSpec", "ExperimentSpec", "Prompts", "load_spec", "bootstrap_ci", "spearman",
    "TASKS", "Cost", "InterventionTask", "ReadingTask", "Task", "register_task",
]
