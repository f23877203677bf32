"""impossible_task: log P(cheating turn) - log P(honest turn) after each failed attempt."""

from __future__ import annotations

from dataclasses import dataclass

from saekit.corpus import load_scenario
from saekit.experiments.base import ExperimentError, result_rows, select_items
from saekit.experiments.batches import candidate_logprob, chat_ids, run_logits
from saekit.experiments.tasks.intervention import InterventionTask


@dataclass
class ImpossiblePrompts:
    attempts: list[int] | None = None
    """impossible_task: the failed attempts to score (default all)."""


class ImpossibleTask(InterventionTask):
    name = "impossible_task"
    metrics = ("margin_sum", "margin_mean")
    Prompts = ImpossiblePrompts
    primary = "margin_mean"
    effect_note = ("Effect: change in the mean per-token log-probability margin of the cheating over the honest "
                   "reply, versus no intervention (positive = more inclined to cheat).")

    def __init__(self, model, res):
        super().__init__(model, res)
        convs = select_items(load_scenario("impossible_task")["conversations"], self.spec.prompts)
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
            rows += result_rows(setting, pid, m)
        return rows
