"""Reading the spec's ``space:`` section: the ratio range and shape, and one domain per knob of the knob table
(:mod:`autoprune.model.knobs`), each read by the reader of its domain kind."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from autoprune.config._read import choice, float_range, int_range, mapping, read_float, read_int, shown, type_name
from autoprune.errors import SpecError
from autoprune.model import knobs, sampling
from autoprune.model.knobs import FloatRange, IntRange
from autoprune.model.space import Space

__all__ = ["read_space"]


def _names(d: knobs.Names, v: Any, where: str) -> tuple[str, ...]:
    items = [v] if isinstance(v, str) else v
    allowed = d.allowed()
    if callable(d.choices):  # a registry's names
        if not isinstance(items, list):
            raise SpecError(f"{where}: expected a list of names, got {type_name(items)}")
        if not items:
            raise SpecError(f"{where}: empty list (choose from {', '.join(allowed)})")
        for c in items:
            if not isinstance(c, str):
                raise SpecError(f"{where}: expected names, got {type_name(c)} {shown(c)}")
            if c not in allowed:
                raise SpecError(f"{where}: unknown {d.what} {c!r} (choose from {', '.join(allowed)})")
        return tuple(dict.fromkeys(items))
    if not isinstance(items, list) or not items:
        raise SpecError(f"{where}: expected a non-empty list of {' or '.join(allowed)}, got {shown(items)}")
    return tuple(dict.fromkeys(choice(x, where, allowed) for x in items))


def _flags(v: Any, where: str) -> tuple[bool, ...]:
    items = [v] if isinstance(v, bool) else v
    if not isinstance(items, list) or not items or not all(isinstance(e, bool) for e in items):
        raise SpecError(f"{where}: expected a non-empty list of true/false, got {shown(items)}")
    return tuple(dict.fromkeys(items))


def _numbers(d: knobs.Numbers, v: Any, where: str) -> tuple[float, ...] | tuple[int, ...]:
    if d.auto is not None and v == "auto":
        return d.auto
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, list) or not v:
        raise SpecError(f"{where}: expected a non-empty list of {d.what}, got {type_name(v)} {shown(v)}")
    if d.integer:
        return tuple(dict.fromkeys(read_int(x, where, int(d.low), int(d.high)) for x in v))
    return tuple(dict.fromkeys(read_float(x, where, minimum=d.low, maximum=d.high) for x in v))


def _knob_reader(knob: knobs.Knob) -> Callable[[Any, str], Any]:
    d = knob.domain
    partial = knob.partial or knob.space
    if isinstance(d, knobs.Real):
        base = partial if isinstance(partial, FloatRange) else FloatRange(knob.value or 0.0, knob.value or 0.0)
        return lambda x, w: float_range(x, w, base, d.low, d.high, hi_open=d.high_open, lo_open=d.low_open)
    if isinstance(d, knobs.Whole):
        ints = partial if isinstance(partial, IntRange) else IntRange(knob.value or d.low, knob.value or d.low)
        return lambda x, w: int_range(x, w, ints, d.low, d.high)
    if isinstance(d, knobs.Flags):
        return _flags
    if isinstance(d, knobs.Names):
        return lambda x, w: _names(d, x, w)
    return lambda x, w: _numbers(d, x, w)


def read_space(v: Any) -> Space:
    """The ``space:`` section (None: the defaults); unknown keys are refused naming the key."""
    by_key = {k.key: k for k in knobs.knobs()}
    d = mapping(v, "space", {"ratio", "shape", "multiplier", *by_key})
    base = Space()
    fields: dict[str, Any] = {}
    if "ratio" in d:
        fields["ratio"] = float_range(d["ratio"], "space.ratio", base.ratio, 0.0, 1.0, hi_open=True)
    if "shape" in d:
        fields["shape"] = choice(d["shape"], "space.shape", tuple(sampling.names()))
    if "multiplier" in d:
        fields["multiplier"] = float_range(d["multiplier"], "space.multiplier", base.multiplier, 0.0, 10.0)
    domains = {knob.name: _knob_reader(knob)(d[key], f"space.{key}") for key, knob in by_key.items() if key in d}
    space = base.replace(**fields, **domains)
    r = space.ratio
    if r.step is not None and r.high > r.low and r.step > r.high - r.low:
        raise SpecError(f"space.ratio.step: {r.step:g} is larger than the range {r.low:g}..{r.high:g}")
    if not isinstance(v, Mapping) or "round_to" not in v:
        space = space.replace(round_to=knobs.AUTO_ROUND_TO)  # the default: measured for the device
    return space
