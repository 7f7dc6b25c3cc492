"""Uniform pruning to a size: the hand recipe's step (one channel ratio for every prunable layer, group L2, channels
rounded to 8, as Torch-Pruning's YOLOv8 example prunes), and the check that a target size is reachable at all."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from autoprune.config.spec import TrialSettings
from autoprune.errors import InputError
from autoprune.model.budget import Target
from autoprune.model.sampling import target_keep

logger = logging.getLogger(__name__)

__all__ = ["uniform_prune", "uniform_ratio_for", "uniform_ratio_for_latency", "unit_channels", "check_reachable",
           "pruned_params", "pruned_share", "smallest_meeting", "RECIPE_CRITERION", "RECIPE_ROUND_TO"]

RECIPE_CRITERION = "l2"  # torch-pruning's GroupMagnitudeImportance(p=2)
RECIPE_ROUND_TO = 8


def unit_channels(model: Any) -> dict[str, int]:
    """The channels of each prunable unit of ``model``, by name."""
    from autoprune.adapters import pruning
    from autoprune.engine.pipeline import TRACE_IMGSZ

    return {p.name: p.channels for p in pruning.prunable_layers(model, TRACE_IMGSZ)}


def uniform_prune(model: Any, settings: TrialSettings, ratio: float, criterion: str = RECIPE_CRITERION,
                  round_to: int = RECIPE_ROUND_TO, *, step: int = 1, steps: int = 1,
                  original: Mapping[str, int] | None = None) -> dict[str, int]:
    """Prune ``model`` in place: every prunable unit loses ``ratio`` of its channels (rounded); its channels. In
    rounds (Torch-Pruning's ``iterative_steps``, linear schedule): round ``step`` of ``steps`` leaves each unit what
    ``ratio * step / steps`` leaves of its ``original`` channels (the unpruned model's :func:`unit_channels`)."""
    from autoprune.engine.pipeline import prune_once

    original = dict(original) if original is not None else unit_channels(model)
    keep = target_keep(original, dict.fromkeys(original, ratio), step, steps, round_to)
    return prune_once(model, settings, criterion, keep, regularize=False)


def pruned_share(model: Any, settings: TrialSettings, keep: Mapping[str, int], metric: str) -> float:
    """What a copy of ``model`` with each unit cut to ``keep[name]`` channels keeps of the base's ``metric``:
    params or macs counted, latency_ratio timed interleaved with ``model`` on ``settings.latency``'s runtime (a
    short timing: a few rounds, no re-timing; the copy pruned on the CPU, timed on ``settings.device``)."""
    from autoprune.adapters import pruning, yolo

    m = _pruned_copy(model, settings, keep)
    if metric == "params":
        return yolo.count_params(m) / yolo.count_params(model)
    if metric == "macs":
        return float(pruning.count_macs(m, settings.imgsz)) / float(pruning.count_macs(model, settings.imgsz))
    return _timed_ratio(m, model, settings)


def _timed_ratio(candidate: Any, reference: Any, settings: TrialSettings) -> float:
    from autoprune.adapters import yolo
    from autoprune.engine.latency import measure_interleaved

    lat = settings.latency
    dev = settings.device
    il = measure_interleaved(yolo.deploy_copy(candidate).to(dev), yolo.deploy_copy(reference).to(dev),
                             lat.imgsz or settings.imgsz, dev, lat.short(), calibration=settings.data)
    return float(il.ratio)


def _cost(model: Any, imgsz: int, metrics: Sequence[str] = ("params", "macs")) -> dict[str, float]:
    """``model``'s parameter and MAC counts (``metrics``: which of them; MACs take a traced pass)."""
    from autoprune.adapters import pruning, yolo

    out = {"params": float(yolo.count_params(model))}
    if "macs" in metrics:
        out["macs"] = float(pruning.count_macs(model, imgsz))
    return out


def pruned_params(model: Any, settings: TrialSettings, keep: Mapping[str, int]) -> int:
    """The parameter count of ``model`` with each unit cut to ``keep[name]`` channels, on a CPU copy (``model`` is
    not touched; sizes only: channels ranked by L1, no training)."""
    from autoprune.adapters import yolo

    return yolo.count_params(_pruned_copy(model, settings, keep))


def _pruned_copy(model: Any, settings: TrialSettings, keep: Mapping[str, int]) -> Any:
    """A CPU copy of ``model`` with each unit cut to ``keep[name]`` channels (ranked by L1: sizes only)."""
    from autoprune.engine.pipeline import prune_once

    m = copy.deepcopy(model).cpu()
    prune_once(m, settings.replace(device="cpu"), "l1", keep, regularize=False)
    return m


def _pruned_cost(model: Any, settings: TrialSettings, ratio: float, round_to: int,
                 original: Mapping[str, int] | None = None,
                 metrics: Sequence[str] = ("params", "macs")) -> dict[str, float]:
    """The costs of ``model`` pruned uniformly at ``ratio`` (a CPU copy; ``original``: its :func:`unit_channels`,
    traced once by a caller that sizes many ratios)."""
    m = copy.deepcopy(model).cpu()
    uniform_prune(m, settings.replace(device="cpu"), ratio, criterion="l1", round_to=round_to,  # sizes only
                  original=original)
    return _cost(m, settings.imgsz, metrics)


def smallest_meeting(meets: Callable[[int], bool], lo: int, hi: int, guess: int | None = None) -> int:
    """The smallest ``i`` in ``(lo, hi]`` with ``meets(i)``, for a ``meets`` that holds from some index on
    (``meets(hi)`` is taken to hold, ``meets(lo)`` not to): bisection, its bracket first narrowed by galloping from
    ``guess`` (a right guess takes 2 calls, one off at most 4, instead of ~log2(hi - lo))."""
    if guess is not None and lo < guess < hi:
        width = 1
        if meets(guess):
            hi = guess
            while hi - width > lo:
                if not meets(hi - width):
                    lo = hi - width
                    break
                hi, width = hi - width, width * 2
        else:
            lo = guess
            while lo + width < hi:
                if meets(lo + width):
                    hi = lo + width
                    break
                lo, width = lo + width, width * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if meets(mid):
            hi = mid
        else:
            lo = mid
    return hi


def uniform_ratio_for_latency(model: Any, settings: TrialSettings, bound: float, low: float = 0.0,
                              round_to: int = RECIPE_ROUND_TO, step: float = 0.02, high: float = 0.9) -> float:
    """The smallest uniform ratio from ``low`` (on a ``step`` grid up to ``high``) whose pruned copy times at or under
    ``bound`` x ``model`` on ``settings.latency``'s runtime (interleaved, short; bisection: the timing is taken to
    fall with the ratio); ``high`` if none does."""
    original = unit_channels(model)
    lo, hi = int(round(low / step)) - 1, int(round(high / step))

    def meets(i: int) -> bool:
        keep = target_keep(original, dict.fromkeys(original, i * step), 1, 1, round_to)
        return pruned_share(model, settings, keep, "latency_ratio") <= bound

    return round(smallest_meeting(meets, lo, hi) * step, 6)  # meets(hi) is assumed (the top of the range)


def uniform_ratio_for(model: Any, settings: TrialSettings, target: Target, round_to: int = RECIPE_ROUND_TO,
                      step: float = 0.01, high: float = 0.95) -> tuple[float, dict[str, float]]:
    """The smallest uniform ratio (on a ``step`` grid up to ``high``) whose pruned model meets ``target``'s params
    and MACs limits (a latency limit: :func:`uniform_ratio_for_latency`), with its cost; InputError if even ``high``
    does not."""
    base = _cost(model, settings.imgsz)
    limits = {k: v for k, v in target.limits if k in base}
    if not limits:
        raise InputError(f"target {target.text}: a uniform ratio is chosen by params or macs")
    original, metrics = unit_channels(model), tuple(limits)

    def meets(cost: Mapping[str, float]) -> bool:
        return all(cost[k] <= v * base[k] for k, v in limits.items())

    lo, hi = 0, int(round(high / step))
    top = _pruned_cost(model, settings, hi * step, round_to, original, metrics)
    if not meets(top):
        raise InputError(f"targets: {target.text} is out of reach: uniform pruning at {high:g} keeps "
                         f"{top['params'] / base['params']:.0%} of the parameters")
    costs = {hi: top}

    def meets_at(i: int) -> bool:
        if i not in costs:
            costs[i] = _pruned_cost(model, settings, i * step, round_to, original, metrics)
        return meets(costs[i])

    # meets(hi) holds, meets(lo) does not (lo = 0 never meets a limit below 1). The guess: parameters and MACs fall
    # about as the square of the channels kept; one pruned copy at that corrects its scale
    key, frac = min(limits.items(), key=lambda kv: kv[1])
    first = min(hi - 1, max(lo + 1, int(round((1 - frac ** 0.5) / step))))
    meets_at(first)
    kept = costs[first][key] / base[key]
    guess = int(round((1 - (1 - first * step) * (frac / kept) ** 0.5) / step)) if kept > 0 else first
    found = smallest_meeting(meets_at, lo, hi, min(hi - 1, max(lo + 1, guess)))
    return found * step, costs[found]


def check_reachable(model: Any, settings: TrialSettings, targets: Sequence[Target], high: float,
                    round_to: int) -> None:
    """Refuse (InputError, one line) a target that pruning every layer at the space's highest ratio cannot reach."""
    if not targets:
        return
    base = _cost(model, settings.imgsz)
    top = _pruned_cost(model, settings, high, round_to)
    for t in targets:
        for k, v in t.limits:
            if k in top and top[k] > v * base[k]:
                raise InputError(f"targets: {t.text} is out of reach: every layer pruned at space.ratio.high "
                                 f"{high:g} keeps {top[k] / base[k]:.0%} of the {k}")
