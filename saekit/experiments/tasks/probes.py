"""probes: P(emotion word) after "How does he feel? He feels" (' ' + word, first token)."""

from __future__ import annotations

from dataclasses import dataclass

from saekit.corpus import load_scenario
from saekit.experiments.batches import run_logits, word_token
from saekit.experiments.spec import ExperimentError, Prompts, condition_emotion
from saekit.experiments.targets import TaskInputs, result_rows, select_items
from saekit.experiments.tasks.intervention import InterventionTask
from saekit.experiments.tasks.task import Cost, chosen_prompts, condition_settings


@dataclass
class ProbesPrompts(Prompts):
    words: list[str] | None = None
    """Emotion words to read (default: the conditions' emotions)."""


def probe_words(spec) -> list[str]:
    return spec.prompts.words or sorted({condition_emotion(c) for c in spec.conditions} - {None})


class ProbesTask(InterventionTask):
    name = "probes"
    metrics = ("p_word", "logp_word")
    Prompts = ProbesPrompts
    primary = "logp:{emotion}"
    effect_note = ("Effect: change in log P(first token of ' ' + the condition's emotion word) at the end of "
                   "'How does he feel? He feels' prompts, versus no intervention.")

    @classmethod
    def resolve(cls, spec, look):
        if not probe_words(spec):
            raise ExperimentError("probes: give prompts.words or conditions with emotions")
        return TaskInputs()

    @classmethod
    def cost(cls, spec):
        """Every setting over the probe prompts (30 assumed), about 40 tokens each."""
        return Cost(condition_settings(spec), chosen_prompts(spec, 30), 40)

    @classmethod
    def primary_metric(cls, condition, words):
        """log P of the condition's own emotion word (the first word read when it reads none)."""
        emotion = (condition or {}).get("emotion")
        if not emotion and isinstance((condition or {}).get("features"), str):
            emotion = condition["features"].split()[-1]
        return f"logp:{emotion}" if emotion in words else f"logp:{words[0]}"

    def __init__(self, model, res):
        super().__init__(model, res)
        data = load_scenario("probes")
        self.items = select_items(data["probes"], self.spec.prompts)
        self.words = probe_words(self.spec)
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
            rows += result_rows(setting, it["id"], m)
        return rows
