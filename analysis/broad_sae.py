"""Before and after training the SAE on broad text: the table the README shows.

    python analysis/broad_sae.py BEFORE_STUDY AFTER_STUDY [--before-db F] [--after-db F] [--json OUT]

Each STUDY is a study folder (`artifacts/study`): its sae/, steps.json and, for the activations,
the AFTER study's activations/ (the stories) and broad/ (the broad harvest), so both SAEs are
measured on the same held-out tokens. The databases default to artifacts/saekit.duckdb for the
after study; give the before one (a copy of the database before the change).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from saekit.activations import Activations, HarvestSource
from saekit.handle import open_db
from saekit.metrics import activation_metrics
from saekit.sae import hook_of, load_sae
from saekit.tokens import TokenRule

EVAL_TOKENS = 50_000


def sae_health(sae_folder: Path, stories: Path, broad: Path) -> dict:
    """EV, dead fraction and L0 on the held-out tokens of the stories and of the broad text."""
    sae = load_sae(str(sae_folder)).sae
    hook = hook_of(sae)
    out = {}
    for name, folder in (("stories", stories), ("broad", broad)):
        held = HarvestSource(Activations.open(folder), hook, TokenRule()).held_out(EVAL_TOKENS)
        m = activation_metrics(sae, held)
        out[name] = {"explained_variance": m["explained_variance"], "dead_fraction": m["dead_fraction"],
                     "l0": m["l0"], "tokens": int(held.shape[0])}
    return out


def database_numbers(db: Path, sae_id: str) -> dict:
    con = open_db(db)
    q = lambda sql, p=(): [tuple(r) for r in con.sql(sql, list(p)).itertuples(index=False)]   # noqa: E731
    trace = {}
    for scenario, is_control, fired, n, mean in q(
            """SELECT r.condition, r.is_control, count(DISTINCT r.metric) FILTER (WHERE r.value > 1e-6),
                      count(DISTINCT r.metric), avg(r.value)
               FROM intervention_results r JOIN experiments e USING (experiment_id)
               WHERE json_extract_string(e.spec, '$.spec.task') = 'trace' AND r.metric LIKE 'feat:%'
                 AND e.sae_id = ? GROUP BY ALL""", [sae_id]):
        base = scenario.split(":")[0]
        entry = trace.setdefault(base, {"emotions": n, "fired": None, "mean": None, "control_fired": []})
        if is_control:
            entry["control_fired"].append(fired)
        else:
            entry["fired"], entry["mean"] = fired, mean
    for entry in trace.values():
        c = entry.pop("control_fired")
        entry["control_fired_mean"] = sum(c) / len(c) if c else None
    precision = q("""SELECT median(top_story_precision), count(*) FILTER (WHERE top_story_precision >= 0.6), count(*)
                     FROM feature_emotion_stats WHERE sae_id = ? AND selectivity_rank = 1""", [sae_id])[0]
    probes = {f"{m} @ {h}": a for h, m, a in q(
        "SELECT hook, method, accuracy FROM probe_results WHERE (sae_id = ? OR sae_id IS NULL) AND corpus_id = 'shipped'",
        [sae_id])}
    return {"trace": trace, "top_story_precision_median": precision[0], "emotions_precision_ge_60": precision[1],
            "emotions": precision[2], "probes": probes}


def findings(study: Path) -> dict[str, str]:
    steps = json.loads((study / "steps.json").read_text())
    return {k.removeprefix("experiment "): v["summary"].get("finding", "") for k, v in steps.items()
            if k.startswith("experiment ")}


def implicit_numbers(finding: str) -> dict:
    out = {}
    for who, key in (("emotion vectors", "vectors"), ("top SAE features", "sae")):
        m = re.search(who + r" classify the implicit prompts at ([0-9.]+) \[([0-9.]+), ([0-9.]+)\] over (\d+) emotions", finding)
        if m:
            out[key] = {"accuracy": float(m[1]), "ci": [float(m[2]), float(m[3])], "emotions": int(m[4])}
    return out


def measure(study: Path, db: Path, stories: Path, broad: Path, sae_id: str) -> dict:
    found = findings(study)
    return {"sae": sae_health(study / "sae", stories, broad),
            "database": database_numbers(db, sae_id),
            "implicit": implicit_numbers(found.get("implicit", "")),
            "findings": {k: found[k] for k in ("dose_response", "live_dialogue") if k in found},
            "training": json.loads((study / "sae" / "saekit_train.json").read_text()).get("metrics", {}).get("shares")}


def table(before: dict, after: dict) -> str:
    def health(d, part, key):
        return f"{d['sae'][part][key]:.3f}" if key != "dead_fraction" else f"{d['sae'][part][key]:.1%}"

    rows = [("SAE explained variance, held-out story tokens", lambda d: health(d, "stories", "explained_variance")),
            ("SAE explained variance, held-out broad tokens", lambda d: health(d, "broad", "explained_variance")),
            ("dead latents, held-out story tokens", lambda d: health(d, "stories", "dead_fraction")),
            ("dead latents, held-out broad tokens", lambda d: health(d, "broad", "dead_fraction"))]
    for scenario in sorted(after["database"]["trace"]):
        def fired(d, s=scenario):
            t = d["database"]["trace"].get(s)
            if not t:
                return "-"
            return (f"{t['fired']} of {t['emotions']} (random features {t['control_fired_mean']:.1f}); "
                    f"mean reading {t['mean']:.3f}")
        rows.append((f"emotions whose top feature fires at the assistant-turn start: trace, {scenario} prompts", fired))
    rows += [("top feature's top-5 stories from its emotion: median; emotions at >= 60%",
              lambda d: f"{d['database']['top_story_precision_median']:.0%}; {d['database']['emotions_precision_ge_60']} "
                        f"of {d['database']['emotions']}"),
             ("SAE top-5-feature probe, test split (40 emotions, chance 0.025)",
              lambda d: f"{d['database']['probes'].get('sae_top_features @ blocks.20.hook_resid_post', float('nan')):.3f}"),
             ("emotion-vector logistic probe, test split, layer 20",
              lambda d: f"{d['database']['probes'].get('vector_logistic @ blocks.20.hook_resid_post', float('nan')):.3f}"),
             ("implicit prompts, top SAE features (40 emotions)",
              lambda d: _acc(d["implicit"].get("sae"))),
             ("implicit prompts, emotion vectors (40 emotions)", lambda d: _acc(d["implicit"].get("vectors")))]
    lines = ["| measurement | SAE on the stories alone (before) | SAE on broad text + stories (after) |", "|---|---|---|"]
    lines += [f"| {name} | {f(before)} | {f(after)} |" for name, f in rows]
    return "\n".join(lines)


def _acc(x) -> str:
    return f"{x['accuracy']:.3f} [{x['ci'][0]:.3f}, {x['ci'][1]:.3f}]" if x else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--before-db", type=Path, required=True)
    ap.add_argument("--after-db", type=Path, default=Path("artifacts/saekit.duckdb"))
    ap.add_argument("--json", type=Path, default=Path("artifacts/broad_sae.json"))
    ap.add_argument("--sae-id", default="artifacts/study/sae", help="the SAE's id in both databases (its folder as the study named it)")
    a = ap.parse_args()
    stories, broad = a.after / "activations", a.after / "broad"
    before = measure(a.before, a.before_db, stories, broad, a.sae_id)
    after = measure(a.after, a.after_db, stories, broad, a.sae_id)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({"before": before, "after": after}, indent=1, default=str))
    print(table(before, after))
    for name in ("dose_response", "live_dialogue"):
        print(f"\n{name}\n  before: {before['findings'].get(name, '-')}\n  after:  {after['findings'].get(name, '-')}")


if __name__ == "__main__":
    main()
