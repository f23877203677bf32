"""KL from the clean model on neutral text, and sampled generations."""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field

from saekit.corpus import NEUTRAL, load_corpus
from saekit.experiments.batches import chat_ids, kl_per_text, positions_mask, run_logits
from saekit.experiments.kinds import KINDS
from saekit.experiments.sampling import sample_columns
from saekit.experiments.spec import Prompts
from saekit.experiments.targets import BASELINE, Row, Setting, baseline_setting, result_rows, select_items
from saekit.experiments.tasks.intervention import InterventionTask
from saekit.experiments.tasks.task import Cost, chosen_prompts, condition_settings


@dataclass
class SideEffectsPrompts(Prompts):
    max_tokens: int = 48
    """neutral texts are cut to this many tokens."""
    generate: list[str] = field(default_factory=list)
    """user messages to sample replies to under each condition's strongest setting."""
    max_new_tokens: int = 20
    temperature: float = 0.7
    max_prompt_tokens: int = 512
    """a generate message longer than this is refused."""
    generate_chat: bool = True
    """each generate message is a user turn in the model's chat format (False: plain text to continue)."""


def strongest(res, name: str) -> float | None:
    """A condition's applied strength of largest magnitude (the first of a tie; None for ablation)."""
    values = res.values[name]
    return max(values, key=lambda v: abs(v)) if values[0] is not None else None


def generation_columns(res, c, strength: float | None) -> dict[str, Setting]:
    """The columns a generate message is sampled in for condition `c` at `strength`: the clean model, the
    condition, and its first random control when the spec has controls. The steer page of `saekit
    browse` samples these same columns, so its saved spec reproduces them."""
    cols = {"clean": baseline_setting(), "edited": Setting(c.name, c.kind, res.targets[c.name], strength, False)}
    if res.controls.get(c.name):
        cols["control"] = Setting(c.name, c.kind, res.controls[c.name][0], strength, True)
    return cols


def generate_ids(tokenizer, message: str, chat: bool) -> list[int]:
    """A generate message's prompt tokens: a user turn in the chat format, or plain text (with the
    tokenizer's own special tokens, as a harvest reads text)."""
    return chat_ids(tokenizer, [{"role": "user", "content": message}]) if chat else tokenizer(message)["input_ids"]


class SideEffectsTask(InterventionTask):
    name = "side_effects"
    chat = True
    metrics = ("kl", "generations")
    Prompts = SideEffectsPrompts
    primary = "kl"
    relative_to_baseline = False
    effect_note = "Effect: mean per-token KL(clean || intervened) on neutral text."

    @classmethod
    def check(cls, spec):
        p = spec.prompts
        for name in ("max_tokens", "max_new_tokens", "max_prompt_tokens"):
            if getattr(p, name) < 1:
                raise ValueError(f"prompts.{name} = {getattr(p, name)}: must be at least 1")
        if not p.temperature > 0:
            raise ValueError(f"prompts.temperature = {p.temperature}: sampling needs a temperature above 0")
        for i, msg in enumerate(p.generate):
            if len(msg.split()) > p.max_prompt_tokens:   # every word is at least one token
                raise ValueError(f"prompts.generate[{i}] has {len(msg.split())} words, more than prompts.max_prompt_tokens "
                                 f"= {p.max_prompt_tokens} tokens")

    @classmethod
    def cost(cls, spec):
        """Every setting over the neutral texts (24 assumed), each cut to prompts.max_tokens."""
        return Cost(condition_settings(spec), chosen_prompts(spec, 24), spec.prompts.max_tokens)

    def __init__(self, model, res):
        super().__init__(model, res)
        self.generate_ids = [generate_ids(self.tok, m, self.spec.prompts.generate_chat) for m in self.spec.prompts.generate]
        self.check_context(self.generate_ids, "prompts.generate", self.spec.prompts.max_new_tokens,
                           self.spec.prompts.max_prompt_tokens)
        texts = [r for r in load_corpus(include_neutral=True) if r.emotion == NEUTRAL]
        self.items = select_items([{"id": r.id, "text": r.text} for r in texts], self.spec.prompts)
        self.seqs = [self.tok(it["text"])["input_ids"][:self.spec.prompts.max_tokens] for it in self.items]
        self.clean = None
        self.generations: list[dict] = []
        self.sampled: dict[tuple[int, str, float | None], dict[str, list[int]]] = {}
        self.strongest: dict[str, float | None] = {}
        for c in self.spec.conditions:
            ss = KINDS[c.kind].strengths(self.spec, c)
            self.strongest[c.name] = max(ss, key=lambda s: abs(s)) if ss[0] is not None else None

    def measure(self, setting):
        rows = []
        if self.spec.wants("kl"):
            if self.clean is None:
                self.clean = run_logits(self.model, self.res, baseline_setting(), self.seqs)[0]
            if setting.kind == BASELINE:
                kls = [0.0] * len(self.items)
            else:
                logp, mask = run_logits(self.model, self.res, setting, self.seqs)
                kls = kl_per_text(self.clean, logp, positions_mask("counted", mask, self.res.token_rule))
            for it, kl in zip(self.items, kls):
                rows += result_rows(setting, it["id"], {"kl": kl})
        if self.spec.wants("generations") and self.spec.prompts.generate and not setting.is_control:
            top = self.strongest.get(setting.condition)
            strongest = top is None or (setting.strength is not None and abs(setting.strength) == abs(top))
            if setting.kind == BASELINE or strongest:
                rows += self._generate(setting)
        return rows

    def _generate(self, setting) -> list[Row]:
        """Sampled replies through experiments.sampling, in the columns the browser's steer page samples
        (generation_columns): the clean model's reply comes from the first condition's columns."""
        p, rows = self.spec.prompts, []
        if setting.kind == BASELINE:
            condition = self.spec.conditions[0].name
            at = strongest(self.res, condition)
        else:
            condition, at = setting.condition, setting.strength
        for i, msg in enumerate(p.generate):
            new = self._columns(i, condition, at)["clean" if setting.kind == BASELINE else "edited"]
            text = self.tok.decode(new, skip_special_tokens=True)
            distinct = len(set(new)) / max(len(new), 1)
            self.generations.append({"condition": setting.condition, "strength": setting.strength,
                                     "target": setting.target.label, "prompt": msg, "reply": text, "tokens": new})
            rows += result_rows(setting, f"generate-{i}", {"distinct_token_fraction": distinct})
        return rows

    def _columns(self, i: int, condition: str, strength: float | None) -> dict[str, list[int]]:
        """Every column's tokens for generate message i under a condition and strength, sampled once (seed + i)."""
        key = (i, condition, strength)
        if key not in self.sampled:
            p = self.spec.prompts
            c = next(c for c in self.spec.conditions if c.name == condition)
            cols: dict[str, list[int]] = collections.defaultdict(list)
            for t in sample_columns(self.model, self.res, generation_columns(self.res, c, strength), self.generate_ids[i],
                                    p.max_new_tokens, p.temperature, self.spec.seed + i, shadow="edited"):
                cols[t.column].append(t.id)
            self.sampled[key] = dict(cols)
        return self.sampled[key]

    def write_outputs(self, folder):
        if not self.generations:
            return {}
        folder.mkdir(parents=True, exist_ok=True)
        gpath = folder / "generations.jsonl"
        gpath.write_text("".join(json.dumps(g, ensure_ascii=False) + "\n" for g in self.generations))
        return {"generations_file": str(gpath)}
