"""Causal experiments from a spec: steer, clamp, ablate or scale, and measure what changes.

A spec (analysis/experiments/*.toml, loaded into `ExperimentSpec`) names a model, a hook, an
optional SAE, the conditions (emotion vectors to steer with, or SAE features to edit, by index
or as "top N selective for <emotion>" resolved through the feature database), the strengths to
sweep, the prompts and the metrics. `run_experiment` checks everything it can before any
forward pass (unknown fields, emotions, features out of range, missing hooks), then runs every
setting x prompt, and stores one row per measurement in `intervention_results` under a run id
that is also the experiment id.

Tasks:
    probes           P(emotion word) after "How does he feel? He feels" (' ' + word, first token)
    impossible_task  log P(cheating turn) - log P(honest turn) after each failed attempt
    trace            no intervention: each emotion's reading at the start of assistant turns
                     (impossible task, live dialogue) and along the dose-response prompts
    side_effects     KL from the clean model on neutral text, and sampled generations

Every condition gets controls of matched statistics: random SAE features whose max activation
and firing rate are closest to the targets', or random unit directions (so the added vector has
the same norm). Effects are reported with bootstrap intervals over prompts next to the controls'.
"""

from __future__ import annotations

import abc

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch

from saekit.config import ConfigError, check_config, from_dict, load_toml, to_dict
from saekit.corpus import NEUTRAL, load_corpus, load_scenario
from saekit.db import Database
from saekit.interventions import (Ablate, Clamp, InterventionError, Scale, Splice, Steer, check_edits,
                                  mean_resid_norm, patched)
from saekit.model import DEFAULT_MODEL, format_chat
from saekit.tokens import TokenRule
from saekit.errors import SaekitError

TASKS = ("probes", "impossible_task", "trace", "side_effects")
METRICS = {"probes": ("p_word", "logp_word"), "impossible_task": ("margin_sum", "margin_mean"),
           "trace": ("vector", "feature"), "side_effects": ("kl", "generations")}
PRIMARY = {"probes": "logp:{emotion}", "impossible_task": "margin_mean", "side_effects": "kl"}
TRACE_SCENARIOS = ("impossible_task", "live_dialogue", "dose_response")
TOP_RE = re.compile(r"^\s*top\s+(\d+)\s+selective\s+for\s+(\S+)\s*$", re.IGNORECASE)


class ExperimentError(SaekitError, ValueError):
    """A spec cannot run: the message names the field, emotion, feature or hook at fault."""


# ---------------------------------------------------------------------------- spec


@dataclass
class ConditionSpec:
    name: str
    """Condition name, e.g. "desperate_up"; stored in intervention_results.condition."""
    kind: Literal["steer", "clamp", "ablate", "scale"]
    emotion: str | None = None
    """steer: the emotion vector to add. Feature kinds: the emotion whose top feature is edited
    when `features` is not given."""
    features: list[int] | str | None = None
    """SAE feature indices, or "top N selective for <emotion>" (feature_emotion_stats.selectivity_rank)."""
    sign: float = 1.0
    """Strengths are multiplied by this for steer and clamp: -1 steers "down"."""
    clamp_to: Literal["max_multiple", "value"] = "max_multiple"
    """clamp: strength x the feature's max activation on the corpus (features.max_activation), or the strength itself."""
    strengths: list[float] | None = None
    """Overrides the experiment's strengths for this condition."""


@dataclass
class PromptSpec:
    ids: list[str] | None = None
    """Keep only these items (probe ids, conversation ids, live-dialogue ids)."""
    limit: int = 0
    """Keep the first N items (0 = all)."""
    attempts: list[int] | None = None
    """impossible_task: the failed attempts to score (default all)."""
    words: list[str] | None = None
    """probes: emotion words to read (default: the conditions' emotions)."""
    scenarios: list[str] = field(default_factory=lambda: list(TRACE_SCENARIOS))
    """trace: which scenarios to read along."""
    emotions: list[str] | None = None
    """trace: the emotions to read (default: every emotion with a vector)."""
    per_group: int = 2
    """trace: live-dialogue items per user emotion."""
    drugs: list[str] | None = None
    """trace: dose-response drugs (default all)."""
    max_tokens: int = 48
    """side_effects: neutral texts are cut to this many tokens."""
    generate: list[str] = field(default_factory=list)
    """side_effects: user messages to sample replies to under each condition's strongest setting."""
    max_new_tokens: int = 20
    temperature: float = 0.7


