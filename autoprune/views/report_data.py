"""Pure data functions behind every report figure: a study in, small frozen records out."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune.model import knobs, objectives, records
from autoprune.model.pareto import baseline_hypervolume
from autoprune.model.policy import ratio_summary
from autoprune.model.timing import latency_flags
from autoprune.views.text import delivered_maps, delivered_trials, reference_values

__all__ = ["ParetoPoint", "ParetoData", "pareto_data", "RatioProfile", "ratio_profiles", "KnobRow", "knob_rows",
           "HypervolumePoint", "hypervolume_history", "BnHistogram", "bn_scale_histograms"]


def _names(study: optuna.Study) -> list[str]:
    return records.study_objectives(study)


def _complete(study: optuna.Study) -> list[FrozenTrial]:
    return sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)


@dataclass(frozen=True)
class ParetoPoint:
    number: int
    values: tuple[float, ...]
    on_front: bool
    hover: str
    targets: tuple[str, ...] = ()  # the targets this trial was finalized for (a budgeted run's deliveries)
    latency_check: tuple[str, ...] = ()  # reasons to doubt its latency (model.timing.latency_flags)
    # a delivered trial's values after its final fine-tune (mAP50-95 on val; the rest unchanged: same structure,
    # same deployment) and its test mAP50-95; None: not delivered
    finalized: tuple[float, ...] | None = None
    finalized_test: float | None = None


@dataclass(frozen=True)
class ParetoData:
    names: tuple[str, ...]
    labels: tuple[str, ...]
    points: tuple[ParetoPoint, ...]
    baseline: tuple[float, ...] | None
    references: tuple[tuple[str, tuple[float | None, ...]], ...] = ()  # (name, values): the base as deployed

    def pairs(self) -> list[tuple[int, int]]:
        n = len(self.names)
        return [(i, j) for i in range(n) for j in range(i + 1, n)]


def _hover(t: FrozenTrial, names: Sequence[str]) -> str:
    pol = records.trial(t).policy or {}
    vals = ", ".join(f"{objectives.get(n).label} {objectives.get(n).format(v)}" for n, v in zip(names, t.values))
    shown = ", ".join(f"{k.name} {_short(pol[k.name])}" for k in knobs.knobs() if pol.get(k.name) is not None)
    return f"trial {t.number}: {vals}<br>{shown}<br>ratios {ratio_summary(pol.get('ratios', {}))}"


def _short(v: Any) -> str:
    return f"{v:.2g}" if isinstance(v, float) else str(v)


def pareto_data(study: optuna.Study) -> ParetoData:
    names = _names(study)
    front = {t.number for t in study.best_trials}
    delivered = delivered_trials(records.deliveries(study))
    maps = delivered_maps(records.deliveries(study))
    base_metrics = records.baseline_metrics(study)
    points = []
    for t in _complete(study):
        rec = records.trial(t)
        flags = tuple(latency_flags(rec.metrics, rec.latency, base_metrics))
        final = maps.get(t.number)
        values = tuple(float(v) for v in t.values)
        finalized = tuple(final["val"] if n == "map50_95" and final["val"] is not None else v
                          for n, v in zip(names, values)) if final else None
        hover = (_hover(t, names) + "".join(f"<br>finalized for target {x}" for x in delivered.get(t.number, []))
                 + (f"<br>delivered (after its final fine-tune): val mAP50-95 {final['val']:.4f}"
                    + (f", test {final['test']:.4f}" if final.get("test") is not None else "")
                    + " (the search's value above: before it)" if final else "")
                 + "".join(f"<br>latency check: {x}" for x in flags))
        points.append(ParetoPoint(t.number, values, t.number in front, hover, tuple(delivered.get(t.number, [])),
                                  flags, finalized, final.get("test") if final else None))
    base = records.baseline(study)
    baseline = tuple(float(base[n]) for n in names) if base and all(n in base for n in names) else None
    refs = tuple((str(r["name"]), tuple(reference_values(r, n, base) for n in names))
                 for r in records.references(study))
    return ParetoData(tuple(names), tuple(objectives.get(n).label for n in names), tuple(points), baseline, refs)


@dataclass(frozen=True)
class RatioProfile:
    number: int
    layers: tuple[str, ...]  # in network order (depth)
    ratios: tuple[float, ...]


def ratio_profiles(study: optuna.Study) -> list[RatioProfile]:
    """Per-layer prune ratios of each front member, along the network's depth."""
    order = [layer.name for layer in records.layers(study) or []]
    out = []
    for t in sorted(study.best_trials, key=lambda t: t.number):
        ratios = (records.trial(t).policy or {}).get("ratios", {})
        layers = order or list(ratios)
        out.append(RatioProfile(t.number, tuple(layers), tuple(float(ratios.get(n, 0.0)) for n in layers)))
    return out


@dataclass(frozen=True)
class KnobRow:
    number: int
    knobs: tuple[tuple[str, Any], ...]  # (knob name, value) for every knob of the knob table, in its order
    mean_ratio: float
    values: tuple[float, ...]
    on_front: bool

    def knob(self, name: str) -> Any:
        return dict(self.knobs).get(name)


def knob_rows(study: optuna.Study) -> list[KnobRow]:
    """The searched knobs and resulting objectives of every completed trial."""
    front = {t.number for t in study.best_trials}
    rows = []
    for t in _complete(study):
        p = records.trial(t).policy or {}
        ratios = list(p.get("ratios", {}).values())
        rows.append(KnobRow(t.number, tuple((k.name, p.get(k.name)) for k in knobs.knobs()),
                            float(np.mean(ratios)) if ratios else 0.0, tuple(float(v) for v in t.values),
                            t.number in front))
    return rows


@dataclass(frozen=True)
class HypervolumePoint:
    number: int
    hypervolume: float


def hypervolume_history(study: optuna.Study) -> list[HypervolumePoint]:
    """Hypervolume of the completed trials so far, after each completed trial (in trial order)."""
    names = _names(study)
    baseline = records.baseline(study)
    seen: list[tuple[float, ...]] = []
    out = []
    for t in _complete(study):
        if all(math.isfinite(v) for v in t.values):
            seen.append(tuple(t.values))
        out.append(HypervolumePoint(t.number, baseline_hypervolume(seen, names, baseline)))
    return out


@dataclass(frozen=True)
class BnHistogram:
    """The |BN scale| distribution of the base before and after one sparse training (network slimming)."""

    l1: float
    epochs: int
    bins: tuple[str, ...]  # bin edges as text; bin k is [bins[k], bins[k + 1])
    before: tuple[int, ...]
    after: tuple[int, ...]
    below_before: float  # share of scales below 0.01
    below_after: float
    trials: tuple[int, ...]  # the trials that pruned this sparse base


def bn_scale_histograms(study: optuna.Study) -> list[BnHistogram]:
    """One histogram per sparse base the study's completed trials started from (by L1 strength), in L1 order."""
    found: dict[tuple[float, int], tuple[dict[str, Any], list[int]]] = {}
    for t in _complete(study):
        sp = records.trial(t).sparse
        if sp is None or "before" not in sp or "after" not in sp:
            continue
        key = (float(sp.get("l1", 0.0)), int(sp.get("epochs", 0)))
        found.setdefault(key, (sp, []))[1].append(t.number)
    out = []
    for (l1, epochs), (sp, numbers) in sorted(found.items()):
        b, a = sp["before"], sp["after"]
        out.append(BnHistogram(l1, epochs, tuple(b["bins"]), tuple(b["counts"]), tuple(a["counts"]),
                               float(b["below_0.01"]), float(a["below_0.01"]), tuple(numbers)))
    return out
