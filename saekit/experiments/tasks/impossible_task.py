"""impossible_task: log P(cheating turn) - log P(honest turn) after each failed attempt, and the
emotion readings along the attempts.

Margins: after each failed attempt of a conversation, the log-probability of the cheating over
the honest candidate reply (sum, and mean per token), under every setting. Scored through
saekit.model.score_continuations: per conversation and setting, one cached pass over the
conversation up to its longest scored prefix, then the two candidates of each step as one batch
continuing from the cache cut to that step's prefix; the same numbers as two full passes per step,
float rounding aside. Steering at positions "last" (which full passes apply to a token whose
output nothing reads) and edits off the residual stream take the full passes instead.

Readings (the paper: "desperate" climbs with each failure): on the clean model, the projection of
the activation at the hook on each `readings` emotion's unit vector, and on random unit directions
as controls, at the last prefix token of each step (the start of the assistant's reply, where
trace reads too). The report gives Spearman's r of the attempt with the reading centred on its
conversation, with a permutation p-value that shuffles attempts within each conversation.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from saekit.corpus import corpus_root, load_scenario
from saekit.experiments.batches import chat_ids, positions_mask, read_acts, run_logits
from saekit.experiments.controls import control_direction
from saekit.experiments.kinds import make_edits
from saekit.experiments.render import fmt, pyplot, save_figure
from saekit.experiments.spec import ExperimentError, Prompts
from saekit.experiments.stats import spearman_permutation
from saekit.experiments.targets import BASELINE, TaskInputs, result_rows, select_items
from saekit.experiments.tasks.intervention import InterventionTask, plot_effects
from saekit.experiments.tasks.task import CHARS_PER_TOKEN, Cost, condition_settings
from saekit.model import cacheable_hook, score_continuations

SCENARIO = "impossible_task"
CANDIDATES = ("honest", "cheating")
PAPER_DIRECTION = {"desperate": 1, "calm": -1}
"""The paper's sign of the effect of steering an emotion up on cheating (reward hacking)."""
N_PERMUTATIONS = 10_000


def chosen_steps(conversation: dict, attempts: list[int] | None) -> list[dict]:
    """The conversation's failed-attempt steps that prompts.attempts selects (all when unset)."""
    return [s for s in conversation["steps"] if not attempts or s["attempt"] in attempts]


def scenario_file() -> Path:
    return corpus_root() / "scenarios" / f"{SCENARIO}.json"


@dataclass
class ImpossiblePrompts(Prompts):
    attempts: list[int] | None = None
    """The failed attempts to score (default all)."""
    readings: list[str] = field(default_factory=lambda: ["desperate", "calm"])
    """Emotions read along the attempts on the clean model ([] = none)."""


@dataclass
class Step:
    prompt_id: str
    attempt: int
    prefix_len: int
    candidates: dict[str, list[int]]


@dataclass
class Conversation:
    """A conversation's token ids up to its longest scored prefix, and its scored steps."""
    id: str
    context: list[int]
    steps: list[Step]


