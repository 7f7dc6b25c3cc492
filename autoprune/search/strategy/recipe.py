"""The hand recipe's model at each target, as a trial of the study: what a user would prune by hand (the smallest
uniform ratio that meets the target, group L2, channels rounded to 8: Torch-Pruning's YOLOv8 example), pruned,
BN-recalibrated (adaptive BN, no fine-tune) and measured like every other trial, on the spec's runtime.

A budgeted run adds one per target before its search, so the final phase always has the recipe's model among its
candidates (the delivery is raced against it and is never a model the recipe's own start beat on the user's task),
and what one took to measure sizes the search (:mod:`autoprune.search.strategy.plan`)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune.errors import InputError
from autoprune.model import knobs, records
from autoprune.model.budget import Target
from autoprune.model.sampling import recipe_params, uniform_params
from autoprune.model.space import Layer, Space
from autoprune.search.execution.executor import Job
from autoprune.search.execution.session import run_trials
from autoprune.search.strategy.context import RunContext

logger = logging.getLogger(__name__)

__all__ = ["recipe_trial", "recipe_policy_params", "recipe_ratios", "add_recipe_trials", "ensure_recipe_trials"]


def recipe_trial(study: optuna.Study, target: Target) -> FrozenTrial | None:
    """The completed trial holding the hand recipe's model at ``target`` (the latest, if several)."""
    found = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
             if (records.trial(t).recipe or {}).get("target") == target.label]
    return found[-1] if found else None


def recipe_policy_params(space: Space, layers: Sequence[Layer], ratio: float) -> dict[str, object]:
    """The study parameters of the recipe's policy: every layer at exactly ``ratio``, each searched knob at the
    recipe's choice (the knob table's ``recipe``)."""
    keys = [k.name for k in knobs.knobs() if k.recipe is not None]
    return {**uniform_params(space, layers, ratio, exact=True), **recipe_params(space, keys)}


def _recipe_ratio(ctx: RunContext, target: Target) -> float | None:
    """The smallest uniform ratio that meets ``target`` with the channel rounding the recipe's trial will prune
    with (the recipe's 8 where the space searches round_to, else the space's own)."""
    from autoprune.adapters import yolo
    from autoprune.engine.uniform import uniform_ratio_for, uniform_ratio_for_latency

    space = ctx.spec.space
    domain = space.domain("round_to")
    unsearched = domain[0] if isinstance(domain, tuple) and domain else knobs.get("round_to").value
    round_to = int(recipe_params(space, ["round_to"]).get("round_to", unsearched) or 1)
    model = yolo.load_model(ctx.spec.model)
    limits = dict(target.limits)
    ratio = 0.0
    try:
        if set(limits) - {"latency_ratio"}:
            ratio, _ = uniform_ratio_for(model, ctx.spec.trial_settings.replace(device="cpu"), target,
                                         round_to=round_to)
    except InputError as e:
        logger.info("target %s: no hand-recipe candidate (%s)", target.label, e)
        return None
    if "latency_ratio" in limits:  # as a user tuning for speed would: prune copies uniformly and time them
        ratio = uniform_ratio_for_latency(model.to(ctx.spec.device), ctx.spec.trial_settings,
                                          limits["latency_ratio"], low=ratio, round_to=round_to)
    return ratio


def recipe_ratios(ctx: RunContext) -> list[tuple[Target, float]]:
    """Each target that has no recipe model in the study yet, with the recipe's uniform ratio for it (sized on
    what the target bounds: counted parameters or MACs, or pruned copies timed against the base)."""
    wanted: list[tuple[Target, float]] = []
    for target in ctx.spec.targets:
        if recipe_trial(ctx.study, target) is not None:
            continue
        ratio = _recipe_ratio(ctx, target)
        if ratio is not None:
            wanted.append((target, ratio))
    return wanted


def add_recipe_trials(ctx: RunContext, job: Job, wanted: Sequence[tuple[Target, float]],
                      in_process: bool = False) -> list[int]:
    """The recipe's model at each of ``wanted`` (target, ratio) made a trial: pruned, adaptive BN in place of the
    fine-tune, measured whatever the clock says (seconds each; without it a target has nothing to race its search
    winner against). Under Ray like every trial; ``in_process``: one after another in this process, timed shortly
    (:meth:`~autoprune.config.sections.LatencySettings.short`), where no search follows and a Ray trial's own
    start would cost more than the measurement. Returns the new trials' numbers."""
    from autoprune.search.execution.session import run_in_process

    study, spec = ctx.study, ctx.spec
    if not wanted:
        return []
    before = {t.number for t in study.get_trials(deepcopy=False)}
    for target, ratio in wanted:
        study.enqueue_trial(recipe_policy_params(spec.space, ctx.layers, ratio),
                            user_attrs=records.recipe_attrs(target.label, ratio))
    logger.info("the hand recipe's model at %s: uniform ratio %s, pruned and measured (adaptive BN, no fine-tune%s)",
                ", ".join(t.label for t, _ in wanted), ", ".join(f"{r:.2f}" for _, r in wanted),
                ", in this process, timed shortly" if in_process else "")
    # the queue is first in, first out: trials left waiting by the search (picks past its deadline) run first, measured
    # alike (adaptive BN, seconds each), so that the recipe's models are measured too
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    measured = dataclasses.replace(job, finetune=False, queued_only=True)
    if in_process:
        settings = measured.settings
        run_in_process(study, ctx.store, dataclasses.replace(
            measured, settings=settings.replace(latency=settings.latency.short())), waiting)
    else:
        run_trials(study, ctx.store, measured, waiting, ray_address=ctx.ray_address, session=ctx.session)
    return sorted({t.number for t in study.get_trials(deepcopy=False)} - before)


def ensure_recipe_trials(ctx: RunContext, job: Job) -> list[int]:
    """:func:`add_recipe_trials` for every target that has no recipe model yet (under Ray)."""
    return add_recipe_trials(ctx, job, recipe_ratios(ctx))
