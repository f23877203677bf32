"""Running a spec: resolve it, check it against the model, measure every setting, store the rows.

Every check (spec fields, emotions, feature indices, hooks) happens before the first forward
pass; the rows go to `intervention_results` under a run id that is also the experiment id.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

from saekit.corpus import NEUTRAL, load_corpus
from saekit.db import Database, DatabaseBusy
from saekit.db import experiments as dbx
from saekit.experiments.kinds import KINDS
from saekit.experiments.load import load_spec
from saekit.experiments.resolve import resolve, resolved_dict
from saekit.experiments.spec import ExperimentError, ExperimentSpec
from saekit.experiments.targets import BASELINE, Resolved, Row
from saekit.experiments.tasks import TASKS
from saekit.interventions import mean_resid_norm
from saekit.model import compute_dtype, d_model, dtype_name, hook_names
from saekit.sae import d_in_of, hook_of

Progress = Callable[[int, int, str], None] | None

STORE_WAIT_S = 3600.0
"""How long the closing write waits for another process's lock. A ranking holds the database for its
whole step (minutes on a 1.5B model), and the measurements behind this write may have taken hours."""

UNSTORED = "unstored_results.json"


def check_model(model, res: Resolved) -> None:
    """Hooks and widths of every edit and reading exist on the model; no forward pass."""
    spec = res.spec
    hooks = set(hook_names(model))
    needed = {spec.hook: "the spec's hook"}
    if res.sae is not None:
        needed[hook_of(res.sae) or spec.hook] = f"the SAE {spec.sae}"
    for h in spec.steer_hooks or []:
        needed[h] = "steer_hooks"
    for h, why in needed.items():
        if h not in hooks:
            resid = sorted((x for x in hooks if x.endswith("hook_resid_post")), key=lambda x: int(x.split(".")[1]))
            raise ExperimentError(f"{why} reads hook {h!r}, which model {spec.model!r} does not have "
                                  f"(residual hooks: {resid[0]} ... {resid[-1]})")
    if res.sae is not None and "hook_resid" in (hook_of(res.sae) or "") and d_in_of(res.sae) != d_model(model):
        raise ExperimentError(f"the SAE's d_in is {d_in_of(res.sae)} but the model's d_model is {d_model(model)}")
    for t in res.targets.values():
        for h, v in t.vectors.items():
            if len(v) != d_model(model):
                raise ExperimentError(f"{t.label} at {h} has length {len(v)}, the model's d_model is {d_model(model)}")


def neutral_ids(tok, n: int, max_tokens: int = 64) -> list[list[int]]:
    texts = [r.text for r in load_corpus(include_neutral=True) if r.emotion == NEUTRAL][:n]
    return [tok(t)["input_ids"][:max_tokens] for t in texts]


def scale_hooks(spec: ExperimentSpec) -> list[str]:
    """Hooks whose mean residual norm some condition's edits are scaled by, in first-use order."""
    return list(dict.fromkeys(h for c in spec.conditions for h in KINDS[c.kind].scale_hooks(spec)))


def measure_all(task, settings, progress: Progress = None) -> list[Row]:
    """Every setting's rows; a setting identical to one measured before (same edit) reuses its rows."""
    rows: list[Row] = []
    done: dict[tuple, list[Row]] = {}
    for i, s in enumerate(settings):
        key = s.key()
        if key in done and s.kind != BASELINE:
            rows += [dict(r, condition=s.condition, is_control=s.is_control) for r in done[key]]
        else:
            new = task.measure(s)
            done[key] = new
            rows += new
        if progress is not None:
            progress(i + 1, len(settings), f"{s.condition} {'' if s.strength is None else s.strength}"
                     f"{' (control)' if s.is_control else ''}")
    return rows


def run_experiment(spec: str | Path | dict | ExperimentSpec, db_path: str | Path | None = None,
                   progress: Progress = None, model=None) -> str:
    """Run a spec and store every measurement; returns the experiment id (also its run id).

    Every check (spec fields, emotions, feature indices, hooks) happens before the first forward
    pass. `progress(done, total, description)` is called after each setting.
    """
    spec = load_spec(spec)
    # the dtype the numbers are computed in, as stored with them: a given model's own, else the spec's
    spec = dataclasses.replace(spec, dtype=compute_dtype(model) if model is not None else dtype_name(spec.dtype))
    path = db_path or spec.db
    db = _open(path, read_only=True)
    try:
        res = resolve(spec, db)
    finally:
        if db is not None:
            db.close()
    if model is None:
        from saekit.model import load_model

        model = load_model(spec.model, dtype=spec.dtype)
    check_model(model, res)
    task_class = TASKS[spec.task]
    task = task_class(model, res)   # tokenizes and checks prompts; no forward pass yet

    with Database(path) as wdb:
        run_id = wdb.start_run("experiment", resolved_dict(res))
    try:
        for h in scale_hooks(spec):
            res.mean_norms[h] = mean_resid_norm(model, h, neutral_ids(model.tokenizer, max(spec.norm_texts, 1)),
                                                res.token_rule)
        settings = task_class.settings(res)
        rows = measure_all(task, settings, progress)
        extra = task.write_outputs(Path(spec.out) / run_id)
        stored = dict(resolved_dict(res), **extra)
        record = {"experiment_id": run_id, "db": str(path or ""), "name": spec.name, "model_id": spec.model,
                  "sae_id": res.sae_id or spec.sae, "spec": json.dumps(stored, default=str),
                  "token_rule": res.token_rule.to_json(), "results": rows}
        # on disk first: a lock held past STORE_WAIT_S, or a kill while waiting, leaves the rows here
        kept = Path(spec.out) / run_id / UNSTORED
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(json.dumps(record, default=_plain))
        if progress is not None:
            progress(len(settings), len(settings), "storing the results (waits while another process holds the database)")
        try:
            wdb = Database(path, wait_s=STORE_WAIT_S)
        except DatabaseBusy as e:
            raise DatabaseBusy(f"{e} The measurements are kept in {kept}; once the database is free, store "
                               f"them with: saekit experiment store {kept}") from e
        with wdb:
            _store(wdb, record)
        kept.unlink()
    except BaseException:
        try:
            with Database(path) as wdb:
                wdb.finish_run(run_id, "failed")
        except Exception:
            pass
        raise
    return run_id


def _plain(value):
    """numpy and torch scalars as Python numbers, for the kept results."""
    return value.item() if hasattr(value, "item") else str(value)


def _store(db: Database, record: dict) -> None:
    dbx.store_experiment(db, record["experiment_id"], name=record["name"], model_id=record["model_id"],
                         sae_id=record["sae_id"], spec=record["spec"], token_rule=record["token_rule"],
                         results=record["results"])
    db.finish_run(record["experiment_id"])


def store_kept(file: str | Path, db_path: str | Path | None = None) -> str:
    """Store the results a run kept on disk because the database stayed locked; returns the experiment id."""
    file = Path(file)
    try:
        record = json.loads(file.read_text())
        exp_id = record["experiment_id"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ExperimentError(f"{file} is not a file of kept experiment results ({UNSTORED}): {e}") from e
    path = db_path or record.get("db") or None
    with Database(path) as db:
        if dbx.find_experiment(db, exp_id) is not None:
            raise ExperimentError(f"experiment {exp_id} is already in {db.path}; {file} can be deleted")
        _store(db, record)
    file.unlink()
    return exp_id


def _open(path, read_only: bool) -> Database | None:
    from saekit.db import default_path

    p = Path(path) if path else default_path()
    if not p.exists():
        return None
    return Database(p, read_only=read_only)
