"""The field-driven reader: typed values out of raw YAML, each error naming its field.

A section is a frozen dataclass whose fields carry their own default and bounds
(``metadata={"min": 1}``, ``{"gt": 0}``, ``{"choices": (...)}``); :func:`read_section`
reads every field by its annotated type, so defaults are written once, in the dataclass.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from autoprune.errors import SpecError
from autoprune.model.space import FloatRange, IntRange

__all__ = ["bounds", "shown", "type_name", "read_int", "read_float", "read_str", "read_bool", "mapping", "choice",
           "float_range", "int_range", "read_section"]

T = TypeVar("T")


def bounds(**kw: Any) -> dict[str, Any]:
    """Field metadata for :func:`read_section`: ``min`` (>=), ``max`` (<=), ``gt`` (>), ``choices``."""
    return kw


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict, _REPR.maxlevel = 60, 60, 6, 6, 2


def shown(v: Any) -> str:
    """A bounded repr for error messages: a huge value (or a YAML alias bomb) never becomes a huge message."""
    return _REPR.repr(v)


def type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def read_int(v: Any, where: str, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise SpecError(f"{where}: expected an integer, got {type_name(v)} {shown(v)}")
    if minimum is not None and v < minimum:
        raise SpecError(f"{where}: must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise SpecError(f"{where}: must be <= {maximum}, got {v}")
    return v


def read_float(v: Any, where: str, minimum: float | None = None, gt: float | None = None,
               maximum: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        if isinstance(v, str):
            try:
                return read_float(float(v), where, minimum, gt, maximum)
            except ValueError:
                pass
        raise SpecError(f"{where}: expected a number, got {type_name(v)} {shown(v)}")
    x = float(v)
    if math.isnan(x):
        raise SpecError(f"{where}: expected a number, got nan")
    if math.isinf(x):
        raise SpecError(f"{where}: expected a finite number, got {x}")
    if gt is not None and not x > gt:
        raise SpecError(f"{where}: must be > {gt:g}, got {x:g}")
    if minimum is not None and not x >= minimum:
        raise SpecError(f"{where}: must be >= {minimum:g}, got {x:g}")
    if maximum is not None and not x <= maximum:
        raise SpecError(f"{where}: must be <= {maximum:g}, got {x:g}")
    return x


def read_str(v: Any, where: str) -> str:
    if not isinstance(v, str) or not v.strip():
        raise SpecError(f"{where}: expected a non-empty string, got {type_name(v)} {shown(v)}")
    return v.strip()


def read_bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise SpecError(f"{where}: expected true or false, got {type_name(v)} {shown(v)}")
    return v


def choice(v: Any, where: str, choices: tuple[str, ...]) -> str:
    text = read_str(v, where)
    if text not in choices:
        raise SpecError(f"{where}: {shown(text)} is not one of {', '.join(choices)}")
    return text


def mapping(v: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise SpecError(f"{where}: expected a mapping, got {type_name(v)}")
    unknown = sorted(set(map(str, v)) - allowed)
    if unknown:
        raise SpecError(f"{where}.{unknown[0]}: unknown key (allowed: {', '.join(sorted(allowed))})".lstrip("."))
    return dict(v)


def float_range(v: Any, where: str, default: FloatRange, lo: float, hi: float, hi_open: bool = False,
                lo_open: bool = False) -> FloatRange:
    if v is None:
        return default
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = {"low": v, "high": v}
    if isinstance(v, (list, tuple)) and len(v) == 2:
        v = {"low": v[0], "high": v[1]}
    d = mapping(v, where, {"low", "high", "log", "step"})
    low = read_float(d.get("low", default.low), f"{where}.low")
    high = read_float(d.get("high", default.high), f"{where}.high")
    for val, key in ((low, "low"), (high, "high")):
        too_high = val >= hi if hi_open else val > hi
        too_low = val <= lo if lo_open else val < lo
        if too_low or too_high:
            interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
            raise SpecError(f"{where}.{key}: {val:g} is outside {interval}")
    if low > high:
        raise SpecError(f"{where}: low ({low:g}) is greater than high ({high:g})")
    log = d.get("log", default.log)
    if not isinstance(log, bool):
        raise SpecError(f"{where}.log: expected true or false, got {shown(log)}")
    if log and low <= 0:
        raise SpecError(f"{where}.low: must be > 0 for a log range")
    step = d.get("step", default.step)
    if step is not None:
        step = read_float(step, f"{where}.step", gt=0.0)
    return FloatRange(low, high, log, step)


def int_range(v: Any, where: str, default: IntRange, minimum: int, maximum: int | None = None) -> IntRange:
    if v is None:
        return default
    if isinstance(v, int) and not isinstance(v, bool):
        v = {"low": v, "high": v}
    if isinstance(v, (list, tuple)) and len(v) == 2:
        v = {"low": v[0], "high": v[1]}
    d = mapping(v, where, {"low", "high"})
    low = read_int(d.get("low", default.low), f"{where}.low", minimum, maximum)
    high = read_int(d.get("high", default.high), f"{where}.high", minimum, maximum)
    if low > high:
        raise SpecError(f"{where}: low ({low}) is greater than high ({high})")
    return IntRange(low, high)


def _read_field(t: Any, v: Any, where: str, meta: Mapping[str, Any]) -> Any:
    optional = typing.get_origin(t) in (typing.Union, types.UnionType) and type(None) in typing.get_args(t)
    if optional:
        if v is None:
            return None
        t = next(a for a in typing.get_args(t) if a is not type(None))
    if t is bool:
        return read_bool(v, where)
    if t is int:
        return read_int(v, where, meta.get("min"), meta.get("max"))
    if t is float:
        return read_float(v, where, meta.get("min"), meta.get("gt"), meta.get("max"))
    if t is str:
        return choice(v, where, meta["choices"]) if "choices" in meta else read_str(v, where)
    raise TypeError(f"{where}: no reader for {t!r}")  # a programming error: pass a custom reader


def read_section(cls: type[T], v: Any, where: str,
                 custom: Mapping[str, Callable[[Any, str], Any]] | None = None) -> T:
    """Read dataclass ``cls`` from mapping ``v`` (None: all defaults); unknown keys are refused."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    d = mapping(v, where, {f.name for f in fields})
    hints = typing.get_type_hints(cls)
    default = cls()
    out = {}
    for f in fields:
        if f.name not in d:
            continue
        key = f"{where}.{f.name}" if where else f.name
        reader = (custom or {}).get(f.name)
        out[f.name] = reader(d[f.name], key) if reader else _read_field(hints[f.name], d[f.name], key, f.metadata)
    return dataclasses.replace(default, **out)  # type: ignore[type-var]
