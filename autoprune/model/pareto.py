"""Pareto maths on objective values: signs, dominance, non-dominated ranks, the knee, hypervolume,
and Kendall's tau (how well one ranking predicts another).

Everything works in *loss* space: each value times its objective's sign, so smaller is
better for every objective.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from autoprune.model import objectives

__all__ = ["losses", "dominates", "nondominated_ranks", "promotion_order", "contribution_order", "knee_index",
           "hypervolume", "normalised_loss", "reference_point", "baseline_hypervolume", "kendall_tau",
           "REFERENCE_MARGIN"]

REFERENCE_MARGIN = 1.1  # minimised objectives: the reference point is 1.1x the baseline's value


def losses(values: Sequence[float], names: Sequence[str]) -> list[float]:
    return [s * float(v) for s, v in zip(objectives.signs(names), values)]


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether loss vector ``a`` Pareto-dominates ``b``."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def nondominated_ranks(points: Sequence[Sequence[float]]) -> list[int]:
    """Rank of each loss vector: 0 for the non-dominated set, 1 for the next layer, ..."""
    rank = [0] * len(points)
    remaining = set(range(len(points)))
    level = 0
    while remaining:
        front = {i for i in remaining if not any(dominates(points[j], points[i]) for j in remaining if j != i)}
        for i in front:
            rank[i] = level
        remaining -= front
        level += 1
    return rank


def promotion_order(records: Sequence[Mapping[str, float]], names: Sequence[str],
                    primary: str = "map50_95") -> list[int]:
    """Indices of ``records`` (metric dicts) best first: non-dominated rank, then ``primary``."""
    rank = nondominated_ranks([losses([r[n] for n in names], names) for r in records])
    sign = objectives.get(primary).sign
    return sorted(range(len(records)), key=lambda i: (rank[i], sign * float(records[i][primary]), i))


def knee_index(values: Sequence[Sequence[float]], names: Sequence[str]) -> int:
    """The point closest to the ideal one, each objective min-max normalised over ``values``."""
    if not values:
        raise ValueError("no points")
    pts = [losses(v, names) for v in values]
    lo = [min(p[k] for p in pts) for k in range(len(names))]
    hi = [max(p[k] for p in pts) for k in range(len(names))]
    span = [h - low if h > low else 1.0 for low, h in zip(lo, hi)]
    dist = [math.sqrt(sum(((p[k] - lo[k]) / span[k]) ** 2 for k in range(len(names)))) for p in pts]
    return min(range(len(pts)), key=lambda i: (dist[i], i))


def _hv2(points: list[Sequence[float]], ref: Sequence[float]) -> float:
    pts = sorted(points, key=lambda p: (p[0], p[1]))
    vol, best = 0.0, ref[1]
    for i, p in enumerate(pts):
        best = min(best, p[1])
        nxt = pts[i + 1][0] if i + 1 < len(pts) else ref[0]
        vol += (nxt - p[0]) * (ref[1] - best)
    return vol


def _hv(points: list[Sequence[float]], ref: Sequence[float]) -> float:
    if not points:
        return 0.0
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in points)
    if len(ref) == 2:
        return _hv2(points, ref)
    pts = sorted(points, key=lambda p: p[-1])
    vol = 0.0
    for i, p in enumerate(pts):
        upper = pts[i + 1][-1] if i + 1 < len(pts) else ref[-1]
        if upper > p[-1]:
            vol += (upper - p[-1]) * _hv([q[:-1] for q in pts[: i + 1]], ref[:-1])
    return vol


def hypervolume(points: Sequence[Sequence[float]], ref: Sequence[float]) -> float:
    """Exact hypervolume dominated by loss vectors ``points`` up to the reference point ``ref``
    (points not strictly inside it, or not finite, contribute nothing)."""
    inside = [tuple(p) for p in points
              if all(math.isfinite(x) and x < r for x, r in zip(p, ref))]
    ranks = nondominated_ranks(inside)
    return _hv([p for p, r in zip(inside, ranks) if r == 0], tuple(ref))


def reference_point(names: Sequence[str]) -> list[float]:
    """In baseline-normalised loss space: maximised objectives as -value/baseline (reference 0),
    minimised ones as value/baseline (reference ``REFERENCE_MARGIN``)."""
    return [0.0 if objectives.get(n).direction == "maximize" else REFERENCE_MARGIN for n in names]


def normalised_loss(values: Sequence[float], names: Sequence[str], baseline: Mapping[str, Any]) -> list[float]:
    out = []
    for v, n in zip(values, names):
        b = float(baseline.get(n) or 1.0) or 1.0
        out.append(objectives.get(n).sign * float(v) / b)
    return out


def baseline_hypervolume(points: Sequence[Sequence[float]], names: Sequence[str],
                         baseline: Mapping[str, Any]) -> float:
    """Hypervolume of objective values ``points`` normalised by the baseline's (see :func:`reference_point`)."""
    return hypervolume([normalised_loss(p, names, baseline) for p in points], reference_point(names))


def contribution_order(candidates: Sequence[Sequence[float]], front: Sequence[Sequence[float]],
                       ref: Sequence[float]) -> list[int]:
    """Greedy hypervolume-contribution order: indices of the loss vectors in ``candidates`` that add
    hypervolume to ``front`` (plus the ones picked before them), largest gain first. Candidates that add
    nothing (dominated, or outside ``ref`` such as a collapsed model under an mAP floor) are left out."""
    current = [list(p) for p in front]
    base = hypervolume(current, ref)
    remaining = set(range(len(candidates)))
    order: list[int] = []
    while remaining:
        best, gain = -1, 1e-12
        for i in sorted(remaining):
            g = hypervolume([*current, list(candidates[i])], ref) - base
            if g > gain:
                best, gain = i, g
        if best < 0:
            break
        order.append(best)
        current.append(list(candidates[best]))
        base += gain
        remaining.discard(best)
    return order


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of two paired sequences (nan with fewer than two pairs or no variation)."""
    n = len(x)
    if n != len(y):
        raise ValueError("x and y differ in length")
    conc = disc = tx = ty = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                tx += 1
            elif dy == 0:
                ty += 1
            elif (dx > 0) == (dy > 0):
                conc += 1
            else:
                disc += 1
    denom = math.sqrt((conc + disc + tx) * (conc + disc + ty))
    return (conc - disc) / denom if denom else float("nan")
