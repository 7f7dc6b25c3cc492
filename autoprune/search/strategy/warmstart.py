"""Warm starts: seed a study with uniform-ratio policies and with the fronts of earlier studies on the same
base model (matched by the weights' fingerprint)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import optuna

from autoprune.config.spec import WarmStart
from autoprune.model import records
from autoprune.model.sampling import finetune_knobs, params_for_policy, recipe_params, uniform_levels, uniform_params
from autoprune.model.space import Layer, Space
from autoprune.search.storage.study import StudyStorage

logger = logging.getLogger(__name__)

__all__ = ["warm_start"]


def _earlier_fronts(study: optuna.Study, store: StudyStorage,
                    fingerprint: str) -> list[tuple[str, optuna.trial.FrozenTrial]]:
    out: list[tuple[str, optuna.trial.FrozenTrial]] = []
    for name in store.study_names(include_side=False):
        if name == study.study_name:
            continue
        other = store.load(name)
        if records.fingerprint(other) != fingerprint or len(other.directions) < 2:
            continue
        out.extend((name, t) for t in other.best_trials if records.trial(t).policy is not None)
    return out


def warm_start(study: optuna.Study, store: StudyStorage, space: Space, ws: WarmStart, layers: Sequence[Layer],
               fingerprint: str | None, limit: int | None = None) -> int:
    """Enqueue the warm-start policies into ``study`` once (uniform ratios over the lighter half of the range,
    with the hand-tuned recipe's knobs; the fronts of earlier studies) (at most ``limit``, the trials this run will
    start, so none is left waiting); returns how many were enqueued."""
    if (not ws.uniform and not ws.from_fronts) or records.warm_started(study) is not None:
        return 0
    limit = 10**9 if limit is None else limit
    n = 0
    r = space.ratio
    recipe = recipe_params(space, ("criterion", "round_to", *finetune_knobs()))
    for ratio in uniform_levels(r.low, (r.low + r.high) / 2, min(ws.uniform, limit)):  # the lighter half
        params = {**uniform_params(space, layers, ratio), **recipe}
        study.enqueue_trial(params, user_attrs=records.warm_start_attrs(f"uniform ratio {ratio:.3f}"),
                            skip_if_exists=True)
        n += 1
    if ws.from_fronts and fingerprint:
        for name, t in _earlier_fronts(study, store, fingerprint)[: max(0, limit - n)]:
            params = params_for_policy(space, layers, records.trial(t).policy or {})
            study.enqueue_trial(params, user_attrs=records.warm_start_attrs(f"front of study {name}, trial {t.number}"),
                                skip_if_exists=True)
            n += 1
    records.mark_warm_started(study, n)
    logger.info("warm start: %d polic%s enqueued", n, "y" if n == 1 else "ies")
    return n
