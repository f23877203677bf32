"""implicit: do prompts that imply an emotion without naming it read as that emotion?

Each prompt of implicit.jsonl is read as the stories behind the vectors were: plain text, its
activation at the hook averaged over the pooled tokens (harvest's pooling start, within the token
rule). The reading of an emotion is the projection of that mean, centred, on the emotion's unit
vector (vec:<e>), and the summed activation of its top selective SAE features (feat:<e>). The
centre is the training stories' mean activation when `saekit rank` stored it (story_means), else
the prompts' own mean; the stored experiment and its sentence say which. The predicted emotion is
the argmax over every emotion read and over the emotions present among the prompts. Controls:
random unit directions (one per emotion, per draw) and matched random features, read the same way.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from saekit.activations import pool_start
from saekit.corpus import load_scenario
from saekit.experiments.batches import read_acts
from saekit.experiments.controls import random_direction
from saekit.experiments.render import pyplot, save_figure
from saekit.experiments.spec import ExperimentError
from saekit.experiments.stats import bootstrap_ci
from saekit.experiments.targets import Setting, Target, result_rows, select_items
from saekit.experiments.tasks.reading import ReadingPrompts, ReadingTask

FILE = "saekit/corpus/scenarios/implicit.jsonl"
POOL_OFFSET = 50
"""harvest's default pooling start: texts longer than this are pooled from it, shorter ones from their middle."""
CENTRING = {"train_mean": "the training stories' mean activation (story_means, {n} stories)",
            "prompt_mean": "the implicit prompts' own mean (the database stores no training mean)"}
COLUMNS = ["reading", "argmax over", "accuracy", "95% CI", "chance", "random control", "control range", "n", "verdict"]


@dataclass
class ImplicitPrompts(ReadingPrompts):
    implicit_reading: Literal["pooled", "last"] = "pooled"
    """'pooled' = mean over the tokens from harvest's pooling start that the token rule counts (as the
    vectors' stories were pooled); 'last' = the last token."""


def implicit_items(spec) -> list[dict]:
    """The chosen prompts; an unknown id is an error naming the file."""
    try:
        return select_items(load_scenario("implicit"), spec.prompts)
    except ExperimentError as e:
        raise ExperimentError(f"{FILE}: {e}") from None


