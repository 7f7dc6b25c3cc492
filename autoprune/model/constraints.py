"""Hard constraints on a trial's metrics: an mAP floor relative to the baseline and absolute budgets.

Each constraint becomes one value that is <= 0 when it holds (Optuna's convention for
``Trial.set_constraint``): the study's Pareto front, the SQL front table, ``autoprune front``,
``export --knee/--best``, the report's front and promotion only ever hold feasible trials.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["constraint_values", "feasible", "MAP_FLOOR"]

MAP_FLOOR = "map_floor"


def constraint_values(metrics: Mapping[str, float], baseline: Mapping[str, float], map_floor: float,
                      budgets: Mapping[str, float]) -> dict[str, float]:
    """``{name: value}``, each <= 0 when satisfied: ``map_floor`` x the baseline's mAP50-95 minus the trial's,
    and for each budget the metric minus the budget. A metric the trial lacks violates its budget."""
    out: dict[str, float] = {}
    base_map = baseline.get("map50_95")
    if map_floor > 0 and base_map is not None:
        out[MAP_FLOOR] = map_floor * float(base_map) - float(metrics.get("map50_95", 0.0))
    for name, limit in budgets.items():
        v = metrics.get(name)
        out[name] = float("inf") if v is None else float(v) - float(limit)
    return out


def feasible(values: Mapping[str, float]) -> bool:
    return all(v <= 0.0 for v in values.values())
