"""The registry of objectives a study can optimise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from autoprune.errors import SpecError

__all__ = ["Objective", "register", "get", "names", "DEFAULT"]


@dataclass(frozen=True)
class Objective:
    name: str  # key in a trial's metrics
    direction: Literal["maximize", "minimize"]
    label: str  # shown in the dashboard and reports
    fmt: str = "{:.4f}"

    def format(self, value: float) -> str:
        return self.fmt.format(value)


_REGISTRY: dict[str, Objective] = {}


def register(objective: Objective) -> Objective:
    if objective.name in _REGISTRY:
        raise ValueError(f"objective {objective.name!r} is registered already")
    _REGISTRY[objective.name] = objective
    return objective


def get(name: str) -> Objective:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SpecError(f"objectives: unknown objective {name!r} (choose from {', '.join(names())})") from None


def names() -> list[str]:
    return list(_REGISTRY)


register(Objective("map50_95", "maximize", "mAP50-95"))
register(Objective("map50", "maximize", "mAP50"))
register(Objective("params", "minimize", "params", "{:,.0f}"))
register(Objective("macs", "minimize", "MACs", "{:,.0f}"))
register(Objective("latency_ms", "minimize", "latency_ms", "{:.2f}"))
register(Objective("latency_ratio", "minimize", "latency ratio", "{:.3f}"))  # vs the baseline, timed interleaved

DEFAULT: tuple[str, ...] = ("map50_95", "params", "latency_ms")