class ImplicitTask(ReadingTask):
    """Readings of each emotion on prompts that imply one; accuracy of their argmax, next to random directions."""
    name = "implicit"
    Prompts = ImplicitPrompts

    @classmethod
    def emotion_vectors(cls, spec, look, found):
        """prompts.emotions (default all); every chosen prompt's emotion must be among them."""
        items = implicit_items(spec)
        known = look.vectors([spec.hook], spec.prompts.emotions)[spec.hook]
        unknown = {it["id"]: it["emotion"] for it in items if it["emotion"] not in known}
        if unknown:
            where = "prompts.emotions" if spec.prompts.emotions else f"the database's vectors at {spec.hook}"
            raise ExperimentError(f"{FILE}: field 'emotion' of {sorted(unknown)} names "
                                  f"{sorted(set(unknown.values()))}, not among the emotions read ({where}: "
                                  f"{sorted(known)}); choose prompts.ids whose emotions are known")
        return known

    @classmethod
    def resolve(cls, spec, look):
        """The readings' inputs, and the training stories' mean activation (the centre), when stored."""
        found = super().resolve(spec, look)
        stored = look.story_mean(spec.hook)
        if stored is not None:
            found.lookups["centre"] = torch.tensor(stored[0], dtype=torch.float32)
            found.lookups["centre_n"] = stored[1]
        return found

    def __init__(self, model, res):
        super().__init__(model, res)
        spec = self.spec
        self.items = implicit_items(spec)
        self.seqs = [self.tok(it["text"], add_special_tokens=True)["input_ids"] for it in self.items]
        vectors = res.vectors[spec.hook]
        self.emotions = list(vectors)
        self.units_ED = torch.stack([v / v.norm() for v in vectors.values()])
        d = self.units_ED.shape[1]
        if "centre" in res.lookups and res.lookups["centre"].numel() != d:
            raise ExperimentError(f"the stored training mean has width {res.lookups['centre'].numel()}, the vectors {d}")
        self.centring = "train_mean" if "centre" in res.lookups else "prompt_mean"
        self.controls_KED = []
        for k in range(spec.controls):
            gen = torch.Generator().manual_seed(spec.seed * 1000 + k)
            self.controls_KED.append(torch.stack([random_direction(d, gen) for _ in self.emotions]))

    def _positions(self, acts_TD: torch.Tensor) -> torch.Tensor:
        """Boolean mask [T] of the positions read."""
        n = acts_TD.shape[0]
        keep_T = torch.zeros(n, dtype=torch.bool)
        if self.spec.prompts.implicit_reading == "last":
            keep_T[-1] = True
            return keep_T
        pos_T = torch.arange(n)
        keep_T = (pos_T >= pool_start(n, POOL_OFFSET)) & self.res.token_rule.keep(pos_T, acts_TD)
        if not keep_T.any():
            keep_T[-1] = True   # a prompt too short for the rule: its last token
        return keep_T

    def reading_description(self) -> str:
        if self.spec.prompts.implicit_reading == "last":
            return "the activation at the last token of the plain text"
        return (f"the mean activation over the tokens from position {POOL_OFFSET} (or the text's middle when it is "
                f"shorter, as harvest pools the stories) that the token rule counts ({self.res.token_rule.describe()})")

    @torch.no_grad()
    def measure(self, setting):
        hook, sae = self.spec.hook, self.res.sae
        pooled, feats = [], []
        for ids in self.seqs:
            acts_TD = read_acts(self.model, hook, ids)
            keep_T = self._positions(acts_TD)
            pooled.append(acts_TD[keep_T].mean(0))
            if self.res.emotion_features and self.spec.wants("feature"):
                feats.append(sae.encode(acts_TD[keep_T].to(sae.dtype)).float().mean(0))
        x_PD = torch.stack(pooled)
        centre_D = self.res.lookups["centre"] if self.centring == "train_mean" else x_PD.mean(0)
        xc_PD = x_PD - centre_D
        rows = []
        base = [{} for _ in self.items]
        ctl = [[{} for _ in self.items] for _ in self.controls_KED]
        if self.spec.wants("vector"):
            _fill(base, self.emotions, xc_PD @ self.units_ED.T, "vec")
            for k, dirs_ED in enumerate(self.controls_KED):
                _fill(ctl[k], self.emotions, xc_PD @ dirs_ED.T, "vec")
        if feats:
            f_PF = torch.stack(feats)
            fe = list(self.res.emotion_features)
            read_PE = torch.stack([f_PF[:, self.res.emotion_features[e]].sum(1) for e in fe], 1)
            _fill(base, fe, read_PE - read_PE.mean(0), "feat")
            for k in range(len(self.controls_KED)):
                draws = [self.res.controls.get(f"implicit:{e}", []) for e in fe]
                if all(k < len(d) for d in draws):
                    c_PE = torch.stack([f_PF[:, d[k].features].sum(1) for d in draws], 1)
                    _fill(ctl[k], fe, c_PE - c_PE.mean(0), "feat")
        for i, it in enumerate(self.items):
            rows += result_rows(Setting("implicit", "none", Target(it["emotion"]), None, False), it["id"], base[i])
            for k in range(len(self.controls_KED)):
                rows += result_rows(Setting(f"implicit:control{k}", "none", Target(it["emotion"]), None, True),
                                    it["id"], ctl[k][i])
        return rows

    def write_outputs(self, folder):
        n = self.res.lookups.get("centre_n", 0)
        return {"centring": self.centring, "centring_text": CENTRING[self.centring].format(n=n),
                "reading": self.reading_description(), "feature_centring": "prompt_mean"}

    # ------------------------------------------------------------------ report

    @classmethod
    def summarize(cls, exp, data):
        stats = implicit_stats(data, n_boot=exp["spec"]["spec"].get("n_bootstrap", 1000),
                               seed=exp["spec"]["spec"].get("seed", 0))
        rows = [[s["reading"], s["over"], _p(s["accuracy"]), f"[{_p(s['lo'])}, {_p(s['hi'])}]",
                 _p(s["chance"]), _p(s["control"]), s["control_range"], str(s["n"]), s["verdict"]]
                for s in stats["accuracy"]]
        spec = exp["spec"]
        notes = [f"Vector readings centred on {spec.get('centring_text', 'an unstated centre')}; feature readings "
                 f"on the prompts' own mean. Reading: {spec.get('reading', '-')}.",
                 "Control: the same argmax over random unit directions (one per emotion) or matched random "
                 "features; 'random control' is the mean accuracy over draws, 'control range' its spread.",
                 "Verdict: 'above chance and control' when the interval's lower end clears both chance and every "
                 "control draw."]
        return COLUMNS, rows, notes, stats

    @classmethod
    def plot(cls, exp, data, stats, out, title):
        paths = []
        for family, label in (("vec", "emotion vectors"), ("feat", "top SAE features")):
            conf = stats["confusion"].get(family)
            if conf:
                p = plot_confusion(conf, f"{exp['name']}: {label} (argmax over all emotions read)",
                                   out / f"implicit_confusion_{family}.png")
                paths.append(p)
        return paths

    @classmethod
    def sentence(cls, summary):
        rows = {(r[0], r[1].split()[0]): r for r in summary["rows"]}
        parts = []
        for reading, label in (("vector", "the emotion vectors"), ("feature", "the top SAE features")):
            a, p = rows.get((reading, "all")), rows.get((reading, "present"))
            if a is None:
                continue
            text = (f"{label} classify the implicit prompts at {a[2]} {a[3]} over {a[1].split(' ', 1)[1]} "
                    f"(chance {a[4]}; random {a[5]}, range {a[6]})")
            if p is not None:
                text += f" and {p[2]} {p[3]} over the {p[1].split(' ', 1)[1]} present (chance {p[4]})"
            parts.append(text + f": {a[8]}")
        if not parts:
            return "No measurements."
        centre = "train mean" if "training stories" in " ".join(summary["notes"][:1]) else "prompts' own mean"
        return "Implicit emotion (argmax, centred on the " + centre + "): " + "; ".join(parts) + "."