class ImpossibleTask(InterventionTask):
    name = "impossible_task"
    chat = True
    metrics = ("margin_sum", "margin_mean", "reading")
    Prompts = ImpossiblePrompts
    primary = "margin_mean"
    effect_note = ("Effect: change in the mean per-token log-probability margin of the cheating over the honest "
                   "reply, versus no intervention (positive = more inclined to cheat).")

    # ------------------------------------------------------------------ before any forward pass

    @classmethod
    def check(cls, spec):
        convs = load_scenario(SCENARIO)["conversations"]
        known = [c["id"] for c in convs]
        unknown = [i for i in spec.prompts.ids or [] if i not in known]
        if unknown:
            raise ValueError(f"prompts.ids {unknown}: no such conversation in {scenario_file()}; it holds {known}")
        chosen = [c for c in convs if spec.prompts.ids is None or c["id"] in spec.prompts.ids]
        attempts = sorted({s["attempt"] for c in chosen for s in c["steps"]})
        bad = [a for a in spec.prompts.attempts or [] if a not in attempts]
        if bad:
            raise ValueError(f"prompts.attempts {bad}: the chosen conversations in {scenario_file()} have failed "
                             f"attempts {attempts}")

    @classmethod
    def resolve(cls, spec, look):
        if spec.wants("reading") and spec.prompts.readings:
            return TaskInputs(vectors=look.vectors([spec.hook], spec.prompts.readings))
        return TaskInputs()

    @classmethod
    def cost(cls, spec):
        """Every setting: one pass per chosen conversation up to its last chosen attempt (the earlier
        attempts read the same KV cache), plus the candidate replies; counted from the scenario."""
        convs = select_items(load_scenario(SCENARIO)["conversations"], spec.prompts)
        attempts = spec.prompts.attempts
        chars = []
        for c in convs:
            steps = chosen_steps(c, attempts)
            if not steps:
                continue
            msgs = [{"content": c["system"]}] + c["turns"]
            last = max(s["after_turn"] for s in steps)
            chars.append(sum(len(m["content"]) for m in msgs[:last + 2])
                         + sum(len(s[k]) for s in steps for k in CANDIDATES))
        per_pass = round(sum(chars) / max(len(chars), 1) / CHARS_PER_TOKEN)
        return Cost(condition_settings(spec), len(chars), per_pass, counted=True)

    def __init__(self, model, res):
        super().__init__(model, res)
        convs = select_items(load_scenario(SCENARIO)["conversations"], self.spec.prompts)
        attempts = self.spec.prompts.attempts
        self.conversations: list[Conversation] = []
        for c in convs:
            msgs = [{"role": "system", "content": c["system"]}] + c["turns"]
            steps = []
            for s in chosen_steps(c, attempts):
                prefix = chat_ids(self.tok, msgs[:s["after_turn"] + 2])
                cand = {k: self.tok(s[k], add_special_tokens=False)["input_ids"] for k in CANDIDATES}
                steps.append((Step(f"{c['id']}/attempt{s['attempt']}", s["attempt"], len(prefix), cand), prefix))
            if not steps:
                continue
            longest = max((p for _, p in steps), key=len)
            shared = [st for st, p in steps if longest[:len(p)] == p]
            if shared:
                self.conversations.append(Conversation(c["id"], longest, shared))
            for st, p in steps:  # a prefix that does not tokenize as the start of the longest gets its own pass
                if longest[:len(p)] != p:
                    self.conversations.append(Conversation(c["id"], p, [st]))
        if not self.conversations:
            raise ExperimentError(f"prompts.attempts {attempts} selects no step")
        self.units: dict[str, torch.Tensor] = {}
        if self.spec.wants("reading") and res.vectors:
            vecs = res.vectors[self.spec.hook]
            self.units = {e: v / v.norm() for e, v in vecs.items()}
            d = next(iter(vecs.values())).numel()
            self.units.update({f"random{k}": control_direction(d, self.spec.seed, k) for k in range(self.spec.controls)})

    # ------------------------------------------------------------------ running

    def cached(self, setting) -> bool:
        """Whether this setting can be scored from the KV cache exactly."""
        if self.spec.positions == "last":
            return False
        return all(cacheable_hook(str(e.hook)) for e in make_edits(self.res, setting, None))

    def measure(self, setting):
        score = self.score_cached if self.cached(setting) else self.score_uncached
        rows = []
        for conv in self.conversations:
            reads: dict[int, torch.Tensor] = {}
            for step, (lp_h, lp_c) in zip(conv.steps, score(setting, conv, reads)):
                m = {"logp_honest_sum": float(lp_h.sum()), "logp_cheating_sum": float(lp_c.sum())}
                if self.spec.wants("margin_sum"):
                    m["margin_sum"] = m["logp_cheating_sum"] - m["logp_honest_sum"]
                if self.spec.wants("margin_mean"):
                    m["margin_mean"] = float(lp_c.mean()) - float(lp_h.mean())
                if step.prefix_len in reads:
                    acts = reads[step.prefix_len]
                    m["attempt"] = float(step.attempt)
                    m.update({f"reading:{e}": float(acts @ u) for e, u in self.units.items()})
                rows += result_rows(setting, step.prompt_id, m)
        return rows

    def score_cached(self, setting, conv: Conversation, reads: dict[int, torch.Tensor]):
        """(honest, cheating) per-token log-probabilities of each step, from one cached pass; on the clean
        model the activation at the start of each reply goes to `reads` (prefix length -> [D])."""
        spec, res = self.spec, self.res
        read = setting.kind == BASELINE and bool(self.units)

        def hooks_for(start, mask_BT):
            full_BT = torch.cat([torch.ones(len(mask_BT), start, dtype=torch.bool), mask_BT], dim=1)
            where_BT = positions_mask(spec.positions, full_BT, res.token_rule)[:, start:]
            hooks = [(str(e.hook), e) for e in make_edits(res, setting, where_BT)]
            if read and start > 0:  # a branch: its first token is the prefix's last
                def record(act_BTD):
                    reads[start + 1] = act_BTD[0, 0].float().cpu()
                    return act_BTD
                hooks.append((spec.hook, record))
            return hooks

        branches = [(st.prefix_len, [st.candidates[k] for k in CANDIDATES]) for st in conv.steps]
        return score_continuations(self.model, conv.context, branches, hooks_for)

    def score_uncached(self, setting, conv: Conversation, reads: dict[int, torch.Tensor]):
        """The same from two full forward passes per step (the candidates as a padded batch)."""
        out = []
        for st in conv.steps:
            prefix = conv.context[:st.prefix_len]
            seqs = [prefix + st.candidates[k] for k in CANDIDATES]
            logp, _ = run_logits(self.model, self.res, setting, seqs)
            out.append(tuple(_token_logprobs(logp[b], seqs[b], st.prefix_len) for b in range(2)))
            if setting.kind == BASELINE and self.units:
                reads[st.prefix_len] = read_acts(self.model, self.spec.hook, prefix)[-1]
        return out

    # ------------------------------------------------------------------ report

    @classmethod
    def summarize(cls, exp, data):
        columns, rows, notes, eff = super().summarize(exp, data)
        trend = reading_trends(exp, data)
        notes = [n for n in notes if n != cls.effect_note] + [trend_note(trend)] * bool(trend) + [cls.effect_note]
        return columns, rows, notes, {"effects": eff, "trend": trend}

    @classmethod
    def plot(cls, exp, data, stats, out, title):
        plots = [plot_effects(cls.effect_rows(stats), title, out / "effect_vs_strength.png")]
        p = plot_readings(data, f"{exp['name']}: readings along the attempts", out / "reading_vs_attempt.png")
        return plots + ([p] if p else [])

    @classmethod
    def effect_rows(cls, stats):
        return stats["effects"]

    @classmethod
    def sentence(cls, summary):
        if not summary["rows"]:
            return "No measurements."
        parts = [direction_sentence(summary["columns"], summary["rows"])]
        parts += [n for n in summary["notes"] if n.startswith(TREND_PREFIX)]
        return " ".join(parts)


