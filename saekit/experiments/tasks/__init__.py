"""The experiment tasks: `TASKS` maps a spec's `task` to its class.

A new experiment kind is one new module here (a `Task` subclass from tasks.task: its name,
metrics, its own [prompts] table, its cost for --plan, how it measures, summarises and plots, or
`ReadingTask` / `InterventionTask` for the shared shapes) and one `register_task` line below.
"""

from __future__ import annotations

from saekit.experiments.tasks.dose_response import DoseResponseTask
from saekit.experiments.tasks.implicit import ImplicitTask
from saekit.experiments.tasks.impossible_task import ImpossibleTask
from saekit.experiments.tasks.intervention import InterventionTask
from saekit.experiments.tasks.live_dialogue import LiveDialogueTask
from saekit.experiments.tasks.probes import ProbesTask
from saekit.experiments.tasks.reading import ReadingTask
from saekit.experiments.tasks.side_effects import SideEffectsTask
from saekit.experiments.tasks.task import Cost, Task
from saekit.experiments.tasks.trace import TraceTask

TASKS: dict[str, type[Task]] = {}
"""Task name -> its class, in registration order."""


def register_task(task: type[Task]) -> type[Task]:
    TASKS[task.name] = task
    return task


register_task(ProbesTask)
register_task(ImpossibleTask)
register_task(TraceTask)
register_task(SideEffectsTask)
register_task(DoseResponseTask)
register_task(ImplicitTask)
register_task(LiveDialogueTask)

__all__ = ["TASKS", "Cost", "Task", "InterventionTask", "ReadingTask", "register_task"]
