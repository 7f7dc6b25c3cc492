"""Which completed trial a budgeted run would deliver for each target, read from the study (the search's rounds and
the final fine-tunes ask the same question)."""

from __future__ import annotations

from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune.model import records
from autoprune.model.budget import Target
from autoprune.model.constraints import feasible

__all__ = ["trial_for_target", "covered", "winner_maps", "latency_of"]


def latency_of(t: FrozenTrial) -> float | None:
    """A trial's measured latency: its ratio to the base (timed interleaved), else its milliseconds."""
    m = records.trial(t).metrics
    v = m.get("latency_ratio", m.get("latency_ms"))
    return float(v) if v is not None else None


def trial_for_target(study: optuna.Study, target: Target, tolerance: float = 0.0,
                     searched_only: bool = False, max_latency: float | None = None) -> FrozenTrial | None:
    """The completed, feasible trial with the best val mAP50-95 (then the fewest parameters) among those that meet
    ``target`` (None: none do). With ``tolerance`` > 0: of the trials within ``tolerance`` of that best mAP50-95,
    the one with the most parameters (the least pruned that still meets the target). With ``searched_only`` the
    hand recipe's models (:mod:`autoprune.search.strategy.recipe`) and the models the final phase continued from a
    delivery are left out: the search's own pick. With
    ``max_latency``, trials measured slower than that (:func:`latency_of`) are left out."""
    base = records.baseline_metrics(study)
    fits = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if feasible(t.constraints) and "map50_95" in records.trial(t).metrics
            and target.meets(records.trial(t).metrics, base)
            and not (searched_only and not records.trial(t).searched)
            and not (max_latency is not None and (latency_of(t) or 0.0) > max_latency)]

    def rank(t: FrozenTrial) -> tuple[float, float]:  # best mAP; of equals the smaller (so it is on the front)
        m = records.trial(t).metrics
        return m["map50_95"], -float(m.get("params", 0.0))

    best = max(fits, key=rank, default=None)
    if best is None or tolerance <= 0:
        return best
    floor = records.trial(best).metrics["map50_95"] - tolerance
    near = [t for t in fits if records.trial(t).metrics["map50_95"] >= floor]
    return max(near, key=lambda t: (float(records.trial(t).metrics.get("params", 0.0)), rank(t)))


def winner_maps(study: optuna.Study, targets: Sequence[Target]) -> tuple[float | None, ...]:
    """Each target's winner's val mAP50-95 (None: no trial meets the target yet)."""
    winners = (trial_for_target(study, t) for t in targets)
    return tuple(float(records.trial(w).metrics["map50_95"]) if w is not None else None for w in winners)


def covered(study: optuna.Study, targets: Sequence[Target]) -> bool:
    """Whether every target has a model to deliver: the hand recipe's model made for it (delivered at worst, whatever
    its mAP before the fine-tune), or a completed, feasible trial that meets it."""
    base = records.baseline_metrics(study)
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    recipes = {(records.trial(t).recipe or {}).get("target") for t in trials}
    done = [records.trial(t).metrics for t in trials if feasible(t.constraints)]
    return all(t.label in recipes or any(t.meets(m, base) for m in done) for t in targets)