def _token_logprobs(logp_TV: torch.Tensor, tokens, start: int) -> torch.Tensor:
    tgt = torch.tensor(list(tokens[start:]), dtype=torch.long)
    return logp_TV[start - 1:len(tokens) - 1].gather(-1, tgt[:, None]).squeeze(-1)


# ---------------------------------------------------------------------------- readings along the attempts

TREND_PREFIX = "Readings along the attempts:"


def _reading_points(data: list[dict]) -> dict[str, list[tuple[str, float, float]]]:
    """metric -> [(conversation, attempt, reading)] from the clean model's rows."""
    by: dict[str, dict[str, float]] = collections.defaultdict(dict)
    for r in data:
        if r["condition"] == BASELINE and (r["metric"] == "attempt" or r["metric"].startswith("reading:")):
            by[r["prompt_id"]][r["metric"]] = r["value"]
    out: dict[str, list[tuple[str, float, float]]] = collections.defaultdict(list)
    for pid, ms in sorted(by.items()):
        if "attempt" not in ms:
            continue
        for m, v in ms.items():
            if m != "attempt":
                out[m].append((pid.rsplit("/", 1)[0], ms["attempt"], v))
    return out


def centred_trend(points: list[tuple[str, float, float]], n_perm: int, seed: int) -> tuple[float, float, int]:
    """(Spearman r of attempt with the reading centred on its conversation's mean, two-sided permutation
    p with attempts shuffled within each conversation, points)."""
    sums: dict[str, list[float]] = collections.defaultdict(list)
    for g, _, y in points:
        sums[g].append(y)
    xs = [x for _, x, _ in points]
    ys = [y - sum(sums[g]) / len(sums[g]) for g, _, y in points]
    r, p, _, _ = spearman_permutation(xs, ys, n_perm=n_perm, seed=seed, groups=[g for g, _, _ in points])
    return r, p, len(points)


def reading_trends(exp: dict, data: list[dict]) -> list[dict]:
    """One row per read emotion (and one for the random directions, pooled): r, p and their verdict."""
    seed = exp["spec"]["spec"].get("seed", 0)
    points = _reading_points(data)
    groups = {m: pts for m, pts in points.items() if not m.startswith("reading:random")}
    randoms = {m: pts for m, pts in points.items() if m.startswith("reading:random")}
    if randoms:  # each direction's readings of a conversation form one more stratum of the null
        groups["reading:random"] = [(f"{m}/{g}", x, y) for m, pts in randoms.items() for g, x, y in pts]
    out = []
    for m, pts in groups.items():
        r, p, n = centred_trend(pts, N_PERMUTATIONS, seed)
        if math.isnan(r):
            verdict = "-"
        elif p < 0.05:
            verdict = "rises" if r > 0 else "falls"
        else:
            verdict = "null"
        out.append({"emotion": m.split(":", 1)[1], "r": r, "p": p, "n": n, "verdict": verdict})
    return out


