"""The task interface: what an experiment measures, what it costs, and how its reports read it.

A task class declares its name, the metrics a spec may ask for, its own [prompts] table (a
dataclass subclassing spec.Prompts, parsed when the spec loads), whether it takes conditions, and
what a run costs for `saekit study --plan`. Before any forward pass it checks the spec and looks
up what it reads through a read-only `Lookup`; an instance prepares its prompts once, then
measures one setting at a time. Its class methods summarise and plot the stored rows for
`saekit experiment report`, give the browser its figures, and word the study's one-sentence finding.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from saekit.experiments.spec import ExperimentError, ExperimentSpec, Prompts
from saekit.experiments.targets import Resolved, Row, Setting, TaskInputs
from saekit.model import context_length

if TYPE_CHECKING:
    from saekit.experiments.lookup import Lookup


@dataclass(frozen=True)
class Cost:
    """A run's forward work as the plan counts it: settings x prompts x tokens per prompt, full model."""
    settings: int
    prompts: int
    tokens_per_prompt: int
    """Assumed where the spec does not bound it: the rough part of the plan."""
    counted: bool = False
    """True when prompts and tokens were counted from the task's own scenario (characters / CHARS_PER_TOKEN)."""
    decode_steps: int = 0
    """One-token passes through a KV cache (greedy generation), besides `tokens`: the plan prices each
    by reading every weight once from memory, which bounds them on a CPU, not by their FLOPs."""

    @property
    def tokens(self) -> int:
        return self.settings * self.prompts * self.tokens_per_prompt


CHARS_PER_TOKEN = 3.5
"""English with some code, as the plan counts it without a tokenizer (measured on the impossible-task
scenario: 3.2 characters per token for SmolLM2's tokenizer, 3.6 for Qwen2.5's)."""


def condition_settings(spec: ExperimentSpec) -> int:
    """The clean model plus every condition's strengths, each with its controls."""
    return 1 + sum(len(c.strengths or spec.strengths) * (1 + spec.controls) for c in spec.conditions)


def chosen_prompts(spec: ExperimentSpec, assumed: int) -> int:
    """prompts.limit, else the number of prompts.ids, else the `assumed` count."""
    return spec.prompts.limit or len(spec.prompts.ids or []) or assumed


class Task(abc.ABC):
    name: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]]
    """What `metrics = [...]` in a spec may name (default: all of them)."""
    Prompts: ClassVar[type[Prompts]] = Prompts
    """This task's [prompts] table: a dataclass subclassing spec.Prompts (ids and limit) with its own fields."""
    takes_conditions: ClassVar[bool] = True
    chat: ClassVar[bool] = False
    """Whether its prompts are chat turns in the model's chat format: on a model that was not
    instruction-tuned the reports label the experiment "base model"."""

    def __init__(self, model, res: Resolved):
        self.model, self.res, self.spec, self.tok = model, res, res.spec, model.tokenizer

    # ------------------------------------------------------------------ before any forward pass

    @classmethod
    def check(cls, spec: ExperimentSpec) -> None:
        """Raise ValueError for a spec this task cannot run (no database yet)."""

    @classmethod
    def resolve(cls, spec: ExperimentSpec, look: Lookup) -> TaskInputs:
        """Look up what the task reads beyond the conditions (vectors, features, controls)."""
        return TaskInputs()

    @classmethod
    def settings(cls, res: Resolved) -> list[Setting]:
        """The settings to measure, in order (the baseline first)."""
        return res.settings()

    @classmethod
    @abc.abstractmethod
    def cost(cls, spec: ExperimentSpec) -> Cost:
        """What a run of this spec costs, for `saekit study --plan`."""

    # ------------------------------------------------------------------ running

    @abc.abstractmethod
    def measure(self, setting: Setting) -> list[Row]:
        """Rows of measurements for one condition x strength (or the clean model)."""

    def check_context(self, seqs: list[list[int]], where: str, new_tokens: int = 0, limit: int = 0) -> None:
        """Refuse, before any forward pass, a prompt that with `new_tokens` more exceeds the model's
        context (or `limit`, when smaller)."""
        context = context_length(self.model)
        for i, ids in enumerate(seqs):
            if len(ids) + new_tokens > context or (limit and len(ids) > limit):
                bound = f"the model's context of {context} tokens" + (f" (with {new_tokens} new ones)" if new_tokens else "")
                if limit and len(ids) > limit:
                    bound = f"the limit of {limit} tokens"
                raise ExperimentError(f"{where}[{i}] is {len(ids)} tokens, beyond {bound}; shorten it")

    def write_outputs(self, folder: Path) -> dict[str, str]:
        """Files beside the database rows (e.g. generations); returns what to note in the stored spec."""
        return {}

    # ------------------------------------------------------------------ reporting

    @classmethod
    @abc.abstractmethod
    def summarize(cls, exp: dict[str, Any], data: list[Row]) -> tuple[list[str], list[list[str]], list[str], Any]:
        """(columns, rows of strings, notes, the statistics the plots draw) from the stored measurements."""

    @classmethod
    def plot(cls, exp: dict[str, Any], data: list[Row], stats: Any, out: Path, title: str) -> list[Path]:
        """PNG figures in `out`."""
        return []

    @classmethod
    def figures(cls, exp: dict[str, Any], stats: Any) -> list[dict[str, Any]]:
        """The browser's interactive figures from `stats` (summarize's), as plotly figure data
        ({"data": traces, "layout": ...}; the browser adds its house layout and draws them)."""
        return []

    @classmethod
    def sentence(cls, summary: dict[str, Any]) -> str:
        """The study report's one sentence about this experiment."""
        return f"{len(summary['rows'])} result rows." if summary["rows"] else "No measurements."


BASE_MODEL_NOTE = ("base model: {model} was not instruction-tuned; these prompts follow its chat format, which it "
                   "was never trained to answer in, so its readings and effects are not an assistant's")


def base_model_label(task: type[Task], model_id: str) -> str | None:
    """The "base model" note for a chat task on a model known not to be instruction-tuned, else None."""
    from saekit.model import is_instruction_tuned, model_alias

    if task.chat and is_instruction_tuned(model_alias(model_id)) is False:
        return BASE_MODEL_NOTE.format(model=model_id)
    return None
