"""The summary of a stored experiment: its task's table, notes and PNG plots, and summary.json.

What the table holds and how it is drawn belongs to the experiment's task (experiments.tasks);
this module reads the experiment back, hands its rows to the task, and writes summary.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from saekit.db import Database
from saekit.db import experiments as dbx
from saekit.experiments.spec import ExperimentError
from saekit.experiments.tasks import TASKS, InterventionTask, Task
from saekit.experiments.tasks.intervention import effects as task_effects
from saekit.experiments.tasks.task import base_model_label

LIST_HINT = ('list them with `saekit query "SELECT experiment_id, name, created_at FROM experiments '
             'ORDER BY created_at DESC"`')


def load_experiment(experiment_id: str, db: Database) -> tuple[dict, list[dict]]:
    """The experiment's row (an id, a run id, or a name: its latest run) and all its measurements."""
    exp = dbx.find_experiment(db, experiment_id)
    if exp is None:
        known = dbx.latest_experiment_ids(db, 5)
        raise ExperimentError(f"no experiment {experiment_id!r} in {db.path}; latest: {known}; {LIST_HINT}")
    spec = exp["spec"]
    exp = dict(exp, spec=json.loads(spec) if isinstance(spec, str) else spec, created_at=str(exp["created_at"]))
    return exp, dbx.experiment_results(db, exp["experiment_id"])


def task_of(exp: dict[str, Any]) -> type[Task]:
    """The task class that ran a stored experiment."""
    name = exp["spec"]["spec"]["task"]
    if name not in TASKS:
        raise ExperimentError(f"experiment {exp['experiment_id']!r} was run by task {name!r}, which this saekit "
                              f"does not have (tasks: {list(TASKS)})")
    return TASKS[name]


def effects(exp: dict[str, Any], data: list[dict]) -> list[dict]:
    """One row per condition x strength of an intervening experiment, as its task computes them."""
    task = task_of(exp)
    if not issubclass(task, InterventionTask):
        raise ExperimentError(f"experiment {exp['experiment_id']!r} ({task.name}) intervenes on nothing: it has no effects")
    return task_effects(exp, data, task)


def summarize(exp: dict[str, Any], data: list[dict]) -> tuple[list[str], list[list[str]], list[str], Any]:
    """(columns, rows, notes, statistics) of a stored experiment, as its task reports them."""
    return task_of(exp).summarize(exp, data)


def report(experiment_id: str, db_path: str | Path | None = None, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Summary table(s) and PNG plots of one experiment.

    Returns {"experiment_id", "name", "task", "title", "columns", "rows", "notes", "plots",
    "generations", "label"}; rows are lists of strings ready to print under columns; label is the "base
    model" note of a chat task on a model that was not instruction-tuned (else None).
    """
    with Database(db_path, read_only=True) as db:
        exp, data = load_experiment(experiment_id, db)
    spec = exp["spec"]["spec"]
    task = task_of(exp)
    out = Path(out_dir) if out_dir else Path(spec.get("out", "artifacts/experiments")) / exp["experiment_id"]
    out.mkdir(parents=True, exist_ok=True)
    label = base_model_label(task, exp["model_id"])
    title = f"{exp['name']} ({task.name}) on {exp['model_id']}" + (" (base model)" if label else "")
    columns, rows, notes, stats = task.summarize(exp, data)
    plots = [str(p) for p in task.plot(exp, data, stats, out, title)]
    gens = []
    gfile = exp["spec"].get("generations_file")
    if gfile and Path(gfile).exists():
        gens = [json.loads(line) for line in Path(gfile).read_text().splitlines() if line.strip()]
    summary = {"experiment_id": exp["experiment_id"], "name": exp["name"], "task": task.name, "title": title,
               "columns": columns, "rows": rows, "notes": notes, "plots": plots, "generations": gens,
               "label": label}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return summary


def sentence(summary: dict[str, Any]) -> str:
    """One sentence from a report's numbers, worded by the experiment's task."""
    if not summary["rows"]:
        return "No measurements."
    task = TASKS.get(summary["task"])
    return task.sentence(summary) if task else f"{len(summary['rows'])} result rows."


def format_report(summary: dict[str, Any]) -> str:
    """Plain-text rendering of `report`'s result (the CLI may print a rich table instead)."""
    cols, rows = summary["columns"], summary["rows"]
    widths = [max(len(str(c)), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    lines = [summary["title"], "  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    lines += [f"note: {n}" for n in [summary.get("label"), *summary["notes"]] if n]
    for g in summary["generations"][:12]:
        lines.append(f"[{g['condition']} {g['strength']}] {g['prompt']!r} -> {g['reply']!r}")
    lines += [f"plot: {p}" for p in summary["plots"]]
    return "\n".join(lines)
