"""A command's options generated from its stage's config dataclass, with `--set key=value` beside them.

The dataclass is the source of truth (sparsify's habit): every scalar or list field becomes an
option named after it (`n_examples` -> `--n-examples`, or the name a command has always used), its
docstring becomes the option's --help. A config file's values are overridden only by what the user
typed: `--set` assignments first, then the options given on the command line; an option's default
never overrides anything.

The dataclass is imported only when the command runs or shows its help, so `saekit --help` and
commands without a config stay quick.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Optional

import typer
from typer.core import TyperCommand

from saekit.config import ConfigError, check_value, from_dict, load_toml, parse_assignments, set_key

OPTIONS_KEY = "saekit.config_options"
"""Where a command finds the generated options the user gave: ctx.meta[OPTIONS_KEY], {field: value}."""

SET_HELP = "Override a config field, key=value (a TOML value; a dotted key sets a field of a table); repeatable."


@dataclass(frozen=True)
class ConfigOptions:
    """How one command's options come from a config dataclass."""
    config: str
    """The dataclass, "module:Class"."""
    rename: Mapping[str, str] = field(default_factory=dict)
    """field -> the option's name (without --), where the command has always used another."""
    skip: tuple[str, ...] = ()
    """Fields that are not options (the command takes them another way); --set still reaches them."""
    paths: tuple[str, ...] = ()
    """Fields read as file paths (written the way pathlib writes them)."""
    types: Mapping[str, Any] = field(default_factory=dict)
    """field -> the type its option takes, for a field typed as a union of kinds."""
    help: Mapping[str, str] = field(default_factory=dict)
    """field -> help, for a field whose dataclass gives it no docstring yet."""

    def cls(self) -> type:
        module, name = self.config.split(":")
        return getattr(importlib.import_module(module), name)


def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal under it), from the class's source and its bases'."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, after in zip(body, body[1:]):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                docs[stmt.target.id] = " ".join(after.value.value.split())
    return docs


def _option_type(hint: Any) -> Any:
    """The type a field's option takes (Optional, so "not given" is None); None for a field no option can
    hold (a table, or a union of kinds the spec does not settle)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        return _option_type(kinds[0]) if len(kinds) == 1 else None
    if origin in (list, tuple):
        inner = args[0] if args else str
        return Optional[list[inner]] if inner in (str, int, float) else None   # type: ignore[valid-type]
    if origin is Literal or hint in (str, int, float, bool):
        return Optional[hint]
    return None


def build_options(spec: ConfigOptions, taken: set[str]) -> list[Any]:
    """One option per field the spec offers, named and documented from the dataclass (typer builds them from
    a signature made for the purpose, as it builds any command's)."""
    cls = spec.cls()
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    params = []
    for f in dataclasses.fields(cls):
        kind = None if f.name in spec.skip else _option_type(spec.types.get(f.name, hints[f.name]))
        flag = spec.rename.get(f.name, f.name.replace("_", "-"))
        if kind is None or flag.replace("-", "_") in taken:
            continue   # a table, or an option the command declares itself
        default = f.default if f.default is not dataclasses.MISSING else None
        text = docs.get(f.name) or spec.help.get(f.name, "")
        text += f" (config default: {default!r})" if default not in (None, "") else ""
        decls = [f"--{flag}/--no-{flag}"] if kind == Optional[bool] else [f"--{flag}"]
        info = typer.Option(*decls, help=text, show_default=False)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[kind, info]))

    def options(**_: Any) -> None:
        """Only the options of a config."""

    options.__signature__ = inspect.Signature(params)   # type: ignore[attr-defined]
    options.__annotations__ = {p.name: p.annotation for p in params}
    holder = typer.Typer()
    holder.command()(options)
    return list(typer.main.get_command(holder).params)


def config_command(spec: ConfigOptions) -> type[TyperCommand]:
    """A command class whose options come from `spec`'s dataclass, built when first needed; the values the
    user gave go to ctx.meta[OPTIONS_KEY] instead of the command function's arguments."""

    class ConfigCommand(TyperCommand):
        _generated: list[Any] | None = None

        def generated(self) -> list[Any]:
            if self._generated is None:
                self._generated = build_options(spec, {p.name for p in self.params if p.name})
            return self._generated

        def get_params(self, ctx):
            params = super().get_params(ctx)
            return params[:len(self.params)] + self.generated() + params[len(self.params):]   # help stays last

        def invoke(self, ctx):
            given = {}
            for opt in self.generated():
                value = ctx.params.pop(opt.name, None)
                if ctx.get_parameter_source(opt.name).name == "COMMANDLINE":
                    value = list(value) if opt.multiple else value
                    given[opt.name] = str(Path(value)) if opt.name in spec.paths else value
            ctx.meta[OPTIONS_KEY] = given
            return super().invoke(ctx)

    ConfigCommand.spec = spec   # type: ignore[attr-defined]
    return ConfigCommand


def given_options(ctx: typer.Context) -> dict[str, Any]:
    """The generated options the user typed, {field: value}."""
    return dict(ctx.meta.get(OPTIONS_KEY, {}))


def assignments(cls: type, items: list[str] | None, extra_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """{key: value} of `--set key=value` items, each key checked against `cls`'s fields and each value
    against its field's type, the error naming the key and the config."""
    out = parse_assignments(items or [])
    names = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key, value in out.items():
        top = key.split(".")[0]
        if top not in names and key not in extra_keys:
            raise ConfigError(f"--set {key}: {cls.__name__} has no field {top!r}; its fields: {sorted(names)}")
        if top == key and top in names:
            try:
                check_value(value, hints[key], f"{cls.__name__}.{key}")
            except ConfigError as e:
                raise ConfigError(f"--set {key}={value!r}: {e}") from None
    return out


def overrides(ctx: typer.Context, cls: type, sets: list[str] | None, extra_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """What the command line sets: the --set assignments, then the options given (which win)."""
    return assignments(cls, sets, extra_keys) | given_options(ctx)


def load(ctx: typer.Context, cls: type, path: Path | None, sets: list[str] | None) -> Any:
    """A stage config: the TOML file's values (if any), with the command line's overrides on top."""
    data = load_toml(path) if path else {}
    for key, value in overrides(ctx, cls, sets).items():
        set_key(data, key, value)
    return from_dict(cls, data, where=str(path or "options"))
