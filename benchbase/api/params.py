"""Typed plugin parameters.

Every plugin declares its tunables as a frozen dataclass whose fields carry defaults and a
one-line help text (`param(default, "help")`). The core turns user text (`--set diff-a2c.lr=1e-3`,
`-t random:p=0.3`, TOML values) into typed values, checks them, and reports mistakes in one line.
Supported field types: int, float, bool, str, `Literal[...]` (choices) and `X | None`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, get_args, get_origin

from benchbase.errors import UserError, unknown_name


@dataclasses.dataclass(frozen=True)
class NoParams:
    """For plugins without tunables."""


def param(
    default: Any, help: str, *, min: float | None = None, max: float | None = None, below: float | None = None
) -> Any:
    """A dataclass field with a default, a help line, optional inclusive bounds `min` and `max`
    and an exclusive upper bound `below` (a probability in [0, 1): min=0, below=1)."""
    return dataclasses.field(default=default, metadata={"help": help, "min": min, "max": max, "below": below})


@dataclasses.dataclass(frozen=True)
class ParamInfo:
    name: str
    type: str
    default: Any
    help: str


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "|".join(str(choice) for choice in get_args(tp))
    if _is_optional(tp):
        return f"{_type_name(_strip_optional(tp))} or none"
    return getattr(tp, "__name__", str(tp))


def _is_optional(tp: Any) -> bool:
    return get_origin(tp) in (typing.Union, types.UnionType) and type(None) in get_args(tp)


def _strip_optional(tp: Any) -> Any:
    rest = [arg for arg in get_args(tp) if arg is not type(None)]
    return rest[0]


def describe(cls: type) -> list[ParamInfo]:
    """The parameters of a params dataclass, for `bench plugins`."""
    types_by_name = _field_types(cls)
    return [
        ParamInfo(f.name, _type_name(types_by_name[f.name]), f.default, f.metadata.get("help", ""))
        for f in dataclasses.fields(cls)
    ]


_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert `value` (text from the command line, or a TOML value) to type `tp`."""
    if _is_optional(tp):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        tp = _strip_optional(tp)
    if get_origin(tp) is Literal:
        choices = get_args(tp)
        for choice in choices:
            if value == choice or (isinstance(value, str) and str(choice) == value):
                return choice
        raise UserError(f"{where}: {value!r} is not allowed (choose from {', '.join(map(str, choices))})")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise UserError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            text = value.replace("_", "")
            try:
                return int(text)
            except ValueError:
                pass
            try:
                number = float(text)  # "1e5" is a fine way to write 100000
            except ValueError:
                number = None
            if number is not None and number.is_integer():
                return int(number)
        raise UserError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise UserError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(number):
            raise UserError(f"{where}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise UserError(f"{where}: expected text, got {value!r}")
    raise TypeError(f"unsupported parameter type {tp!r} at {where}")


def resolve(cls: type, overrides: Mapping[str, Any], owner: str) -> Any:
    """An instance of params dataclass `cls` with `overrides` applied, type-checked and bounded.

    `owner` names the plugin in messages ("diff-a2c"). A params class may check combinations
    in `__post_init__` by raising UserError.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    types_by_name = _field_types(cls)
    values: dict[str, Any] = {}
    for key, raw in overrides.items():
        if key not in fields:
            raise unknown_name(f"parameter of {owner}", key, fields)
        where = f"{owner}.{key}"
        value = coerce(raw, types_by_name[key], where)
        low, high = fields[key].metadata.get("min"), fields[key].metadata.get("max")
        if value is not None and low is not None and value < low:
            raise UserError(f"{where}: {value} is below the minimum {low}")
        if value is not None and high is not None and value > high:
            raise UserError(f"{where}: {value} is above the maximum {high}")
        below = fields[key].metadata.get("below")
        if value is not None and below is not None and not value < below:
            raise UserError(f"{where}: {value} is not allowed; it must be below {below}")
        values[key] = value
    return cls(**values)


def to_dict(instance: Any) -> dict[str, Any]:
    """Plain dict of a params instance (JSON-friendly: numbers, strings, bools, None)."""
    return dataclasses.asdict(instance)
