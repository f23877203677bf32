"""Experiment reports: moved to saekit.experiments.summary (the table and plots of each task live
in its module under saekit.experiments.tasks); these names stay importable from here."""

from saekit.experiments.spec import ExperimentError
from saekit.experiments.summary import format_report, load_experiment, report, sentence, summarize
from saekit.experiments.tasks.intervention import EFFECT_COLUMNS as COLUMNS
from saekit.experiments.tasks.intervention import MIN_PROMPTS_FOR_VERDICT, effect_table, plot_effects
from saekit.experiments.tasks.intervention import effects as _effects
from saekit.experiments.tasks.trace import COLUMNS as TRACE_COLUMNS
from saekit.experiments.tasks.trace import plot_live, plot_trace, trace_stats, trace_table

__all__ = ["COLUMNS", "MIN_PROMPTS_FOR_VERDICT", "TRACE_COLUMNS", "effect_table", "effects", "format_report",
           "load_experiment", "plot_effects", "plot_live", "plot_trace", "report", "sentence", "summarize",
           "trace_stats", "trace_table"]


def effects(exp: dict, data: list[dict]) -> list[dict]:
    """One row per condition x strength of an intervening experiment, as its task computes them."""
    from saekit.experiments.summary import task_of
    from saekit.experiments.tasks import InterventionTask

    task = task_of(exp)
    if not issubclass(task, InterventionTask):
        raise ExperimentError(f"experiment {exp['experiment_id']!r} ({task.name}) intervenes on nothing: it has no effects")
    return _effects(exp, data, task)
