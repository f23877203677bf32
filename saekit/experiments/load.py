"""Loading a spec: the task's own [prompts] table parsed, then every check against the registered tasks and kinds.

`load_spec` reads a TOML file, a dict or a built `ExperimentSpec`; unknown fields, tasks, kinds
and metrics are errors here, before any database or model is opened. A field of another task's
table, or one from an older layout, is named with where it belongs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from saekit.config import ConfigError, check_config, from_dict, load_toml
from saekit.experiments.kinds import KINDS
from saekit.experiments.spec import TOP_RE, ExperimentSpec, Prompts, check_strengths
from saekit.experiments.tasks import TASKS
from saekit.model import parse_dtype

MOVED = {"trace_features": "it is the reading tasks' own field now: write `top_features = {value}` under [prompts]"}
"""Top-level fields of an older layout -> where they went."""


def load_spec(spec: str | Path | dict | ExperimentSpec) -> ExperimentSpec:
    """An ExperimentSpec from a TOML path, a dict or itself, checked; unknown fields are errors."""
    if isinstance(spec, ExperimentSpec):
        where = "experiment spec"
        if not isinstance(spec.prompts, Prompts) and spec.task in TASKS:
            spec = dataclasses.replace(spec, prompts=parse_prompts(spec.task, spec.prompts or {}, where))
        check_config(spec, where)
    else:
        where = "experiment spec" if isinstance(spec, dict) else str(spec)
        data = dict(spec) if isinstance(spec, dict) else load_toml(spec)
        for name, why in MOVED.items():
            if name in data:
                raise ConfigError(f"{where}: {name} moved: {why.format(value=data[name])}")
        if isinstance(data.get("task"), str) and data["task"] in TASKS:
            data["prompts"] = parse_prompts(data["task"], data.get("prompts", {}), where)
        spec = from_dict(ExperimentSpec, data, where=where)
    try:
        check_spec(spec)
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{where}: {e}") from e
    return spec


def parse_prompts(task: str, table: Any, where: str) -> Prompts:
    """The [prompts] table as the task's own dataclass; a field only other tasks declare is named with them."""
    cls = TASKS[task].Prompts
    own = {f.name for f in dataclasses.fields(cls)}
    foreign = sorted(set(table) - own) if isinstance(table, dict) else []
    if foreign:
        owners = {n: [t.name for t in TASKS.values() if n in {f.name for f in dataclasses.fields(t.Prompts)}]
                  for n in foreign}
        also = "".join(f"; {n} belongs to task {', '.join(o)}" for n, o in owners.items() if o)
        raise ConfigError(f"{where}.prompts: unknown field(s) {foreign} for task {task!r}; known fields: "
                          f"{sorted(own)}{also}")
    return from_dict(cls, table, where=f"{where}.prompts")


def check_spec(spec: ExperimentSpec) -> None:
    """Raise ValueError for a spec that cannot run: its task, metrics, conditions, counts and strengths."""
    if spec.task not in TASKS:
        raise ValueError(f"task {spec.task!r} is not one of {list(TASKS)}")
    parse_dtype(spec.dtype)
    task = TASKS[spec.task]
    bad = [m for m in spec.metrics or [] if m not in task.metrics]
    if bad:
        raise ValueError(f"metrics {bad} do not exist for task {spec.task!r}; choose from {list(task.metrics)}")
    task.check(spec)
    if task.takes_conditions and not spec.conditions:
        raise ValueError(f"task {spec.task!r} needs at least one [[conditions]] entry")
    names = [c.name for c in spec.conditions]
    if len(set(names)) != len(names) or "none" in names:
        raise ValueError(f"condition names must be unique and not 'none': {names}")
    for c in spec.conditions:
        if c.kind not in KINDS:
            raise ValueError(f"condition {c.name!r}: kind {c.kind!r} is not one of {list(KINDS)}")
        KINDS[c.kind].check(spec, c)
        top = TOP_RE.match(c.features) if isinstance(c.features, str) else None
        if isinstance(c.features, str) and top is None:
            raise ValueError(f"condition {c.name!r}: features {c.features!r} should read 'top N selective for <emotion>'")
        if top is not None and int(top.group(1)) < 1:
            raise ValueError(f"condition {c.name!r}: {c.features!r} selects no features; N must be at least 1")
    for name in ("controls", "norm_texts", "n_bootstrap"):
        if getattr(spec, name) < 0:
            raise ValueError(f"{name} must be >= 0")
    check_strengths(spec.strengths, "strengths")
    for c in spec.conditions:
        if c.strengths is not None:
            check_strengths(c.strengths, f"condition {c.name!r}: strengths")
    for f in dataclasses.fields(spec.prompts):
        value = getattr(spec.prompts, f.name)
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            raise ValueError(f"prompts.{f.name} = {value} is negative; counts are 0 or more")
        if isinstance(value, list) and any(isinstance(v, str) and not v.strip() for v in value):
            raise ValueError(f"prompts.{f.name} holds an empty string")
