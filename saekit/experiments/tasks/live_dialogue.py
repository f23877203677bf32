"""live_dialogue: which position's reading predicts the emotion of the assistant's reply?

The paper's timing result: the reading at the first position of the assistant's turn predicts the
reply's emotion far better (r 0.87) than the reading at the end of the user's message (0.59). For
each user message of live_dialogue.jsonl, the projection on each emotion's unit vector is read at
the last token of the user's text (before the chat template's end-of-turn marker) and at the last
token of the generation prompt; the model then writes a short greedy reply, which is fed back in
context and read as the mean projection over its tokens. Per emotion, the correlation across
prompts of each position's reading with the reply's, with bootstrap intervals, their paired
difference, and random unit directions read the same way as the control.
"""

from __future__ import annotations

import collections
import json
import math
from dataclasses import dataclass
from typing import Any

import torch

from saekit.corpus import load_scenario
from saekit.experiments.batches import chat_ids, read_acts
from saekit.experiments.controls import control_direction
from saekit.experiments.render import fmt, pyplot, save_figure
from saekit.experiments.spec import ExperimentError, Prompts
from saekit.experiments.stats import bootstrap_ci, bootstrap_corr, bootstrap_corr_diff
from saekit.experiments.targets import Setting, Target, result_rows, select_items
from saekit.experiments.tasks.reading import ReadingTask
from saekit.experiments.tasks.task import CHARS_PER_TOKEN, Cost
from saekit.model import LM, format_chat

FILE = "saekit/corpus/scenarios/live_dialogue.jsonl"
POSITIONS = ("user_end", "assistant_start")
LABEL = {"user_end": "user's last token", "assistant_start": "assistant turn start"}
TEMPLATE_TOKENS = 20
"""The chat template's tokens around one user message, as the plan counts them."""
COLUMNS = ["emotion", "r user end [95% CI]", "r assistant start [95% CI]", "difference [95% CI]",
           "random r user / assistant (range)", "n", "verdict"]


@dataclass
class LiveDialoguePrompts(Prompts):
    emotions: list[str] | None = None
    """The emotions to read (default: those the chosen items name that have a vector)."""
    per_group: int = 2
    """At most this many user messages per user emotion (0 = all)."""
    reply_tokens: int = 24
    """New tokens of the greedy reply whose mean reading is the outcome."""


def dialogue_items(spec) -> list[dict]:
    """The chosen user messages: prompts.ids (or all), at most prompts.per_group per user emotion, then limit."""
    rows = load_scenario("live_dialogue")
    try:
        rows = select_items(rows, Prompts(ids=spec.prompts.ids))
    except ExperimentError as e:
        raise ExperimentError(f"{FILE}: {e}") from None
    seen: collections.Counter = collections.Counter()
    out = []
    for r in rows:
        if spec.prompts.per_group and seen[r["user_emotion"]] >= spec.prompts.per_group:
            continue
        seen[r["user_emotion"]] += 1
        out.append(r)
    return out[:spec.prompts.limit] if spec.prompts.limit else out


def scenario_emotions(items: list[dict]) -> list[str]:
    """The emotions the chosen items name (user and expected reply emotions), in first-seen order."""
    return list(dict.fromkeys(e for it in items for e in (it["user_emotion"], it["expected_reply_emotion"])))


