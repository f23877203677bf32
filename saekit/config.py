"""Config dataclasses and their loading from TOML: unknown fields are errors that name the field.

Every stage has one dataclass; the resolved config is saved beside every output it produces.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from saekit.errors import SaekitError

T = TypeVar("T")


class ConfigError(SaekitError, ValueError):
    """A config file or value is wrong; the message names the file and the field."""


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass `cls` from a dict, refusing unknown fields and values of the wrong type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known fields: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}")
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{where}: {e}") from e
    except ValueError as e:  # the dataclass' own __post_init__ check
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{where}: {e}") from e
    check_config(obj, where)
    return obj


def check_config(cfg: Any, where: str = "config") -> None:
    """Refuse non-finite numbers, then run the dataclass' own `validate`; both as ConfigErrors naming `where`.

    For configs built in Python as well as loaded ones (`from_dict` calls it).
    """
    for f in dataclasses.fields(cfg):
        _check_finite(getattr(cfg, f.name), f"{where}.{f.name}")
    check = getattr(cfg, "validate", None)
    if check is not None:
        try:
            check()
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from e


def _check_finite(value: Any, where: str) -> None:
    """NaN or inf (TOML allows both literals) would run to NaN results that look like data."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} is {value}: it must be a finite number")
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite(v, f"{where}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{where}.{k}")
    elif dataclasses.is_dataclass(value):
        check_config(value, where)


def check_value(value: Any, hint: Any, where: str) -> Any:
    """`value` as a field of type `hint` holds it (a ConfigError naming `where` if it cannot)."""
    value = _coerce(value, hint, where)
    _check_finite(value, where)
    return value


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return origin(_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        parse = getattr(hint, "from_table", None)  # a table that picks its own class (saekit.sae.SAEConfig)
        return parse(value, where) if parse else from_dict(hint, value, where)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder, not a TOML file")
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); TOML files must be UTF-8") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from e


def load_config(cls: type[T], path: str | Path, overrides: dict[str, Any] | None = None) -> T:
    data = load_toml(path)
    for key, value in (overrides or {}).items():
        set_key(data, key, value)
    return from_dict(cls, data, where=str(path))


def set_key(data: dict[str, Any], key: str, value: Any) -> None:
    """Set `key` in a TOML-shaped dict; a dotted key ("sae.k") sets a field of a nested table."""
    *tables, name = key.split(".")
    for table in tables:
        data = data.setdefault(table, {})
        if not isinstance(data, dict):
            raise ConfigError(f"cannot set {key}: {table} is not a table")
    data[name] = value


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """{key: value} from command-line "key=value" strings; values are TOML (64, 1e-3, true, "x"),
    anything else is a string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. sae.k=64")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        out[key.strip()] = value
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
