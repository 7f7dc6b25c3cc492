"""The spec's ``budget`` (a wall-clock budget for the whole run) and ``targets`` (sizes to deliver a finalized
model at), read into :class:`~autoprune.config.sections.Budget` and :class:`~autoprune.model.budget.Target`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autoprune.config._read import mapping, read_float, read_section, shown
from autoprune.config.sections import Budget
from autoprune.errors import SpecError
from autoprune.model.budget import TARGET_METRICS, Target, parse_duration

__all__ = ["read_budget", "read_targets"]


def _duration(v: Any, where: str) -> float:
    try:
        return parse_duration(v)
    except ValueError as e:
        raise SpecError(f"{where}: {e}") from None


def read_budget(v: Any) -> Budget:
    if v is None:
        return Budget()
    raw = {"seconds": v} if not isinstance(v, Mapping) else v
    b = read_section(Budget, raw, "budget", {"seconds": _duration})
    if b.final_share >= 1:
        raise SpecError(f"budget.final_share: {b.final_share:g} must be below 1 (the search needs some of the budget)")
    if b.race_lrs > 1 and b.race_lr_low >= b.final_lr:
        raise SpecError(f"budget.race_lr_low: {b.race_lr_low:g} must be below final_lr {b.final_lr:g} (the race tries "
                        f"{b.race_lrs} learning rates between them)")
    return b


def read_targets(v: Any, budget: Budget, interleave: bool = True) -> tuple[Target, ...]:
    if v is None:
        return ()
    items = [v] if isinstance(v, Mapping) else v
    if not isinstance(items, list) or not items:
        raise SpecError(f"targets: expected a mapping such as {{params: 0.5}} or a list of them, got {shown(v)}")
    if len(items) > 8:
        raise SpecError(f"targets: {len(items)} targets; at most 8")
    out: list[Target] = []
    for i, item in enumerate(items):
        where = "targets" if isinstance(v, Mapping) else f"targets[{i}]"
        d = mapping(item, where, set(TARGET_METRICS))
        if not d:
            raise SpecError(f"{where}: empty (bound one of {', '.join(TARGET_METRICS)}, as a fraction of the base)")
        limits = []
        for k in TARGET_METRICS:
            if k in d:
                f = read_float(d[k], f"{where}.{k}", gt=0.0)
                if f >= 1:
                    raise SpecError(f"{where}.{k}: {f:g} is a fraction of the base model's {k} (below 1: 0.5 is -50%)")
                limits.append((k, f))
        target = Target(tuple(limits))
        if target in out:
            raise SpecError(f"{where}: listed twice")
        out.append(target)
    if budget.seconds is None:
        raise SpecError("targets: need a wall-clock budget (budget: 30m, or --budget) to finalize a model for each")
    if any(k == "latency_ratio" for t in out for k, _ in t.limits) and not interleave:
        raise SpecError("targets: latency_ratio needs latency.interleave: true")
    return tuple(out)
