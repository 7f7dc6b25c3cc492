"""Warm starts: seed a study with uniform-ratio policies and with the fronts of earlier studies
on the same base model (matched by the weights' fingerprint)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import optuna

from autoprune.policy import Layer, params_for_policy, uniform_params
from autoprune.spec import SearchSpec

logger = logging.getLogger(__name__)

__all__ = ["uniform_levels", "warm_start", "WARM_ATTR"]

WARM_ATTR = "warm_start"  # on an enqueued trial: where its policy came from
_DONE_ATTR = "warm_started"


def uniform_levels(low: float, high: float, n: int) -> list[float]:
    """``n`` ratios at the centres of ``n`` equal bins of [low, high]."""
    return [low + (high - low) * (i + 0.5) / n for i in range(n)]


def _earlier_fronts(study: optuna.Study, fingerprint: str) -> list[tuple[str, optuna.trial.FrozenTrial]]:
    storage = study._storage
    out = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        name = summary.study_name
        if name == study.study_name or name.endswith("-screen"):
            continue
        other = optuna.load_study(study_name=name, storage=storage)
        if other.user_attrs.get("model_fingerprint") != fingerprint or len(other.directions) < 2:
            continue
        out.extend((name, t) for t in other.best_trials if "policy" in t.user_attrs)
    return out


def warm_start(study: optuna.Study, spec: SearchSpec, layers: Sequence[Layer], fingerprint: str | None,
               limit: int | None = None) -> int:
    """Enqueue the spec's warm-start policies into ``study`` once (at most ``limit``, the trials this
    run will start, so none is left waiting); returns how many were enqueued."""
    ws = spec.warm_start
    if (not ws.uniform and not ws.from_fronts) or study.user_attrs.get(_DONE_ATTR) is not None:
        return 0
    limit = 10**9 if limit is None else limit
    n = 0
    r = spec.space.ratio
    for ratio in uniform_levels(r.low, r.high, min(ws.uniform, limit)):
        params = uniform_params(spec.space, layers, ratio)
        study.enqueue_trial(params, user_attrs={WARM_ATTR: f"uniform ratio {ratio:.3f}"}, skip_if_exists=True)
        n += 1
    if ws.from_fronts and fingerprint:
        for name, t in _earlier_fronts(study, fingerprint)[: max(0, limit - n)]:
            params = params_for_policy(spec.space, layers, t.user_attrs["policy"])
            study.enqueue_trial(params, user_attrs={WARM_ATTR: f"front of study {name}, trial {t.number}"},
                                skip_if_exists=True)
            n += 1
    study.set_user_attr(_DONE_ATTR, n)
    logger.info("warm start: %d polic%s enqueued", n, "y" if n == 1 else "ies")
    return n
