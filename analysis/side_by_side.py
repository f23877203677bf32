"""Two or more finished studies' headline numbers side by side, as a Markdown table (the README's).

    python analysis/side_by_side.py artifacts/study artifacts/study-gemma3-270m

Reads only each study folder's own files (study_config.json, steps.json, rank_summary.json, the SAE's
metrics.json and experiments/*.json), so the table shows what those runs measured and nothing else.
Cross-model agreement (RSA, ARI against the lexical baseline) is `saekit compare`'s job.
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
    out["SAE dead latents (held-out / training window)"] = (
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


def table(studies: list[Path]) -> str:
    columns = [headline(s) for s in studies]
    rows = list(dict.fromkeys(k for c in columns for k in c))
    lines = ["| | " + " | ".join(c["model"] for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {r} | " + " | ".join(c.get(r, "n/a") for c in columns) + " |" for r in rows if r != "model"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+", type=Path, help="finished study folders (a study config's `out`)")
    print(table(parser.parse_args().studies))


if __name__ == "__main__":
    main()