class LiveDialogueTask(ReadingTask):
    """Readings at the user's last token and at the assistant turn's start, against the reply's reading."""
    name = "live_dialogue"
    chat = True
    metrics = ("vector",)
    Prompts = LiveDialoguePrompts

    @classmethod
    def check(cls, spec):
        super().check(spec)
        if spec.prompts.reply_tokens < 1:
            raise ValueError("prompts.reply_tokens must be at least 1")

    @classmethod
    def cost(cls, spec):
        """Per message, counted from the scenario: the generation's prefill, the reply's one-token steps,
        then prompt and reply read in one pass."""
        items = dialogue_items(spec)
        prompt = sum(len(it["text"]) for it in items) / max(len(items), 1) / CHARS_PER_TOKEN + TEMPLATE_TOKENS
        reply = spec.prompts.reply_tokens
        return Cost(1, len(items), round(2 * prompt + reply), counted=True, decode_steps=len(items) * reply)

    @classmethod
    def emotion_vectors(cls, spec, look, found):
        """prompts.emotions, else the emotions the chosen items name that have a vector (the others noted)."""
        items = dialogue_items(spec)
        if len(items) < 3:
            raise ExperimentError(f"{FILE}: prompts.ids / per_group / limit select {len(items)} messages; "
                                  "a correlation across prompts needs at least 3")
        if spec.prompts.emotions:
            return look.vectors([spec.hook], spec.prompts.emotions)[spec.hook]
        named = scenario_emotions(items)
        have = set(look.vectors([spec.hook], None)[spec.hook])
        read = [e for e in named if e in have]
        if not read:
            raise ExperimentError(f"{FILE}: fields 'user_emotion' and 'expected_reply_emotion' name {named}, none "
                                  f"of which has a vector at {spec.hook} (it has {sorted(have)}); give prompts.emotions")
        found.lookups["not_read"] = [e for e in named if e not in have]
        return look.vectors([spec.hook], read)[spec.hook]

    def __init__(self, model, res):
        super().__init__(model, res)
        spec, tok = self.spec, self.tok
        self.items = dialogue_items(spec)
        self.prompts = []   # (item, ids with the generation prompt, user-end position)
        for it in self.items:
            msgs = [{"role": "user", "content": it["text"]}]
            ids = chat_ids(tok, msgs)
            self.prompts.append((it, ids, user_end(tok, msgs, ids, it["id"])))
        vectors = res.vectors[spec.hook]
        self.emotions = list(vectors)
        self.units_ED = torch.stack([v / v.norm() for v in vectors.values()])
        d = self.units_ED.shape[1]
        self.controls_KD = [control_direction(d, spec.seed, k) for k in range(spec.controls)]
        self.stop = set(tok.all_special_ids)
        self.generations: list[dict] = []

    def reply(self, ids: list[int]) -> list[int]:
        """The greedy reply's tokens, up to its first special token. Generated with the KV cache on the
        plain twin of the model (through the bridge a cached continuation is wrong, and an uncached
        one costs a full pass per new token)."""
        torch.manual_seed(self.spec.seed)
        new = LM.of(self.model, self.tok).greedy_continuation(ids, self.spec.prompts.reply_tokens)
        cut = next((i for i, t in enumerate(new) if t in self.stop), len(new))
        return new[:cut]

    @torch.no_grad()
    def measure(self, setting):
        rows = []
        for it, ids, u in self.prompts:
            new = self.reply(ids)
            self.generations.append({"condition": "none", "strength": None, "id": it["id"], "prompt": it["text"],
                                     "reply": self.tok.decode(new, skip_special_tokens=True)})
            target = Target(f"{it['user_emotion']}->{it['expected_reply_emotion']}")
            if not new:   # an empty reply has no reading: noted, left out of the correlations
                rows += result_rows(Setting("live_dialogue", "none", target, None, False), it["id"], {"reply_len": 0.0})
                continue
            acts_TD = read_acts(self.model, self.spec.hook, ids + new)
            at = {"user_end": acts_TD[u], "assistant_start": acts_TD[len(ids) - 1],
                  "reply": acts_TD[len(ids):].mean(0)}
            m = {f"{p}:vec:{e}": float(x_D @ self.units_ED[j]) for p, x_D in at.items()
                 for j, e in enumerate(self.emotions)}
            m["reply_len"] = float(len(new))
            rows += result_rows(Setting("live_dialogue", "none", target, None, False), it["id"], m)
            for k, c_D in enumerate(self.controls_KD):
                c = {f"{p}:vec:random": float(x_D @ c_D) for p, x_D in at.items()}
                rows += result_rows(Setting(f"live_dialogue:control{k}", "none", target, None, True), it["id"], c)
        return rows

    def write_outputs(self, folder):
        extra: dict[str, Any] = {"reading": "projection on each emotion's unit vector at the user's last token, at the "
                                            "last token of the generation prompt, and averaged over the greedy reply's "
                                            "tokens (fed back in context)",
                                 "not_read": self.res.lookups.get("not_read", [])}
        if self.generations:
            folder.mkdir(parents=True, exist_ok=True)
            gpath = folder / "generations.jsonl"
            gpath.write_text("".join(json.dumps(g, ensure_ascii=False) + "\n" for g in self.generations))
            extra["generations_file"] = str(gpath)
        return extra

    # ------------------------------------------------------------------ report

    @classmethod
    def summarize(cls, exp, data):
        spec = exp["spec"]["spec"]
        stats = live_stats(data, n_boot=spec.get("n_bootstrap", 1000), seed=spec.get("seed", 0))
        rows = [[s["emotion"], _ci(s["user_end"]), _ci(s["assistant_start"]), _ci(s["diff"]),
                 f"{fmt(s['control']['user_end'][0], 2)} / {fmt(s['control']['assistant_start'][0], 2)} "
                 f"({s['control']['range']})", str(s["n"]), s["verdict"]] for s in stats["emotions"]]
        notes = ["r: Pearson correlation across prompts between the reading at a position and the mean reading over "
                 "the reply's tokens; intervals: bootstrap over prompts; difference: r(assistant start) - r(user "
                 "end) on the same resamples.",
                 "Control: random unit directions read the same way (mean r over draws, and their range)."]
        if stats["empty_replies"]:
            notes.append(f"{stats['empty_replies']} prompt(s) got an empty reply and are left out.")
        not_read = exp["spec"].get("not_read") or []
        if not_read:
            notes.append(f"Emotions the scenario names without a vector, not read: {', '.join(not_read)}.")
        agree = stats["agreement"]
        if agree:
            notes.append("Expected reply emotion (argmax among " + ", ".join(agree["among"]) + ", each reading "
                         "centred on the prompts' mean): " + "; ".join(
                             f"{LABEL.get(p, p)} {fmt(a[0], 2)} [{fmt(a[1], 2)}, {fmt(a[2], 2)}]"
                             for p, a in agree["accuracy"].items()) + f" (chance {fmt(agree['chance'], 2)}).")
        return COLUMNS, rows, notes, stats

    @classmethod
    def plot(cls, exp, data, stats, out, title):
        if not stats["emotions"]:
            return []
        return [plot_positions(stats, f"{exp['name']}: which position predicts the reply", out / "live_dialogue_r.png")]

    @classmethod
    def sentence(cls, summary):
        rows = summary["rows"]
        if not rows:
            return "No measurements."
        better = sum(r[6].startswith("assistant start") for r in rows)
        worse = sum(r[6].startswith("user end") for r in rows)
        per = "; ".join(f"{r[0]} {r[1].split()[0]} vs {r[2].split()[0]}" for r in rows[:6])
        head = (f"Live dialogue: across {rows[0][5]} prompts, the reading at the assistant turn's start predicts the "
                f"reply's reading better than the user's last token for {better} of {len(rows)} emotions and worse "
                f"for {worse} (paired bootstrap intervals excluding 0); the intervals overlap for the other "
                f"{len(rows) - better - worse}")
        return f"{head}. r user end vs assistant start: {per}."