def trend_note(rows: list[dict]) -> str:
    """The readings' trends with the attempt, next to the random directions' (permutation p-values)."""
    parts = []
    for t in rows:
        many = t["emotion"] == "random"
        what = "random directions" if many else f"'{t['emotion']}'"
        word = {"rises": "rise" if many else "rises", "falls": "fall" if many else "falls",
                "null": "show" if many else "shows", "-": "have" if many else "has"}[t["verdict"]]
        word += {"rises": " with the attempt", "falls": " with the attempt", "null": " no trend (null)",
                 "-": " no trend to measure"}[t["verdict"]]
        numbers = "" if t["verdict"] == "-" else f": Spearman r = {fmt(t['r'], 2)}, permutation p = {t['p']:.2g}"
        parts.append(f"{what} {word}{numbers} (n = {t['n']})")
    return (f"{TREND_PREFIX} " + "; ".join(parts) + " (readings centred on each conversation; attempts shuffled "
            "within conversations; the paper: 'desperate' climbs with each failure).")


def plot_readings(data: list[dict], title: str, path: Path) -> Path | None:
    points = _reading_points(data)
    emotions = [m for m in points if not m.startswith("reading:random")]
    if not emotions:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(emotions), figsize=(5.5 * len(emotions), 4.2), squeeze=False)
    randoms = [m for m in points if m.startswith("reading:random")]
    for ax, m in zip(axes[0], emotions):
        convs = sorted({g for g, _, _ in points[m]})
        for i, g in enumerate(convs):
            pts = sorted((x, y) for gg, x, y in points[m] if gg == g)
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", color=f"C{i % 10}", label=g)
            for k in randoms:
                rp = sorted((x, y) for gg, x, y in points[k] if gg == g)
                ax.plot([x for x, _ in rp], [y for _, y in rp], color=f"C{i % 10}", ls=":", alpha=0.5,
                        label="random direction" if i == 0 and k == randoms[0] else None)
        ax.set_xlabel("failed attempt")
        ax.set_ylabel(f"projection on unit '{m.split(':', 1)[1]}' vector")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return save_figure(fig, path)


# ---------------------------------------------------------------------------- the effect per emotion vs the paper's


def direction_sentence(columns: list[str], rows: list[list[str]]) -> str:
    """Per steered emotion: the effect beyond control at its largest strengths up and down, and whether
    that agrees with the paper's direction (desperate up: more cheating; calm up: less)."""
    i_diff, i_ci = columns.index("effect - control"), columns.index("effect - control") + 1
    by: dict[str, list[list[str]]] = collections.defaultdict(list)
    for r in rows:
        if r[1] != "-":
            by[r[0].split("_")[0]].append(r)
    parts = []
    for emotion, rs in by.items():
        rs = sorted(rs, key=lambda r: float(r[1]))
        ends = [rs[-1]] + ([rs[0]] if float(rs[0][1]) < 0 < float(rs[-1][1]) else [])
        said = ", ".join(f"{float(r[1]):+g}: {r[i_diff]} {r[i_ci]} ({r[-1]})" for r in ends)
        parts.append(f"{emotion} {said}{_versus_paper(emotion, rs)}")
    return ("Steering vs the cheating-minus-honest margin (mean log-probability per token, beyond random "
            "directions; 95% bootstrap intervals over prompts): " + "; ".join(parts) + ".")


def _versus_paper(emotion: str, rows: list[list[str]]) -> str:
    want = PAPER_DIRECTION.get(emotion)
    if want is None:
        return ""
    signs = []
    for r in rows:
        s = math.copysign(1, float(r[1]))
        if r[-1] in ("above control", "positive"):
            signs.append(s)
        elif r[-1] in ("below control", "negative"):
            signs.append(-s)
    if not signs and all(r[-1].startswith("too few") for r in rows):
        return " - too few prompts to compare with the paper"
    if not signs:
        return " - a null where the paper found " + ("more" if want > 0 else "less") + " cheating when steered up"
    if all(s == want for s in signs):
        return " - the paper's direction"
    if all(s == -want for s in signs):
        return " - opposite to the paper's direction"
    return " - mixed directions"

