"""The first round's allocated candidates, sized on what each target bounds: parameters (pruned copies counted),
MACs (counted) or latency (the knapsack on MACs, then sized on pruned copies timed against the base on the spec's
runtime), plus allocations spread over the scan's cost range."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from autoprune.config.spec import SearchSpec
from autoprune.model.budget import Target
from autoprune.model.space import Layer
from autoprune.search.strategy.sensitivity import (
    ALLOCATION_COST,
    Candidate,
    Scan,
    allocated_candidates,
    read_scan,
    true_saving,
)

logger = logging.getLogger(__name__)

__all__ = ["sized_on", "target_candidates"]


def sized_on(target: Target) -> tuple[str, float]:
    """The metric a target's allocation is sized on and the share of it to remove: its params limit, else its MACs
    limit, else its latency limit."""
    limits = dict(target.limits)
    metric = next(k for k in ("params", "macs", "latency_ratio") if k in limits)
    return metric, 1.0 - limits[metric]


def target_candidates(spec: SearchSpec, layers: Sequence[Layer], scan: Scan, n: int, criterion: str, round_to: int,
                      baseline: Mapping[str, float]) -> list[Candidate]:
    """Allocations at each target's cut (two per target: the fitted and the linear loss curve; one for a latency
    target, each of whose sizing steps times a pruned copy) and ``n`` spread over the cost range (on parameters);
    none without a block probe (a scan cut short by its share: nothing to allocate from, no copy pruned)."""
    if not scan.sensitivity.probes:
        return []
    cuts: dict[str, list[float]] = {}
    for target in spec.targets:
        metric, cut = sized_on(target)
        cuts.setdefault(metric, []).append(cut)
    params = cuts.get("params", [])
    found = allocated_candidates(scan.sensitivity, spec.space, layers, n, cuts=params,
                                 saving=true_saving(spec, layers, criterion, round_to) if params else None)
    for metric in ("macs", "latency_ratio"):
        if not cuts.get(metric) or not baseline.get("macs"):
            continue
        sens = read_scan(scan.study, float(baseline["macs"]), ALLOCATION_COST[metric])
        found += allocated_candidates(sens, spec.space, layers, 0, cuts=cuts[metric],
                                      saving=true_saving(spec, layers, criterion, round_to, metric), metric=metric,
                                      curves=1 if metric == "latency_ratio" else 2)
    out: list[Candidate] = []
    seen: set[tuple[float, ...]] = set()
    for c in found:
        key = tuple(c.ratios[layer.name] for layer in layers)
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out