def user_end(tok, msgs: list[dict], ids: list[int], item_id: str) -> int:
    """The position of the last token of the user's text in `ids` (the chat with its generation prompt)."""
    text = format_chat(tok, msgs, add_generation_prompt=True)
    end = text.rfind(msgs[-1]["content"]) + len(msgs[-1]["content"])
    prefix = tok(text[:end], add_special_tokens=False)["input_ids"]
    if end < len(msgs[-1]["content"]) or ids[:len(prefix)] != prefix:
        raise ExperimentError(f"{FILE}: the user message of {item_id} does not tokenize prefix-stably in the chat "
                              "template; its last token cannot be located")
    return len(prefix) - 1


def _ci(t: tuple[float, float, float]) -> str:
    return f"{fmt(t[0], 2)} [{fmt(t[1], 2)}, {fmt(t[2], 2)}]"


def _points(data: list[dict], control: bool) -> dict[str, dict[str, dict]]:
    """condition -> prompt -> {"_target": ..., metric: value}."""
    out: dict[str, dict[str, dict]] = collections.defaultdict(dict)
    for r in data:
        if bool(r["is_control"]) != control or not r["condition"].startswith("live_dialogue"):
            continue
        out[r["condition"]].setdefault(r["prompt_id"], {"_target": r["target"]})[r["metric"]] = r["value"]
    return out


