"""Declaring configuration fields once: default, meaning, valid range, and whether a
continued run may change it. Run fields (config.py) and every recipe's parameters use it,
so checking and converting a value, and the error a bad one gets, live in one place.

    learning_rate: float = setting(0.1, "initial learning rate, per step", above=0)
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

from .errors import ConfigError

# Rates, scales and decays meet the weights in float32 products (whose largest value is about
# 3.4e38): a number past this bound cannot train, it can only overflow mid-step. A float
# setting without a bound of its own gets this one, so an absurd value is refused up front.
LARGEST_SETTING = 1e6


def setting(
    default: Any,
    help: str,
    *,
    at_least: float | None = None,
    above: float | None = None,
    below: float | None = None,
    at_most: float | None = None,
    choices: tuple | None = None,
    resumable: bool = False,
) -> Any:
    """A dataclass field with its documentation and limits. `resumable`: a continued run may
    change it, because it does not change what is computed (where to log, how often...)."""
    limits = {"at_least": at_least, "above": above, "below": below, "at_most": at_most}
    return dataclasses.field(
        default=default,
        metadata={"help": help, "limits": {k: v for k, v in limits.items() if v is not None},
                  "choices": choices, "resumable": resumable},
    )  # fmt: skip


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def resumable_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.metadata.get("resumable")}


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def coerce(kind: Any, name: str, value: Any) -> Any:
    """Convert `value` to the field's type. Strings (from --set) are parsed; other values
    (from TOML or JSON) must already have the type: 1.5 is not an integer, "3" not a float."""
    optional = type(None) in typing.get_args(kind)
    base = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "")):
        if optional:
            return None
        raise ConfigError(f"{name}: a value is required ({_kind_name(base)})")
    if isinstance(value, str) and base is not str:
        text = value.strip().lower()
        try:
            if base is bool:
                if text in _TRUE or text in _FALSE:
                    return text in _TRUE
                raise ValueError
            if base is int:
                return int(text.replace("_", ""))
            if base is float:
                return float(text.replace("_", ""))
        except ValueError:
            raise ConfigError(f"{name}={value}: expected {_kind_name(base)}") from None
    ok = (
        (base is bool and isinstance(value, bool))
        or (base is int and isinstance(value, int) and not isinstance(value, bool))
        or (base is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (base is str and isinstance(value, str))
    )
    if not ok:
        raise ConfigError(f"{name}={value!r}: expected {_kind_name(base)}")
    return float(value) if base is float else value


def _kind_name(kind: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        kind, str(kind)
    )


def problems(obj: Any) -> list[str]:
    """Every value of a settings dataclass outside its declared limits or choices."""
    found = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            found.append(f"{f.name} is {value!r}, not one of {', '.join(map(str, choices))}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        limits = f.metadata.get("limits", {})
        checks = {
            "at_least": (lambda v, b: v >= b, "at least"),
            "above": (lambda v, b: v > b, "above"),
            "below": (lambda v, b: v < b, "below"),
            "at_most": (lambda v, b: v <= b, "at most"),
        }
        if isinstance(value, float) and not math.isfinite(value):
            found.append(f"{f.name} must be a finite number, got {value}")
            continue
        if isinstance(value, float) and "at_most" not in limits and "below" not in limits:
            limits = {**limits, "at_most": LARGEST_SETTING}
        for key, bound in limits.items():
            test, words = checks[key]
            if not test(value, bound):
                found.append(f"{f.name} must be {words} {bound:g}, got {value:g}")
    return found


def build(cls: type, values: dict[str, Any]) -> Any:
    """cls(**values) with every value converted and checked; one ConfigError for all problems."""
    kinds = field_types(cls)
    obj = cls(**{name: coerce(kinds[name], name, value) for name, value in values.items()})
    found = problems(obj)
    if found:
        raise ConfigError("; ".join(found))
    return obj


def with_defaults(cls: type, name: str, **defaults: Any) -> type:
    """A subclass of the settings dataclass `cls` whose listed fields have new defaults
    (their help, limits and choices kept): a recipe variant states only what differs."""
    unknown = set(defaults) - set(field_names(cls))
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {', '.join(sorted(unknown))}")
    changed = [(f.name, f.type, dataclasses.field(default=defaults[f.name], metadata=f.metadata))
               for f in dataclasses.fields(cls) if f.name in defaults]  # fmt: skip
    variant = dataclasses.make_dataclass(name, changed, bases=(cls,), frozen=True)
    variant.__module__ = cls.__module__  # type hints resolve where the fields were declared
    return variant


def declared_default(cls: type, name: str) -> Any:
    """The default field `name` has where it was declared, before any variant
    (with_defaults) changed it. Settings are added switched off, so this is also what a run
    saved before the setting existed computed, whatever a variant's default became later."""
    for klass in reversed(cls.__mro__):
        declared = vars(klass).get("__dataclass_fields__", {}).get(name)
        if declared is not None:
            if declared.default_factory is not dataclasses.MISSING:
                return declared.default_factory()
            return declared.default
    raise KeyError(name)


def added_since(cls: type, saved_names) -> dict[str, Any]:
    """{field: declared default} for the fields of `cls` a saved record lacks: the settings
    added since it was written, with the values its computation had."""
    saved_names = set(saved_names)
    return {n: declared_default(cls, n) for n in field_names(cls) if n not in saved_names}
