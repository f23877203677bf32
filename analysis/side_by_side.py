"""Two or more finished studies' headline numbers side by side, as a Markdown table (the README's).

    python analysis/side_by_side.py artifacts/study artifacts/study-gemma3-270m \
        artifacts/study-qwen2.5-coder-1.5b --db artifacts/saekit.duckdb --figure artifacts/side_by_side.png

Reads each study folder's own files (study_config.json, steps.json, rank_summary.json, the SAE's
metrics.json) and, with --db, the rows those runs wrote: probe accuracies with the bootstrap intervals
and the corpus-only TF-IDF probe that `saekit compare` stored for the model, every principal component of the emotion
vectors against the clusters' valence sign (and against human ratings where a run had them), and the
experiments' effects beyond their random controls (the impossible task's from a full-spec run,
`impossible_task_full`, where the database has one for the model and hook; else the study's subset).
--figure draws the headline numbers against model size. Cross-model agreement (RSA, ARI) is `saekit compare`'s job.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

STEP_ORDER = ("harvest activations", "train SAE", "rank features and vectors")


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _minutes(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 60} min {whole % 60:02d} s ({whole} s)"


def headline(study: Path) -> dict[str, str]:
    """Row label -> value for one study folder."""
    cfg, steps = _json(study / "study_config.json"), _json(study / "steps.json")
    summary, metrics = _json(study / "rank_summary.json"), _json(study / "sae" / "metrics.json")
    hook = cfg.get("hook", "")
    acts, lm = metrics.get("activations", {}), metrics.get("lm", {})
    out = {"model": cfg.get("model", "?"), "SAE hook": hook,
           "emotions / test stories": f"{summary.get('emotions')} / {summary.get('test_stories')} (chance {summary.get('chance')})"}
    for key, label in (("vector probe accuracy", "vector probe accuracy"), ("vector logistic accuracy", "logistic probe accuracy")):
        for i, h in enumerate([hook, *cfg.get("vector_hooks", [])]):
            if f"{key} @ {h}" in summary:
                where = "SAE layer" if i == 0 else f"vector layer {i}"
                layer = re.sub(r"blocks\.(\d+)\..*", r"layer \1", h)
                out[f"{label}, {where}"] = f"{_fmt(summary[f'{key} @ {h}'])} ({layer})"
    out["SAE top-feature probe accuracy"] = _fmt(summary.get(f"SAE top-feature probe accuracy @ {hook}"))
    out["SAE explained variance (held-out)"] = _fmt(acts.get("explained_variance"))
    # metrics.json's "training_window" counts every training token: a latent dead there never fired at all
    out["SAE dead latents (held-out / never fired in training)"] = (
        f"{_fmt(acts.get('dead_fraction'))} / {_fmt(metrics.get('training_window', {}).get('dead_fraction'))}")
    out["SAE L0"] = _fmt(acts.get("l0"), 1)
    out["SAE spliced in: loss recovered / KL"] = f"{_fmt(lm.get('loss_recovered'))} / {_fmt(lm.get('kl_sae'))}"
    never = summary.get("features never active on counted tokens")
    out["features never active on counted tokens"] = f"{never} of {summary.get('SAE features')}"
    out["own word in top 100 logits (vectors at SAE layer)"] = str(summary.get(f"own word in top 100 @ {hook} (random mean)"))
    for name in STEP_ORDER:
        if name in steps:
            out[f"time: {name}"] = f"{steps[name]['seconds']:.0f} s"
    for name, step in sorted(steps.items()):
        if name.startswith("experiment ") and step.get("summary", {}).get("finding"):
            out[f"finding: {name.removeprefix('experiment ')}"] = step["summary"]["finding"]
    experiments = sum(v["seconds"] for k, v in steps.items() if k.startswith("experiment "))
    out["time: experiments"] = f"{experiments:.0f} s"
    out["time: whole study (sum of steps)"] = _minutes(sum(v["seconds"] for v in steps.values()))
    return out


def _ci(row: dict | None, key: str = "accuracy") -> str:
    if not row or row.get(key) is None:
        return "n/a"
    if row.get("ci_lo") is None:
        return f"{row[key]:.3f}"
    return f"{row[key]:.3f} [{row['ci_lo']:.3f}, {row['ci_hi']:.3f}]"


def _rows(con, sql: str, *args) -> list[dict]:
    from saekit.db import fetch_dicts

    return fetch_dicts(con, sql, list(args))


def _experiment_id(steps: dict, name: str) -> str | None:
    return steps.get(f"experiment {name}", {}).get("summary", {}).get("experiment_id")


IMPLICIT = re.compile(r"emotion vectors classify the implicit prompts at ([\d.]+) \[([\d.]+), ([\d.]+)\] over "
                      r"(\d+) emotions \(chance ([\d.]+); random ([\d.]+)")


def measured(study: Path, con) -> dict[str, Any]:
    """The numbers behind the figure and the database rows of the table, for one study."""
    cfg, steps = _json(study / "study_config.json"), _json(study / "steps.json")
    summary, metrics = _json(study / "rank_summary.json"), _json(study / "sae" / "metrics.json")
    model, hook = cfg.get("model", "?"), cfg.get("hook", "")
    out: dict[str, Any] = {"model": model, "hook": hook}
    try:
        from saekit.plan import model_shape

        out["params"] = model_shape(model).params()
    except Exception:  # a model whose config cannot be read here: the figure leaves it out
        out["params"] = None
    probes = {r["method"]: r for r in _rows(con, "SELECT * FROM probe_results WHERE model_id = ? AND hook = ? "
                                                  "ORDER BY run_id", model, hook)}
    out["lexical"] = None
    side = f"{model}@{hook}"   # `saekit compare` stores each side's probes with bootstrap intervals, and the baseline's
    for row in _rows(con, "SELECT side_a, side_b, metrics FROM comparisons WHERE side_a = ? OR side_b = ? "
                          "ORDER BY created_at", side, side):
        sides = json.loads(row["metrics"])["sides"]
        probes |= {p["method"]: p for p in sides["a" if row["side_a"] == side else "b"]["probes"]}
        out["lexical"] = next(iter(sides.get("baseline", {}).get("probes", [])), None)
    out["probe"], out["logistic"] = probes.get("vector_projection"), probes.get("vector_logistic")
    out["pcs"] = _rows(con, "SELECT predictor, r, ci_lo, ci_hi, p_value FROM style_geometry WHERE model_id = ? "
                            "AND hook = ? AND target = 'valence_sign' ORDER BY predictor", model, hook)
    out["ratings"] = _rows(con, "SELECT target, predictor, r, ci_lo, ci_hi FROM rating_geometry WHERE model_id = ? "
                                "AND hook = ? ORDER BY target, predictor", model, hook)
    own = re.match(r"(\d+)/(\d+)", str(summary.get(f"own word in top 100 @ {hook} (random mean)", "")))
    out["own_word"] = (int(own[1]), int(own[2])) if own else None
    acts = metrics.get("activations", {})
    out["ev"], out["dead"] = acts.get("explained_variance"), acts.get("dead_fraction")
    finding = steps.get("experiment implicit", {}).get("summary", {}).get("finding", "")
    m = IMPLICIT.search(finding)
    out["implicit"] = {"accuracy": float(m[1]), "ci_lo": float(m[2]), "ci_hi": float(m[3]),
                       "chance": float(m[5]), "random": float(m[6])} if m else None
    out["impossible"] = {}
    ids = [_experiment_id(steps, k.removeprefix("experiment ")) for k in steps
           if k.startswith("experiment impossible_task")]
    full = _full_impossible_task(con, model, hook)
    for eid in [full] if full else ids:
        for r in _rows(con, "SELECT condition, strength, effect_minus_control, diff_lo, diff_hi, n_prompts FROM "
                            "experiment_effects WHERE experiment_id = ? AND metric = 'margin_mean' ORDER BY condition",
                       eid):
            out["impossible"][f"{r['condition']} {r['strength']:+g}"] = r
    return out


def _full_impossible_task(con, model: str, hook: str) -> str | None:
    """The newest `impossible_task_full` run on this model and hook, if the database has one.

    A study runs a stated subset of the impossible task; the full spec is run on its own
    (`saekit experiment run analysis/experiments/impossible_task_full.toml`), and where it exists it
    stands for the model instead (its rows give the prompt count, so the table says which ran).
    """
    if not _rows(con, "SELECT 1 FROM information_schema.tables WHERE table_name = 'experiments'"):
        return None
    rows = _rows(con, "SELECT experiment_id FROM experiments WHERE name = 'impossible_task_full' AND model_id = ? "
                      "AND json_extract_string(spec, '$.spec.hook') = ? ORDER BY created_at DESC LIMIT 1", model, hook)
    return rows[0]["experiment_id"] if rows else None


def database_rows(m: dict[str, Any]) -> dict[str, str]:
    """The table rows that come from the database (see `measured`)."""
    out = {"vector probe accuracy [95% CI], SAE layer": _ci(m["probe"]),
           "logistic probe accuracy [95% CI], SAE layer": _ci(m["logistic"]),
           "lexical TF-IDF probe (corpus only, same test stories)": _ci(m["lexical"])}
    if m["pcs"]:
        best = max(m["pcs"], key=lambda r: abs(r["r"]))
        out["PCs vs clusters' valence sign (r), SAE layer"] = ", ".join(
            f"{r['predictor']} {r['r']:+.2f}" for r in m["pcs"]) + f"; best {best['predictor']}"
    if m["ratings"]:
        out["PCs vs human ratings (r)"] = ", ".join(f"{r['target']}~{r['predictor']} {r['r']:+.2f}" for r in m["ratings"])
    if m["implicit"]:
        i = m["implicit"]
        out["implicit prompts: vector accuracy [95% CI] (chance / random)"] = (
            f"{_ci(i)} ({i['chance']:.3f} / {i['random']:.3f})")
    for setting, r in m["impossible"].items():
        out[f"impossible task: {setting}, margin beyond random [95% CI] (prompts)"] = (
            f"{r['effect_minus_control']:+.4f} [{r['diff_lo']:+.4f}, {r['diff_hi']:+.4f}] ({r['n_prompts']})")
    return out


def figure(ms: list[dict[str, Any]], path: Path) -> None:
    """Six headline numbers against model size (parameters, log scale), with their 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = sorted((m for m in ms if m["params"]), key=lambda m: m["params"])
    x = [m["params"] / 1e6 for m in ms]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))

    def panel(ax, title, series, ylabel="", hline=None):
        for i, (label, rows) in enumerate(series):
            ys = [r[0] if r else float("nan") for r in rows]
            err = [[(r[0] - r[1]) if r and r[1] is not None else 0 for r in rows],
                   [(r[2] - r[0]) if r and r[2] is not None else 0 for r in rows]]
            nudge = 1 + 0.04 * (i - (len(series) - 1) / 2)  # side by side, so equal points and bars stay visible
            ax.errorbar([v * nudge for v in x], ys, yerr=err, marker="o", capsize=3, label=label)
        if hline is not None:
            ax.axhline(hline[0], color="grey", ls="--", lw=1, label=hline[1])
        ax.set_xscale("log")
        ax.set_xticks(x, [f"{m['model'].split('-')[0]}\n{v:,.0f}M" for m, v in zip(ms, x)], fontsize=7, rotation=30)
        ax.minorticks_off()
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.legend(fontsize=7)

    def acc(row):
        return (row["accuracy"], row.get("ci_lo"), row.get("ci_hi")) if row else None

    lexical = next((m["lexical"] for m in ms if m["lexical"]), None)
    panel(axes[0, 0], "held-out probe accuracy (SAE layer)",
          [("vector, nearest mean", [acc(m["probe"]) for m in ms]), ("vector, logistic", [acc(m["logistic"]) for m in ms])],
          "accuracy", (lexical["accuracy"], "TF-IDF of the stories") if lexical else None)
    panel(axes[0, 1], "valence: PC1 and the best PC (|r| with cluster sign)",
          [("PC1", [next(((abs(r["r"]), None, None) for r in m["pcs"] if r["predictor"] == "PC1"), None) for m in ms]),
           ("best PC", [(max(abs(r["r"]) for r in m["pcs"]), None, None) if m["pcs"] else None for m in ms])], "|r|")
    panel(axes[0, 2], "own word in the top 100 logit-lens tokens",
          [("vectors at the SAE layer", [(m["own_word"][0], None, None) if m["own_word"] else None for m in ms])],
          "emotions")
    panel(axes[1, 0], "SAE health (held-out counted tokens)",
          [("explained variance", [(m["ev"], None, None) for m in ms]),
           ("dead fraction", [(m["dead"], None, None) for m in ms])], "", (0.8, "EV goal 0.80"))
    panel(axes[1, 1], "implicit prompts: vector accuracy",
          [("vectors", [acc(m["implicit"]) for m in ms])], "accuracy",
          (ms[0]["implicit"]["chance"], "chance") if ms and ms[0]["implicit"] else None)
    settings = strongest_settings(m["impossible"] for m in ms)
    panel(axes[1, 2], "impossible task: cheating margin beyond random\n(each vector at its strongest strength each way)",
          [(s, [(m["impossible"][s]["effect_minus_control"], m["impossible"][s]["diff_lo"],
                 m["impossible"][s]["diff_hi"]) if s in m["impossible"] else None for m in ms]) for s in settings],
          "mean log-prob per token", (0.0, "no effect"))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def strongest_settings(impossible) -> list[str]:
    """Each condition's largest strength of each sign that any model ran: the figure's headline
    settings (the table keeps every one)."""
    best: dict[tuple[str, bool], tuple[float, str]] = {}
    for runs in impossible:
        for setting, r in runs.items():
            key = (r["condition"], r["strength"] > 0)
            if abs(r["strength"]) > best.get(key, (0.0, ""))[0]:
                best[key] = (abs(r["strength"]), setting)
    return [setting for _, setting in sorted(best.values(), key=lambda v: v[1])]


def table(studies: list[Path], db: Path | None = None, figure_path: Path | None = None) -> str:
    columns = [headline(s) for s in studies]
    if db:
        from saekit.db import Database

        with Database(db, read_only=True) as con:
            ms = [measured(s, con) for s in studies]
        for c, m in zip(columns, ms):
            c.update(database_rows(m))
        if figure_path:
            figure(ms, figure_path)
    rows = list(dict.fromkeys(k for c in columns for k in c))
    lines = ["| | " + " | ".join(c["model"] for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {r} | " + " | ".join(c.get(r, "n/a") for c in columns) + " |" for r in rows if r != "model"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+", type=Path, help="finished study folders (a study config's `out`)")
    parser.add_argument("--db", type=Path, help="the studies' database: adds its rows (probes, geometry, effects)")
    parser.add_argument("--figure", type=Path, help="PNG of the headline numbers against model size (needs --db)")
    args = parser.parse_args()
    if args.figure and not args.db:
        parser.error("--figure reads the database: give --db too")
    print(table(args.studies, args.db, args.figure))


if __name__ == "__main__":
    main()
