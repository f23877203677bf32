"""Tasks that read the clean model (trace, dose_response, implicit, live_dialogue): their shared shape.

They take no conditions and measure one setting, the clean model. Each reads the projection of
the activation at the spec's hook on some emotions' vectors and, with an SAE, the summed
activation of each emotion's top selective features, next to random controls: random unit
directions (seeded by the spec, drawn when measuring) and matched random feature sets (drawn here,
from the seed + 1). `ReadingTask.resolve` looks all of that up; a task says which emotions it
reads (`emotion_vectors`) and adds what else it needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from saekit.experiments.spec import ExperimentSpec, Prompts
from saekit.experiments.targets import Setting, Target, TaskInputs
from saekit.experiments.tasks.task import Cost, Task, chosen_prompts


@dataclass
class ReadingPrompts(Prompts):
    emotions: list[str] | None = None
    """The emotions to read (default: the task's own choice, e.g. every emotion with a vector)."""
    top_features: int = 1
    """With an SAE: the emotion's top-N selective features whose summed activation is its feature reading."""


class ReadingTask(Task):
    """Readings of emotions on the clean model, with random directions and matched random features as controls."""
    Prompts: ClassVar[type[Prompts]] = ReadingPrompts
    takes_conditions = False
    metrics: ClassVar[tuple[str, ...]] = ("vector", "feature")
    subject: ClassVar[str] = ""
    """How the "takes no conditions" error names the task (default: its name)."""
    assumed: ClassVar[tuple[int, int]] = (10, 200)
    """(prompts, tokens per prompt) the plan assumes where the spec does not bound them."""

    @classmethod
    def check(cls, spec):
        if spec.conditions:
            raise ValueError(f"{cls.subject or cls.name} reads the clean model: it takes no conditions")

    @classmethod
    def emotion_vectors(cls, spec: ExperimentSpec, look, found: TaskInputs) -> dict[str, torch.Tensor]:
        """emotion -> vector at the spec's hook, of the emotions read (default: prompts.emotions, else all)."""
        return look.vectors([spec.hook], spec.prompts.emotions)[spec.hook]

    @classmethod
    def resolve(cls, spec, look):
        found = TaskInputs()
        found.vectors = {spec.hook: cls.emotion_vectors(spec, look, found)}
        if spec.sae and spec.wants("feature") and "feature" in cls.metrics:
            n = max(spec.prompts.top_features, 1)
            for e in found.vectors[spec.hook]:
                found.emotion_features[e] = look.top_features(f"{cls.name}:{e}", f"top {n} selective for {e}", e, n)
        if found.emotion_features and spec.controls:
            gen = torch.Generator().manual_seed(spec.seed + 1)
            for e, fs in found.emotion_features.items():
                found.controls[f"{cls.name}:{e}"] = [Target(f"random_features:{','.join(map(str, d))}", features=d)
                                                     for d in look.matched_controls(fs, gen)]
        return found

    @classmethod
    def settings(cls, res):
        return [Setting(cls.name, "none", Target("none"), None, False)]

    @classmethod
    def cost(cls, spec):
        prompts, tokens = cls.assumed
        return Cost(1, chosen_prompts(spec, prompts), tokens)
