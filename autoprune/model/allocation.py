"""Sensitivity-guided allocation of per-block pruning ratios (as NetAdapt, AMC and HALP do).

A sensitivity scan screens each block pruned alone at a few ratios (mAP lost, parameters
saved) and a uniform sweep over the whole model. :func:`allocate` then solves, for a target
saving, the multiple-choice knapsack "which ratio per block loses the least mAP in total
while saving at least the target" by dynamic programming over discretised savings, with
each block's saving interpolated linearly between its probes and its loss along ``ratio ** p``
(:func:`loss_exponent`: pruning losses grow faster than linearly, and ``p`` is the log-log slope of
the uniform sweep's own loss curve, so a scan that probed each block at its top ratio alone does
not charge a moderate ratio half the top's loss). :func:`cost_targets` spreads the targets over
the cost range the uniform sweep spans, so the candidates cover the cost axis; :func:`calibrated`
maps a true saving to the summed-probe saving the knapsack counts (the sum overstates: pruning two
neighbours removes their shared weights once), fitted on the uniform sweep, whose true savings
are measured; that fit is off by up to ~5 points of the parameters for an allocation far from
uniform, so :func:`sized` corrects a target's allocation on the true saving of the pruned model
(a callback: the caller prunes a copy). Losses are assumed additive: a prediction for ranking,
not a measurement (every allocated candidate is screened for real before it is promoted).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Probe", "Sensitivity", "Allocation", "Option", "block_options", "allocate", "cost_targets",
           "calibrated", "sized", "loss_exponent", "UNIFORM", "REFERENCE"]

UNIFORM = "*"  # the block of a uniform-sweep probe (every layer at the ratio)
REFERENCE = "-"  # the block of the reference probe (nothing pruned, screened the same way)
EXPONENT_BOUNDS = (1.0, 3.0)  # the loss curve's fitted power: linear at least, never steeper than cubic
FIT_MIN_LOSS = 0.01  # a sweep point enters the fit above this loss (below: screen noise) and above half the reference
SIZING_STEPS = 4  # true-saving measurements :func:`sized` may spend on one target
SIZING_TRIES = 25  # knapsack solves it may spend (a repeat costs no measurement; the nudges are bounded by this)


@dataclass(frozen=True)
class Probe:
    block: str
    ratio: float
    map50_95: float | None  # None: the probe failed (the block cannot be pruned that far)
    cost: float  # the pruned model's parameters (or MACs: what the knapsack trades, see Sensitivity)


@dataclass(frozen=True)
class Sensitivity:
    """A scan's probes, costed in one currency: parameters for a params target, MACs for a MACs or a latency
    target (the same probes read twice)."""

    reference_map: float  # the unpruned model screened the same way (adaptive BN on the same batches)
    base_cost: float  # the unpruned model's parameters (or MACs)
    probes: tuple[Probe, ...]  # one block pruned alone
    sweep: tuple[Probe, ...] = ()  # every block at the same ratio

    def saving(self, p: Probe) -> float:
        return max(0.0, self.base_cost - p.cost)


@dataclass(frozen=True)
class Option:
    ratio: float
    loss: float  # mAP50-95 lost (>= 0)
    saving: float  # cost removed (parameters or MACs)


@dataclass(frozen=True)
class Allocation:
    ratios: dict[str, float]  # block -> ratio
    predicted_map: float  # reference mAP minus the summed losses
    saving: float  # predicted cost removed


def loss_exponent(sens: Sensitivity) -> float:
    """The power ``p`` of the loss curve ``loss ~ ratio ** p``: the least-squares log-log slope of the uniform sweep's
    loss over its points that are neither noise (loss under FIT_MIN_LOSS) nor collapse (mAP under half the
    reference), within EXPONENT_BOUNDS; 1 (linear) without two such points."""
    pts = [(math.log(p.ratio), math.log(sens.reference_map - p.map50_95)) for p in sens.sweep
           if p.map50_95 is not None and p.ratio > 0 and sens.reference_map - p.map50_95 >= FIT_MIN_LOSS
           and p.map50_95 >= sens.reference_map / 2]
    if len({x for x, _ in pts}) < 2:
        return 1.0
    mx, my = sum(x for x, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)
    slope = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
    return min(max(slope, EXPONENT_BOUNDS[0]), EXPONENT_BOUNDS[1])


def block_options(sens: Sensitivity, grid: Sequence[float]) -> dict[str, list[Option]]:
    """Each block's choices: the ``grid`` ratios up to its largest successful probe, saving interpolated linearly
    between its probes (and 0 at ratio 0) and loss along ``ratio ** loss_exponent(sens)``; savings made
    non-decreasing, losses clipped at 0."""
    power = loss_exponent(sens)
    by_block: dict[str, list[Probe]] = {}
    for p in sens.probes:
        by_block.setdefault(p.block, []).append(p)
    out: dict[str, list[Option]] = {}
    for block, probes in by_block.items():
        points = [(0.0, 0.0, 0.0)]
        for p in sorted(probes, key=lambda q: q.ratio):
            if p.map50_95 is None:
                break  # a failed probe: nothing at or beyond this ratio
            points.append((p.ratio, max(0.0, sens.reference_map - p.map50_95), sens.saving(p)))
        top = points[-1][0]
        opts, best_saving = [], 0.0
        for r in sorted({0.0, *(g for g in grid if 0.0 <= g <= top + 1e-9)}):
            loss, saving = _interpolate(points, r, power)
            best_saving = max(best_saving, saving)
            opts.append(Option(r, loss, best_saving))
        out[block] = opts
    return out


def _interpolate(points: Sequence[tuple[float, float, float]], r: float, power: float) -> tuple[float, float]:
    for (r0, l0, s0), (r1, l1, s1) in zip(points, points[1:]):
        if r0 - 1e-9 <= r <= r1 + 1e-9:
            if r1 == r0:
                return l0, s0
            w = (r - r0) / (r1 - r0)
            wl = (r ** power - r0 ** power) / (r1 ** power - r0 ** power)
            return l0 + wl * (l1 - l0), s0 + w * (s1 - s0)
    return points[-1][1], points[-1][2]


def allocate(options: Mapping[str, Sequence[Option]], reference_map: float, target: float,
             bins: int = 400) -> Allocation:
    """Per-block ratios that save at least ``target`` parameters (as much as possible when the options cannot)
    with the least summed mAP loss: exact dynamic programming over ``bins`` steps of the saving (each option's
    saving rounded down, so the predicted saving is never overstated); ties go to the lower ratio."""
    if not options:
        return Allocation({}, reference_map, 0.0)
    reachable = sum(max(o.saving for o in opts) for opts in options.values())
    target = min(target, reachable)
    if target <= 0:
        return Allocation(dict.fromkeys(options, 0.0), reference_map, 0.0)
    unit = target / bins
    dp = [0.0] + [math.inf] * bins
    back: list[list[tuple[int, int]]] = []
    for opts in options.values():
        new, arg = [math.inf] * (bins + 1), [(-1, -1)] * (bins + 1)
        for j, v in enumerate(dp):
            if v == math.inf:
                continue
            for k, o in enumerate(opts):
                jj = min(bins, j + int(o.saving / unit + 1e-9))
                if v + o.loss < new[jj] - 1e-12:
                    new[jj], arg[jj] = v + o.loss, (j, k)
        dp = new
        back.append(arg)
    j = max(i for i, v in enumerate(dp) if v < math.inf)
    chosen: dict[str, float] = {}
    loss = saving = 0.0
    for (block, opts), arg in zip(reversed(list(options.items())), reversed(back)):
        j, k = arg[j]
        chosen[block] = opts[k].ratio
        loss += opts[k].loss
        saving += opts[k].saving
    return Allocation({b: chosen[b] for b in options}, reference_map - loss, saving)


def sized(options: Mapping[str, Sequence[Option]], reference_map: float, want: float, first: float,
          saving: Callable[[Mapping[str, float]], float], tolerance: float,
          steps: int = SIZING_STEPS) -> tuple[Allocation, float]:
    """The allocation that truly saves at least ``want`` parameters and at most ``tolerance`` more, and its true
    saving: :func:`allocate` at a summed-probe target that starts at ``first`` (:func:`calibrated`'s guess) and is
    rescaled towards the window's middle by a secant through the origin (nudged 2% when the knapsack returns an
    allocation already measured) until one lands in the window or ``steps`` measurements are spent. Returns the
    least-saving allocation that meets ``want``, else the one that saves most (``want`` is out of reach, or the
    steps ran out)."""
    aim = want + tolerance / 2
    summed = first
    measured: dict[tuple[tuple[str, float], ...], float] = {}
    found: list[tuple[Allocation, float]] = []
    for _ in range(SIZING_TRIES):
        a = allocate(options, reference_map, summed)
        key = tuple(sorted(a.ratios.items()))
        if key in measured:
            true = measured[key]
            summed *= 1.02 if true < want else 0.98
            continue
        if len(measured) == steps:
            break
        true = measured[key] = saving(a.ratios)
        found.append((a, true))
        if want <= true <= want + tolerance:
            break
        summed *= aim / true if true > 0 else 2.0
    meets = [f for f in found if f[1] >= want]
    return min(meets, key=lambda f: f[1]) if meets else max(found, key=lambda f: f[1])


def cost_targets(sens: Sensitivity, n: int) -> list[float]:
    """``n`` parameter savings spread evenly over the range the uniform sweep spans (its lightest to its heaviest
    measured saving; without a sweep, up to half the summed block savings)."""
    if n <= 0:
        return []
    savings = sorted(sens.saving(p) for p in sens.sweep if p.map50_95 is not None)
    if savings:
        low, high = savings[0], savings[-1]
    else:
        top: dict[str, float] = {}
        for p in sens.probes:
            if p.map50_95 is not None:
                top[p.block] = max(top.get(p.block, 0.0), sens.saving(p))
        high = sum(top.values()) / 2
        low = high / n
    if n == 1:
        return [(low + high) / 2]
    return [low + (high - low) * i / (n - 1) for i in range(n)]


def calibrated(sens: Sensitivity, options: Mapping[str, Sequence[Option]], targets: Sequence[float]) -> list[float]:
    """The summed-probe savings that correspond to the true ``targets``: piecewise-linear through (0, 0) and the
    uniform sweep's (measured saving, summed block savings at its ratio) points, extended along the last segment.
    Without a sweep the targets are returned unchanged."""
    pairs = [(0.0, 0.0)]
    for p in sorted(sens.sweep, key=lambda q: q.ratio):
        if p.map50_95 is None:
            continue
        summed = sum(_option_saving(opts, p.ratio) for opts in options.values())
        if sens.saving(p) > pairs[-1][0] and summed > pairs[-1][1]:
            pairs.append((sens.saving(p), summed))
    if len(pairs) < 2:
        return list(targets)
    out = []
    for t in targets:
        seg = next(((a, b) for a, b in zip(pairs, pairs[1:]) if t <= b[0]), (pairs[-2], pairs[-1]))
        (x0, y0), (x1, y1) = seg
        out.append(y0 + (t - x0) * (y1 - y0) / (x1 - x0))
    return out


def _option_saving(opts: Sequence[Option], ratio: float) -> float:
    """A block's saving at ``ratio`` by its options (linear between them, its last option's beyond them)."""
    for a, b in zip(opts, opts[1:]):
        if a.ratio - 1e-9 <= ratio <= b.ratio + 1e-9:
            w = 0.0 if b.ratio == a.ratio else (ratio - a.ratio) / (b.ratio - a.ratio)
            return a.saving + w * (b.saving - a.saving)
    return opts[-1].saving if opts else 0.0