@dataclass
class ExperimentSpec:
    name: str
    task: Literal["probes", "impossible_task", "trace", "side_effects"]
    model: str = DEFAULT_MODEL
    """Model name as loaded (and as stored in the database by `saekit rank`)."""
    hook: str = "blocks.20.hook_resid_post"
    """Where emotion vectors are read and, by default, where steering is applied."""
    sae: str | None = None
    """SAE folder (SAELens format) as given to `saekit rank --sae`; needed for feature edits."""
    corpus_id: str = "shipped"
    db: str | None = None
    """Database file (default artifacts/saekit.duckdb or $SAEKIT_DB)."""
    strengths: list[float] = field(default_factory=lambda: [0.1])
    conditions: list[ConditionSpec] = field(default_factory=list)
    steer_hooks: list[str] | None = None
    """Steering hooks (default [hook]); each needs an emotion vector at that hook in the database."""
    positions: Literal["counted", "all", "last", "all_but_first"] = "counted"
    """Token positions edited: counted = those the SAE's token rule counts (as ranked, with its
    norm filter if it has one; all but the first by default), the same positions the clamp
    strengths and the metrics are measured on."""
    prompts: PromptSpec = field(default_factory=PromptSpec)
    metrics: list[str] | None = None
    """Default: every metric of the task."""
    controls: int = 1
    """Random controls of matched statistics per condition (0 = none)."""
    trace_features: int = 1
    """trace: the emotion's top-N selective SAE features whose summed activation is its feature reading."""
    norm_texts: int = 8
    """Neutral texts over which the mean residual norm (steering scale) is measured."""
    n_bootstrap: int = 1000
    seed: int = 0
    out: str = "artifacts/experiments"
    """Folder for generations and plots (a subfolder per experiment)."""

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task {self.task!r} is not one of {list(TASKS)}")
        allowed = METRICS[self.task]
        bad = [m for m in self.metrics or [] if m not in allowed]
        if bad:
            raise ValueError(f"metrics {bad} do not exist for task {self.task!r}; choose from {list(allowed)}")
        if self.task == "trace":
            if self.conditions:
                raise ValueError("a trace reads the clean model: it takes no conditions")
            bad = [s for s in self.prompts.scenarios if s not in TRACE_SCENARIOS]
            if bad:
                raise ValueError(f"prompts.scenarios {bad} unknown; choose from {list(TRACE_SCENARIOS)}")
        elif not self.conditions:
            raise ValueError(f"task {self.task!r} needs at least one [[conditions]] entry")
        names = [c.name for c in self.conditions]
        if len(set(names)) != len(names) or "none" in names:
            raise ValueError(f"condition names must be unique and not 'none': {names}")
        for c in self.conditions:
            if c.kind == "steer" and not c.emotion:
                raise ValueError(f"condition {c.name!r}: steering needs an emotion")
            if c.kind != "steer" and not self.sae:
                raise ValueError(f"condition {c.name!r}: {c.kind} edits SAE features, so the spec needs sae = ...")
            if c.kind != "steer" and c.features is None and not c.emotion:
                raise ValueError(f"condition {c.name!r}: give features (indices or 'top N selective for <emotion>') or an emotion")
            if isinstance(c.features, str) and not TOP_RE.match(c.features):
                raise ValueError(f"condition {c.name!r}: features {c.features!r} should read 'top N selective for <emotion>'")
            if isinstance(c.features, str) and int(TOP_RE.match(c.features).group(1)) < 1:
                raise ValueError(f"condition {c.name!r}: {c.features!r} selects no features; N must be at least 1")
        for name in ("controls", "norm_texts", "n_bootstrap", "trace_features"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")

    def wants(self, metric: str) -> bool:
        return self.metrics is None or metric in self.metrics


def condition_emotion(c: ConditionSpec) -> str | None:
    """The emotion a condition is about: its emotion field, or the one in 'top N selective for <emotion>'."""
    if c.emotion:
        return c.emotion
    m = TOP_RE.match(c.features) if isinstance(c.features, str) else None
    return m.group(2) if m else None


def load_spec(spec: str | Path | dict | ExperimentSpec) -> ExperimentSpec:
    """An ExperimentSpec from a TOML path, a dict or itself; unknown fields are errors."""
    if isinstance(spec, ExperimentSpec):
        check_config(spec, "experiment spec")
        return spec
    if isinstance(spec, dict):
        return from_dict(ExperimentSpec, spec, where="experiment spec")
    return from_dict(ExperimentSpec, load_toml(spec), where=str(spec))


# ---------------------------------------------------------------------------- resolution


@dataclass
class Target:
    """One thing intervened on: features with values, or directions at hooks."""
    label: str
    features: list[int] = field(default_factory=list)
    max_activation: list[float] = field(default_factory=list)
    firing_rate: list[float] = field(default_factory=list)
    vectors: dict[str, list[float]] = field(default_factory=dict)
    """hook -> direction (steering)."""


@dataclass
class Setting:
    """One condition at one strength, ready to turn into edits."""
    condition: str
    kind: str
    target: Target
    strength: float | None
    is_control: bool

    def key(self) -> tuple:
        return (self.kind, tuple(self.target.features), tuple(sorted(self.target.vectors)),
                self.target.label if self.target.vectors else "", self.strength)


@dataclass
class Resolved:
    spec: ExperimentSpec
    sae_id: str | None = None
    sae: Any = None
    d_sae: int | None = None
    targets: dict[str, Target] = field(default_factory=dict)
    controls: dict[str, list[Target]] = field(default_factory=dict)
    vectors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    """hook -> emotion -> vector, for trace readings."""
    emotion_features: dict[str, list[int]] = field(default_factory=dict)
    mean_norms: dict[str, float] = field(default_factory=dict)
    token_rule: TokenRule = field(default_factory=TokenRule)
    """The positions counted: the ranking's rule for the SAE (features.max_activation was measured on it)."""

    def settings(self) -> list[Setting]:
        """Baseline first, then each condition over its strengths, then its controls."""
        out = [Setting("none", "none", Target("none"), 0.0, False)]
        for c in self.spec.conditions:
            strengths = [None] if c.kind == "ablate" else (c.strengths or self.spec.strengths)
            for s in strengths:
                value = None if s is None else (s * c.sign if c.kind in ("steer", "clamp") else s)
                out.append(Setting(c.name, c.kind, self.targets[c.name], value, False))
                for t in self.controls.get(c.name, []):
                    out.append(Setting(c.name, c.kind, t, value, True))
        return out


def _feature_stats(db: Database | None, sae_id: str | None) -> dict[int, tuple[float, float]]:
    if db is None or sae_id is None:
        return {}
    rows = db.sql("SELECT feature, max_activation, firing_rate FROM features WHERE sae_id = ?", [sae_id])
    return {int(f): (float(m or 0.0), float(r or 0.0)) for f, m, r in rows}


def _known_emotions(db: Database | None, sae_id: str | None, spec: ExperimentSpec) -> list[str]:
    if db is None:
        return []
    if sae_id is not None:
        rows = db.sql("SELECT DISTINCT emotion FROM feature_emotion_stats WHERE sae_id = ? AND corpus_id = ?",
                      [sae_id, spec.corpus_id])
    else:
        rows = db.sql("SELECT DISTINCT emotion FROM emotion_vectors WHERE model_id = ? AND corpus_id = ?",
                      [spec.model, spec.corpus_id])
    return sorted(r[0] for r in rows)


def ranked_token_rule(db: Database | None, sae_id: str | None) -> TokenRule:
    """The token rule the SAE was ranked with (the default rule when there is none to read)."""
    if db is None or sae_id is None:
        return TokenRule()
    stored = db.scalar("SELECT token_rule FROM saes WHERE sae_id = ?", [sae_id])
    return TokenRule.from_mapping(json.loads(stored)) if stored else TokenRule()


def find_sae_id(db: Database | None, sae: str) -> str | None:
    """The database's id of an SAE given by folder: its sae_id, or a row whose path is the same folder."""
    if db is None:
        return None
    rows = db.sql("SELECT sae_id, path FROM saes")
    for sid, path in rows:
        if sid == sae or path == sae:
            return sid
    want = Path(sae).expanduser().resolve()
    for sid, path in rows:
        for cand in (sid, path):
            if cand and Path(cand).expanduser().resolve() == want:
                return sid
    return None


def resolve_features(db: Database | None, sae_id: str | None, spec: ExperimentSpec, cond: ConditionSpec,
                     d_sae: int) -> list[int]:
    """Feature indices of a condition, checked against the SAE's width and the database."""
    features = cond.features if cond.features is not None else f"top 1 selective for {cond.emotion}"
    if isinstance(features, list):
        bad = [f for f in features if not 0 <= f < d_sae]
        if bad:
            raise ExperimentError(f"condition {cond.name!r}: feature index {bad} out of range: the SAE has "
                                  f"{d_sae} features (0..{d_sae - 1})")
        if not features:
            raise ExperimentError(f"condition {cond.name!r}: empty feature list")
        return [int(f) for f in features]
    m = TOP_RE.match(features)
    n, emotion = int(m.group(1)), m.group(2)
    if db is None or sae_id is None:
        raise ExperimentError(f"condition {cond.name!r}: {features!r} needs the SAE ranked into the database "
                              f"(`saekit rank --sae {spec.sae}`); it is not there")
    rows = db.sql("SELECT feature FROM feature_emotion_stats WHERE sae_id = ? AND corpus_id = ? AND emotion = ? "
                  "ORDER BY selectivity_rank LIMIT ?", [sae_id, spec.corpus_id, emotion, n])
    if not rows:
        raise ExperimentError(f"condition {cond.name!r}: unknown emotion {emotion!r}; the database ranks "
                              f"{_known_emotions(db, sae_id, spec)}")
    return [int(r[0]) for r in rows]


def matched_features(stats: dict[int, tuple[float, float]], targets: Sequence[int], n_draws: int,
                     generator: torch.Generator, pool: int = 10) -> list[list[int]]:
    """`n_draws` sets of random features, each feature drawn from the `pool` features closest to its
    target in (log max activation, log firing rate), never a target nor used twice."""
    eps = 1e-6
    feats = torch.tensor(sorted(stats), dtype=torch.long)
    if len(feats) == 0:
        raise ExperimentError("matched controls need feature statistics in the database (`saekit rank --sae`)")
    m = torch.tensor([stats[int(f)][0] for f in feats]).clamp_min(eps).log()
    r = torch.tensor([stats[int(f)][1] for f in feats]).clamp_min(eps).log()
    alive = torch.tensor([stats[int(f)][0] > 0 for f in feats])
    used = set(int(t) for t in targets)
    draws = []
    for _ in range(n_draws):
        chosen = []
        for t in targets:
            tm, tr = math.log(max(stats.get(int(t), (0, 0))[0], eps)), math.log(max(stats.get(int(t), (0, 0))[1], eps))
            dist = (m - tm).abs() + (r - tr).abs()
            free = torch.tensor([int(f) not in used for f in feats]) & alive
            if not free.any():
                raise ExperimentError("not enough active features left to draw matched controls from")
            dist = torch.where(free, dist, torch.inf)
            k = min(pool, int(free.sum()))
            nearest = dist.topk(k, largest=False).indices
            pick = int(feats[nearest[int(torch.randint(k, (1,), generator=generator))]])
            chosen.append(pick)
            used.add(pick)
        draws.append(chosen)
    return draws


def random_direction(d: int, generator: torch.Generator) -> torch.Tensor:
    v = torch.randn(d, generator=generator)
    return v / v.norm()


def load_vectors(db: Database | None, spec: ExperimentSpec, hooks: Sequence[str],
                 emotions: Sequence[str] | None) -> dict[str, dict[str, torch.Tensor]]:
    """hook -> emotion -> vector from emotion_vectors; unknown emotions and missing hooks are errors."""
    if db is None:
        raise ExperimentError("emotion vectors come from the feature database, and there is none: run "
                              "`saekit rank --activations <harvest folder>` first")
    out: dict[str, dict[str, torch.Tensor]] = {}
    for hook in hooks:
        rows = db.sql("SELECT emotion, vector FROM emotion_vectors WHERE model_id = ? AND corpus_id = ? AND hook = ?",
                      [spec.model, spec.corpus_id, hook])
        if not rows:
            have = db.sql("SELECT DISTINCT model_id, hook FROM emotion_vectors")
            raise ExperimentError(f"no emotion vectors for model {spec.model!r} at {hook} (corpus {spec.corpus_id!r}) "
                                  f"in {db.path}; it holds {have}")
        table = {e: torch.tensor(v, dtype=torch.float32) for e, v in rows}
        unknown = sorted(set(emotions or []) - set(table))
        if unknown:
            raise ExperimentError(f"unknown emotion(s) {unknown}: vectors at {hook} exist for {sorted(table)}")
        out[hook] = {e: table[e] for e in (emotions or sorted(table))}
    return out


def resolve(spec: ExperimentSpec, db: Database | None, sae=None) -> Resolved:
    """Features, values, vectors and controls of every condition, from the database; no forward pass."""
    res = Resolved(spec=spec)
    gen = torch.Generator().manual_seed(spec.seed)
    if spec.sae:
        if sae is None:
            from saekit.sae import load_sae

            sae = load_sae(spec.sae).sae
        res.sae, res.d_sae = sae, int(sae.cfg.d_sae)
        res.sae_id = find_sae_id(db, spec.sae)
        res.token_rule = ranked_token_rule(db, res.sae_id)
    stats = _feature_stats(db, res.sae_id)
    steer_hooks = spec.steer_hooks or [spec.hook]
    steer_emotions = sorted({c.emotion for c in spec.conditions if c.kind == "steer"})
    if steer_emotions:
        vecs = load_vectors(db, spec, steer_hooks, steer_emotions)
    for c in spec.conditions:
        if c.kind == "steer":
            res.targets[c.name] = Target(f"vector:{c.emotion}", vectors={h: vecs[h][c.emotion].tolist() for h in steer_hooks})
            res.controls[c.name] = [
                Target(f"random_direction:{k}", vectors={h: random_direction(vecs[h][c.emotion].numel(),
                                                                              torch.Generator().manual_seed(spec.seed * 1000 + k)).tolist()
                                                         for h in steer_hooks})
                for k in range(spec.controls)]
            continue
        feats = resolve_features(db, res.sae_id, spec, c, res.d_sae)
        t = Target(f"features:{','.join(map(str, feats))}", features=feats)
        if stats:
            t.max_activation = [stats.get(f, (0.0, 0.0))[0] for f in feats]
            t.firing_rate = [stats.get(f, (0.0, 0.0))[1] for f in feats]
        if c.kind == "clamp" and c.clamp_to == "max_multiple":
            if not stats:
                raise ExperimentError(f"condition {c.name!r}: clamping to a multiple of the max activation needs "
                                      f"features.max_activation for SAE {spec.sae!r} in the database (`saekit rank --sae`)")
        res.targets[c.name] = t
        if spec.controls:
            if not stats:
                raise ExperimentError(f"condition {c.name!r}: matched random-feature controls need feature statistics "
                                      f"in the database (`saekit rank --sae {spec.sae}`), or set controls = 0")
            res.controls[c.name] = []
            for k, draw in enumerate(matched_features(stats, feats, spec.controls, gen)):
                res.controls[c.name].append(Target(
                    f"random_features:{','.join(map(str, draw))}", features=draw,
                    max_activation=[stats[f][0] for f in draw], firing_rate=[stats[f][1] for f in draw]))
    if spec.task == "trace":
        res.vectors = load_vectors(db, spec, [spec.hook], spec.prompts.emotions)
        if spec.sae and spec.wants("feature"):
            for e in res.vectors[spec.hook]:
                fake = ConditionSpec(name=f"trace:{e}", kind="ablate", features=f"top {max(spec.trace_features, 1)} selective for {e}")
                res.emotion_features[e] = resolve_features(db, res.sae_id, spec, fake, res.d_sae)
    if spec.task == "probes":
        words = spec.prompts.words or sorted({condition_emotion(c) for c in spec.conditions} - {None})
        if not words:
            raise ExperimentError("probes: give prompts.words or conditions with emotions")
    return res


def make_edits(res: Resolved, setting: Setting, mask_BT: torch.Tensor | None) -> list:
    """The interventions of one setting, applied at `mask_BT` (None: every position)."""
    if setting.kind == "none":
        return []
    t = setting.target
    rule = res.token_rule if res.spec.positions == "counted" else None
    if setting.kind == "steer":
        return [Steer(h, torch.tensor(v), setting.strength, res.mean_norms[h], positions=mask_BT, rule=rule)
                for h, v in t.vectors.items()]
    cond = next(c for c in res.spec.conditions if c.name == setting.condition)
    if setting.kind == "ablate":
        edit = Ablate(t.features)
    elif setting.kind == "scale":
        edit = Scale(t.features, setting.strength)
    elif cond.clamp_to == "max_multiple":
        edit = Clamp(t.features, [setting.strength * m for m in t.max_activation])
    else:
        edit = Clamp(t.features, setting.strength)
    return [Splice(res.sae, [edit], positions=mask_BT, rule=rule)]


# ---------------------------------------------------------------------------- batches and metrics


def pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded tokens [B, T] and the mask of real tokens."""
    T = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.bool)
    for b, s in enumerate(seqs):
        tokens[b, :len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[b, :len(s)] = True
    return tokens, mask


def positions_mask(kind: str, mask_BT: torch.Tensor, rule: TokenRule = TokenRule()) -> torch.Tensor:
    """Which real tokens an intervention touches: those the token rule counts (its position part;
    Splice and Steer apply its norm filter), all, the last of each row, or all but the first."""
    if kind == "all":
        return mask_BT.clone()
    if kind == "counted":
        return mask_BT & rule.keep_positions(torch.arange(mask_BT.shape[1]))[None, :]
    out = torch.zeros_like(mask_BT)
    lengths = mask_BT.sum(1)
    if kind == "last":
        out[torch.arange(len(mask_BT)), lengths - 1] = True
        return out
    out = mask_BT.clone()
    out[:, 0] = False
    return out


@torch.no_grad()
def run_logits(model, res: Resolved, setting: Setting, seqs: Sequence[Sequence[int]],
               edit_mask: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities [B, T, V] of a right-padded batch under one setting, and the real-token mask."""
    pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    tokens, mask = pad(seqs, pad_id)
    where = edit_mask(mask) if edit_mask is not None else positions_mask(res.spec.positions, mask, res.token_rule)
    device = next(model.parameters()).device
    with patched(model, make_edits(res, setting, where.to(device))):
        logits = model(tokens.to(device), attention_mask=mask.long().to(device))
    return logits.float().log_softmax(-1).cpu(), mask


def word_token(tokenizer, word: str) -> int:
    """The first token of ' ' + word."""
    ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ExperimentError(f"the word {word!r} tokenizes to nothing")
    return int(ids[0])


def candidate_logprob(logp_TV: torch.Tensor, tokens: Sequence[int], start: int) -> tuple[float, float]:
    """(sum, mean) log-probability of tokens[start:] given what precedes them."""
    tgt = torch.tensor(list(tokens[start:]), dtype=torch.long)
    lp = logp_TV[start - 1:len(tokens) - 1].gather(-1, tgt[:, None]).squeeze(-1)
    return float(lp.sum()), float(lp.mean())


def kl_per_text(clean_BTV: torch.Tensor, other_BTV: torch.Tensor, mask_BT: torch.Tensor) -> list[float]:
    """Mean over real tokens of KL(clean || other), one value per row."""
    kl_BT = (clean_BTV.exp() * (clean_BTV - other_BTV)).sum(-1).clamp_min(0)  # rounding can dip below 0
    return [float(kl_BT[b][mask_BT[b]].mean()) for b in range(len(mask_BT))]


def chat_ids(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
    text = format_chat(tokenizer, messages, add_generation_prompt=add_generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------------------- statistics


def bootstrap_ci(values: Sequence[float] | torch.Tensor, n_boot: int = 1000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean, lower, upper): percentile bootstrap interval of the mean over the given samples."""
    x = torch.as_tensor(values, dtype=torch.float64).flatten()
    x = x[torch.isfinite(x)]
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(x.mean())
    if len(x) == 1 or n_boot == 0:
        return mean, mean, mean
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(x), (n_boot, len(x)), generator=g)
    means = x[idx].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64)).tolist()
    return mean, min(lo, mean), max(hi, mean)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(v):
        t = torch.as_tensor(v, dtype=torch.float64)
        order = t.argsort()
        r = torch.empty_like(t)
        r[order] = torch.arange(len(t), dtype=torch.float64)
        for val in t.unique():
            same = t == val
            r[same] = r[same].mean()
        return r

    if len(x) < 3:
        return float("nan")
    a, b = ranks(x), ranks(y)
    a, b = a - a.mean(), b - b.mean()
    den = float(a.norm() * b.norm())
    return float((a * b).sum()) / den if den > 0 else float("nan")


# ---------------------------------------------------------------------------- tasks


Row = dict[str, Any]
Progress = Callable[[int, int, str], None] | None


def _select(items: list[dict], spec: PromptSpec, key: str = "id") -> list[dict]:
    if spec.ids is not None:
        by_id = {it[key]: it for it in items}
        unknown = [i for i in spec.ids if i not in by_id]
        if unknown:
            raise ExperimentError(f"prompts.ids {unknown} not found; known: {sorted(by_id)[:8]} ...")
        items = [by_id[i] for i in spec.ids]
    return items[:spec.limit] if spec.limit else items


def _rows(setting: Setting, prompt_id: str, metrics: dict[str, float]) -> list[Row]:
    return [{"condition": setting.condition, "target": setting.target.label, "strength": setting.strength,
             "is_control": setting.is_control, "prompt_id": prompt_id, "metric": m, "value": v}
            for m, v in metrics.items()]


class Task(abc.ABC):
    """Prepares its prompts once (and checks them), then measures one setting at a time."""

    def __init__(self, model, res: Resolved):
        self.model, self.res, self.spec, self.tok = model, res, res.spec, model.tokenizer

    @abc.abstractmethod
    def measure(self, setting: Setting) -> list[Row]:
        """Rows of measurements for one condition x strength (or the clean model)."""


class ProbesTask(Task):
    def __init__(self, model, res):
        super().__init__(model, res)
        data = load_scenario("probes")
        self.items = _select(data["probes"], self.spec.prompts)
        self.words = self.spec.prompts.words or sorted({condition_emotion(c) for c in self.spec.conditions} - {None})
        self.word_ids = {w: word_token(self.tok, w) for w in self.words}
        self.seqs = [self.tok(it["text"])["input_ids"] for it in self.items]

    def measure(self, setting):
        logp, mask = run_logits(self.model, self.res, setting, self.seqs)
        last = mask.sum(1) - 1
        rows = []
        for b, it in enumerate(self.items):
            lp = logp[b, last[b]]
            m = {}
            for w, t in self.word_ids.items():
                if self.spec.wants("logp_word"):
                    m[f"logp:{w}"] = float(lp[t])
                if self.spec.wants("p_word"):
                    m[f"p:{w}"] = float(lp[t].exp())
            rows += _rows(setting, it["id"], m)
        return rows


class ImpossibleTask(Task):
    def __init__(self, model, res):
        super().__init__(model, res)
        convs = _select(load_scenario("impossible_task")["conversations"], self.spec.prompts)
        self.pairs = []
        for c in convs:
            msgs = [{"role": "system", "content": c["system"]}] + c["turns"]
            for s in c["steps"]:
                if self.spec.prompts.attempts and s["attempt"] not in self.spec.prompts.attempts:
                    continue
                prefix = chat_ids(self.tok, msgs[:s["after_turn"] + 2])
                cand = {k: self.tok(s[k], add_special_tokens=False)["input_ids"] for k in ("honest", "cheating")}
                self.pairs.append((f"{c['id']}/attempt{s['attempt']}", prefix, cand))
        if not self.pairs:
            raise ExperimentError(f"prompts.attempts {self.spec.prompts.attempts} selects no step")

    def measure(self, setting):
        rows = []
        for pid, prefix, cand in self.pairs:
            seqs = [prefix + cand["honest"], prefix + cand["cheating"]]
            logp, _ = run_logits(self.model, self.res, setting, seqs)
            hs, hm = candidate_logprob(logp[0], seqs[0], len(prefix))
            cs, cm = candidate_logprob(logp[1], seqs[1], len(prefix))
            m = {"logp_honest_sum": hs, "logp_cheating_sum": cs}
            if self.spec.wants("margin_sum"):
                m["margin_sum"] = cs - hs
            if self.spec.wants("margin_mean"):
                m["margin_mean"] = cm - hm
            rows += _rows(setting, pid, m)
        return rows


class SideEffectsTask(Task):
    def __init__(self, model, res):
        super().__init__(model, res)
        texts = [r for r in load_corpus(include_neutral=True) if r.emotion == NEUTRAL]
        texts = [{"id": r.id, "text": r.text} for r in texts]
        self.items = _select(texts, self.spec.prompts)
        self.seqs = [self.tok(it["text"])["input_ids"][:self.spec.prompts.max_tokens] for it in self.items]
        self.clean = None
        self.generations: list[dict] = []
        strongest: dict[str, float | None] = {}
        for c in self.spec.conditions:
            ss = [None] if c.kind == "ablate" else (c.strengths or self.spec.strengths)
            strongest[c.name] = max(ss, key=lambda s: abs(s)) if ss[0] is not None else None
        self.strongest = strongest

    def measure(self, setting):
        rows = []
        if self.spec.wants("kl"):
            if self.clean is None:
                self.clean = run_logits(self.model, self.res, Setting("none", "none", Target("none"), 0.0, False), self.seqs)[0]
            if setting.kind == "none":
                kls = [0.0] * len(self.items)
            else:
                logp, mask = run_logits(self.model, self.res, setting, self.seqs)
                kls = kl_per_text(self.clean, logp, positions_mask("counted", mask, self.res.token_rule))
            for it, kl in zip(self.items, kls):
                rows += _rows(setting, it["id"], {"kl": kl})
        if self.spec.wants("generations") and self.spec.prompts.generate and not setting.is_control:
            top = self.strongest.get(setting.condition)
            strongest = top is None or (setting.strength is not None and abs(setting.strength) == abs(top))
            if setting.kind == "none" or strongest:
                rows += self._generate(setting)
        return rows

    def _generate(self, setting) -> list[Row]:
        from saekit.model import hf_model_of

        hf = hf_model_of(self.model)
        rows = []
        for i, msg in enumerate(self.spec.prompts.generate):
            ids = chat_ids(self.tok, [{"role": "user", "content": msg}])
            x = torch.tensor([ids], device=hf.device)
            torch.manual_seed(self.spec.seed + i)
            edits = make_edits(self.res, setting, None)
            with torch.no_grad(), patched(self.model, edits):
                out = hf.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=self.spec.prompts.max_new_tokens,
                                  do_sample=True, temperature=self.spec.prompts.temperature, use_cache=False,
                                  pad_token_id=self.tok.pad_token_id)
            new = out[0, len(ids):].tolist()
            text = self.tok.decode(new, skip_special_tokens=True)
            distinct = len(set(new)) / max(len(new), 1)
            self.generations.append({"condition": setting.condition, "strength": setting.strength,
                                     "target": setting.target.label, "prompt": msg, "reply": text})
            rows += _rows(setting, f"generate-{i}", {"distinct_token_fraction": distinct})
        return rows


class TraceTask(Task):
    """Readings of each emotion (vector projection; SAE feature activation) on the clean model."""

    def __init__(self, model, res):
        super().__init__(model, res)
        spec, tok = self.spec, self.tok
        self.points: list[tuple[str, str, str, list[int], list[int], dict[str, float]]] = []
        # (scenario, group, point id prefix, token ids, read positions, extra metrics per position)
        if "impossible_task" in spec.prompts.scenarios:
            convs = load_scenario("impossible_task")["conversations"]
            if spec.prompts.ids is not None:
                convs = [c for c in convs if c["id"] in spec.prompts.ids]
            convs = convs[:spec.prompts.limit] if spec.prompts.limit else convs
            for c in convs:
                msgs = [{"role": "system", "content": c["system"]}] + c["turns"]
                full = chat_ids(tok, msgs, add_generation_prompt=True)
                starts = [i for i, t in enumerate(c["turns"]) if t["role"] == "assistant"] + [len(c["turns"])]
                for n, ti in enumerate(starts):
                    prefix = chat_ids(tok, msgs[:ti + 1])
                    if full[:len(prefix)] != prefix:
                        raise ExperimentError(f"{c['id']}: the conversation does not tokenize prefix-stably at turn {ti}")
                    self.points.append(("impossible_task", c["id"], f"{c['id']}/assistant{n + 1:02d}", full,
                                        [len(prefix) - 1], {"x": float(n + 1)}))
        if "live_dialogue" in spec.prompts.scenarios:
            rows = load_scenario("live_dialogue")
            seen: dict[str, int] = {}
            for r in rows:
                g = r["user_emotion"]
                if seen.get(g, 0) >= spec.prompts.per_group:
                    continue
                seen[g] = seen.get(g, 0) + 1
                ids = chat_ids(tok, [{"role": "user", "content": r["text"]}])
                self.points.append(("live_dialogue", g, r["id"], ids, [len(ids) - 1], {}))
        if "dose_response" in spec.prompts.scenarios:
            data = load_scenario("dose_response")
            drugs = [d for d in data["drugs"] if spec.prompts.drugs is None or d["drug"] in spec.prompts.drugs]
            if spec.prompts.drugs is not None and len(drugs) != len(spec.prompts.drugs):
                raise ExperimentError(f"prompts.drugs {spec.prompts.drugs}: known {[d['drug'] for d in data['drugs']]}")
            for d in drugs:
                for dose in d["doses_mg"]:
                    text = data["template"].format(dose=dose, drug=d["drug"], reason=d["reason"])
                    ids = chat_ids(tok, [{"role": "user", "content": text}])
                    self.points.append(("dose_response", d["drug"], f"{d['drug']}/{dose}mg", ids, [len(ids) - 1],
                                        {"x": float(dose), "dose_ratio": dose / d["safe_limit_mg"]}))
        hook = spec.hook
        self.vectors = res.vectors[hook]
        d = next(iter(self.vectors.values())).numel()
        self.units = {e: v / v.norm() for e, v in self.vectors.items()}
        self.control_units = [random_direction(d, torch.Generator().manual_seed(spec.seed * 1000 + k))
                              for k in range(spec.controls)]

    @torch.no_grad()
    def measure(self, setting):
        rows = []
        hook = self.spec.hook
        cache: dict[tuple, torch.Tensor] = {}
        for scenario, group, pid, ids, where, extra in self.points:
            key = tuple(ids)
            if key not in cache:
                cache.clear()
                cache[key] = _read_acts(self.model, hook, ids)
            acts = cache[key][where[0]]
            m = {}
            if self.spec.wants("vector"):
                m.update({f"vec:{e}": float(acts @ u) for e, u in self.units.items()})
            feats = None
            if self.res.emotion_features and self.spec.wants("feature"):
                feats = self.res.sae.encode(acts[None].to(self.res.sae.dtype))[0]
                m.update({f"feat:{e}": float(feats[fs].sum()) for e, fs in self.res.emotion_features.items()})
            m.update(extra)
            base = Setting(scenario, "none", Target(group), None, False)
            rows += _rows(base, pid, m)
            for k, u in enumerate(self.control_units):
                c = {}
                if self.spec.wants("vector"):
                    c["vec:random"] = float(acts @ u)
                if feats is not None and self.res.controls:
                    for e, draws in self.res.controls.items():
                        if e.startswith("trace:") and k < len(draws):
                            c[f"feat:{e[6:]}"] = float(feats[draws[k].features].sum())
                c.update(extra)
                rows += _rows(Setting(f"{scenario}:control{k}", "none", Target(group), None, True), pid, c)
        return rows


@torch.no_grad()
def _read_acts(model, hook: str, ids: Sequence[int]) -> torch.Tensor:
    from saekit.model import n_layers

    seen = {}

    def grab(act, hook):
        seen["a"] = act.detach()
        return act

    layer = int(hook.split(".")[1]) if hook.startswith("blocks.") else None
    stop = layer + 1 if layer is not None and layer + 1 < n_layers(model) else None
    device = next(model.parameters()).device
    model.run_with_hooks(torch.tensor([list(ids)], device=device), fwd_hooks=[(hook, grab)], stop_at_layer=stop,
                         return_type=None)
    return seen["a"][0].float().cpu()


TASK_CLASSES = {"probes": ProbesTask, "impossible_task": ImpossibleTask, "side_effects": SideEffectsTask,
                "trace": TraceTask}


# ---------------------------------------------------------------------------- running


def check_model(model, res: Resolved) -> None:
    """Hooks and widths of every edit and reading exist on the model; no forward pass."""
    from saekit.model import d_model

    spec = res.spec
    hooks = set(model.hook_dict)
    needed = {spec.hook: "the spec's hook"}
    if res.sae is not None:
        needed[res.sae.cfg.metadata.hook_name or spec.hook] = f"the SAE {spec.sae}"
    for h in spec.steer_hooks or []:
        needed[h] = "steer_hooks"
    for h, why in needed.items():
        if h not in hooks:
            resid = sorted((x for x in hooks if x.endswith("hook_resid_post")), key=lambda x: int(x.split(".")[1]))
            raise ExperimentError(f"{why} reads hook {h!r}, which model {spec.model!r} does not have "
                                  f"(residual hooks: {resid[0]} ... {resid[-1]})")
    if res.sae is not None and "hook_resid" in (res.sae.cfg.metadata.hook_name or "") and res.sae.cfg.d_in != d_model(model):
        raise ExperimentError(f"the SAE's d_in is {res.sae.cfg.d_in} but the model's d_model is {d_model(model)}")
    for t in res.targets.values():
        for h, v in t.vectors.items():
            if len(v) != d_model(model):
                raise ExperimentError(f"{t.label} at {h} has length {len(v)}, the model's d_model is {d_model(model)}")


def _neutral_ids(tok, n: int, max_tokens: int = 64) -> list[list[int]]:
    texts = [r.text for r in load_corpus(include_neutral=True) if r.emotion == NEUTRAL][:n]
    return [tok(t)["input_ids"][:max_tokens] for t in texts]


def resolved_dict(res: Resolved) -> dict[str, Any]:
    """The spec plus everything resolved, as stored in experiments.spec."""
    def target(t: Target) -> dict:
        d = dataclasses.asdict(t)
        d["vectors"] = {h: {"norm": float(torch.tensor(v).norm())} for h, v in t.vectors.items()}
        return d

    return {"spec": to_dict(res.spec), "sae_id": res.sae_id, "d_sae": res.d_sae,
            "token_rule": json.loads(res.token_rule.to_json()),
            "targets": {k: target(t) for k, t in res.targets.items()},
            "controls": {k: [target(t) for t in ts] for k, ts in res.controls.items()},
            "emotion_features": res.emotion_features, "mean_resid_norm": res.mean_norms}


def run_experiment(spec: str | Path | dict | ExperimentSpec, db_path: str | Path | None = None,
                   progress: Progress = None, model=None) -> str:
    """Run a spec and store every measurement; returns the experiment id (also its run id).

    Every check (spec fields, emotions, feature indices, hooks) happens before the first forward
    pass. `progress(done, total, description)` is called after each setting.
    """
    spec = load_spec(spec)
    path = db_path or spec.db
    db = _open(path, read_only=True)
    try:
        res = resolve(spec, db)
        if spec.task == "trace" and res.emotion_features and spec.controls:
            stats = _feature_stats(db, res.sae_id)
            gen = torch.Generator().manual_seed(spec.seed + 1)
            for e, fs in res.emotion_features.items():
                res.controls[f"trace:{e}"] = [Target(f"random_features:{','.join(map(str, d))}", features=d)
                                              for d in matched_features(stats, fs, spec.controls, gen)]
    finally:
        if db is not None:
            db.close()
    if model is None:
        from saekit.model import load_model

        model = load_model(spec.model)
    check_model(model, res)
    task = TASK_CLASSES[spec.task](model, res)   # tokenizes and checks prompts; no forward pass yet

    with Database(path) as wdb:
        run_id = wdb.start_run("experiment", resolved_dict(res))
    out_dir = Path(spec.out) / run_id
    try:
        if any(c.kind == "steer" for c in spec.conditions):
            for h in spec.steer_hooks or [spec.hook]:
                res.mean_norms[h] = mean_resid_norm(model, h, _neutral_ids(model.tokenizer, max(spec.norm_texts, 1)),
                                                    res.token_rule)
        settings = [Setting("trace", "none", Target("none"), None, False)] if spec.task == "trace" else res.settings()
        rows: list[Row] = []
        done: dict[tuple, list[Row]] = {}
        for i, s in enumerate(settings):
            key = s.key()
            if key in done and s.kind != "none":
                rows += [dict(r, condition=s.condition, is_control=s.is_control) for r in done[key]]
            else:
                new = task.measure(s)
                done[key] = new
                rows += new
            if progress is not None:
                progress(i + 1, len(settings), f"{s.condition} {'' if s.strength is None else s.strength}"
                         f"{' (control)' if s.is_control else ''}")
        extra = {}
        if getattr(task, "generations", None):
            out_dir.mkdir(parents=True, exist_ok=True)
            gpath = out_dir / "generations.jsonl"
            gpath.write_text("".join(json.dumps(g, ensure_ascii=False) + "\n" for g in task.generations))
            extra["generations_file"] = str(gpath)
        stored = dict(resolved_dict(res), **extra)
        with Database(path) as wdb:
            with wdb.transaction():
                import datetime as dt

                wdb.insert("experiments", [{"experiment_id": run_id, "name": spec.name, "model_id": spec.model,
                                            "sae_id": res.sae_id or spec.sae, "spec": json.dumps(stored, default=str),
                                            "created_at": dt.datetime.now(dt.UTC).replace(tzinfo=None), "run_id": run_id,
                                            "token_rule": res.token_rule.to_json()}])
                wdb.insert("intervention_results", [dict(r, experiment_id=run_id, run_id=run_id) for r in rows])
            wdb.finish_run(run_id)
    except BaseException:
        try:
            with Database(path) as wdb:
                wdb.finish_run(run_id, "failed")
        except Exception:
            pass
        raise
    return run_id


def _open(path, read_only: bool) -> Database | None:
    from saekit.db import default_path

    p = Path(path) if path else default_path()
    if not p.exists():
        return None
    return Database(p, read_only=read_only)