def _p(x: float) -> str:
    """An accuracy or chance level, to 3 decimals."""
    return "-" if math.isnan(x) else f"{x:.3f}"


def _fill(rows: list[dict], emotions: list[str], read_PE: torch.Tensor, prefix: str) -> None:
    for i, r in enumerate(rows):
        r.update({f"{prefix}:{e}": float(read_PE[i, j]) for j, e in enumerate(emotions)})


def _table(data: list[dict], control: bool) -> dict[str, dict[str, dict]]:
    """condition -> prompt -> {"true": emotion, metric: value} (one condition per control draw)."""
    out: dict[str, dict[str, dict]] = collections.defaultdict(dict)
    for r in data:
        if bool(r["is_control"]) != control or not r["condition"].startswith("implicit"):
            continue
        p = out[r["condition"]].setdefault(r["prompt_id"], {"true": r["target"]})
        p[r["metric"]] = r["value"]
    return out


def predictions(points: dict[str, dict], family: str, among: set[str] | None = None) -> list[tuple[str, str]]:
    """(true, predicted) per prompt: the argmax of its readings of one family (vec or feat)."""
    out = []
    for p in points.values():
        reads = {m.split(":", 1)[1]: v for m, v in p.items() if m.startswith(family + ":")}
        if among is not None:
            reads = {e: v for e, v in reads.items() if e in among}
        if reads:
            out.append((p["true"], max(sorted(reads), key=lambda e: reads[e])))
    return out


def implicit_stats(data: list[dict], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Accuracy of the argmax (over all emotions read and over those present) with a bootstrap interval
    over prompts, chance, and the random controls' accuracies; confusion counts per family."""
    main = _table(data, False).get("implicit", {})
    controls = _table(data, True)
    acc, confusion = [], {}
    present = {p["true"] for p in main.values()}
    for family, reading in (("vec", "vector"), ("feat", "feature")):
        read = sorted({m.split(":", 1)[1] for p in main.values() for m in p if m.startswith(family + ":")})
        if not read:
            continue
        pairs = predictions(main, family)
        confusion[family] = {"pairs": pairs, "present": sorted(present)}
        for over, among, n_choices in (("all", None, len(read)), ("present", present, len(present & set(read)))):
            hits = [float(t == p) for t, p in predictions(main, family, among)]
            mean, lo, hi = bootstrap_ci(hits, n_boot=n_boot, seed=seed)
            ctl = []
            for draw in controls.values():
                ch = [float(t == p) for t, p in predictions(draw, family, among)]
                if ch:
                    ctl.append(sum(ch) / len(ch))
            chance = 1 / n_choices if n_choices else math.nan
            cmean = sum(ctl) / len(ctl) if ctl else math.nan
            rng = f"[{_p(min(ctl))}, {_p(max(ctl))}]" if ctl else "-"
            if lo > chance and (not ctl or lo > max(ctl)):
                verdict = "above chance and control"
            elif lo > chance:
                verdict = "above chance, not above every control draw"
            else:
                verdict = "no better than chance (null)"
            acc.append({"reading": reading, "over": f"{over} {n_choices} emotions", "accuracy": mean, "lo": lo,
                        "hi": hi, "chance": chance, "control": cmean, "control_range": rng, "n": len(hits),
                        "verdict": verdict})
    return {"accuracy": acc, "confusion": confusion}


def plot_confusion(conf: dict, title: str, path):
    """Heatmap of true (rows: the emotions present) x predicted (their order first, then others)."""
    plt = pyplot()
    rows = conf["present"]
    cols = rows + sorted({p for _, p in conf["pairs"]} - set(rows))
    counts = [[0] * len(cols) for _ in rows]
    for t, p in conf["pairs"]:
        counts[rows.index(t)][cols.index(p)] += 1
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(cols) + 2), max(4, 0.35 * len(rows) + 1.5)))
    im = ax.imshow(counts, cmap="Blues", aspect="auto")
    for i, r in enumerate(counts):
        for j, v in enumerate(r):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if v > 1 else "black")
    ax.set_xticks(range(len(cols)), cols, rotation=70, fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xlabel("predicted (argmax)")
    ax.set_ylabel("implied emotion")
    hits = sum(t == p for t, p in conf["pairs"])
    ax.set_title(f"{title}\n{hits}/{len(conf['pairs'])} on the diagonal", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.7)
    return save_figure(fig, path)