def live_stats(data: list[dict], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Per emotion: r of each position's reading with the reply's (bootstrap intervals), their paired
    difference, the random directions' r; and the expected reply emotion's argmax agreement."""
    main = _points(data, False).get("live_dialogue", {})
    empty = sum(1 for p in main.values() if p.get("reply_len", 1) == 0)
    pts = [p for p in main.values() if p.get("reply_len", 1) > 0]
    emotions = sorted({m.split(":", 2)[2] for p in pts for m in p if m.startswith("reply:vec:")})
    controls = [[p for p in c.values() if "reply:vec:random" in p] for c in _points(data, True).values()]
    ctl: dict[str, list[float]] = {pos: [] for pos in POSITIONS}
    for c in controls:
        for pos in POSITIONS:
            ctl[pos].append(bootstrap_corr([p[f"{pos}:vec:random"] for p in c], [p["reply:vec:random"] for p in c],
                                           n_boot=0)[0])
    cmean = {pos: (sum(v) / len(v) if v else math.nan) for pos, v in ctl.items()}
    allc = [x for v in ctl.values() for x in v if not math.isnan(x)]
    crange = f"{min(allc):+.2f}..{max(allc):+.2f}" if allc else "-"
    out = []
    for i, e in enumerate(emotions):
        y = [p[f"reply:vec:{e}"] for p in pts]
        s = {"emotion": e, "n": len(y), "control": {"user_end": (cmean["user_end"],),
                                                     "assistant_start": (cmean["assistant_start"],), "range": crange}}
        for pos in POSITIONS:
            s[pos] = bootstrap_corr([p[f"{pos}:vec:{e}"] for p in pts], y, n_boot=n_boot, seed=seed + i)
        s["diff"] = bootstrap_corr_diff([p[f"user_end:vec:{e}"] for p in pts],
                                        [p[f"assistant_start:vec:{e}"] for p in pts], y, n_boot=n_boot, seed=seed + i)
        d, lo, hi = s["diff"]
        s["verdict"] = ("assistant start predicts better" if lo > 0 else "user end predicts better" if hi < 0
                        else "no clear difference (interval spans 0)")
        out.append(s)
    return {"emotions": out, "empty_replies": empty, "agreement": expected_agreement(pts, emotions, n_boot, seed)}


def expected_agreement(pts: list[dict], emotions: list[str], n_boot: int, seed: int) -> dict[str, Any]:
    """How often the argmax (among the expected reply emotions read) of the centred reading is the expected one."""
    expected = [p["_target"].split("->", 1)[1] for p in pts]
    among = sorted(set(expected) & set(emotions))
    if len(among) < 2:
        return {}
    acc = {}
    for pos in ("reply", "assistant_start"):
        mean = {e: sum(p[f"{pos}:vec:{e}"] for p in pts) / len(pts) for e in among}
        hits = [float(max(among, key=lambda e: p[f"{pos}:vec:{e}"] - mean[e]) == want)
                for p, want in zip(pts, expected) if want in among]
        acc[pos] = bootstrap_ci(hits, n_boot=n_boot, seed=seed)
    return {"among": among, "accuracy": acc, "chance": 1 / len(among)}


def plot_positions(stats: dict, title: str, path):
    """Per emotion: r at the user's last token and at the assistant turn's start, with intervals; the
    random directions' mean r as grey ticks."""
    plt = pyplot()
    rows = stats["emotions"]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows) + 2), 4.5))
    for k, (pos, colour) in enumerate((("user_end", "C0"), ("assistant_start", "C3"))):
        xs = [i + (k - 0.5) * 0.25 for i in range(len(rows))]
        r = [s[pos][0] for s in rows]
        err = [[max(s[pos][0] - s[pos][1], 0) for s in rows], [max(s[pos][2] - s[pos][0], 0) for s in rows]]
        ax.errorbar(xs, r, yerr=err, fmt="o", color=colour, capsize=3, label=LABEL[pos])
        ax.scatter(xs, [s["control"][pos][0] for s in rows], marker="_", s=200, color="grey",
                   label="random direction" if k == 0 else None)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xticks(range(len(rows)), [s["emotion"] for s in rows], rotation=30)
    ax.set_ylabel("r with the reply's reading (95% CI)")
    ax.set_ylim(-1.05, 1.05)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)
