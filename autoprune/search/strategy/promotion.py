"""Multi-fidelity search: screen candidates cheaply in a side study, promote the best into the main study.

Screening runs as an internal side study ``NAME-screen`` (marked as such) in the same
storage: each candidate is pruned to its final channels and adaptive-BN screened (see
:mod:`autoprune.engine.screen`); the screen's sampler searches channel choices only. Candidates
within the budgets are promoted by their hypervolume contribution to the main study's fine-tuned
front (mAP floor as the reference, screen mAP raised by the recovery fine-tuning showed so far),
enqueued into the main study with their channel choices and fine-tuned there. A run does this in
rounds, so fine-tuned results steer the next round. How well the screen ranked the final mAP is
recorded as Kendall's tau in the main study's ``screening`` record.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import TrialState

from autoprune.config.spec import SearchSpec
from autoprune.errors import SpecError
from autoprune.model import records
from autoprune.model.budget import Target
from autoprune.model.constraints import feasible
from autoprune.model.pareto import REFERENCE_MARGIN, contribution_order, kendall_tau, normalised_loss, promotion_order
from autoprune.model.sampling import params_for_policy, recipe_params, screen_space, screen_visible
from autoprune.model.space import Layer
from autoprune.search.execution.executor import Job
from autoprune.search.execution.session import run_trials
from autoprune.search.storage import journal
from autoprune.search.storage.study import (
    StudyOptions,
    StudyStorage,
    fail_stale_trials,
    open_study,
)
from autoprune.search.strategy.context import RunContext
from autoprune.search.strategy.warmstart import warm_start

logger = logging.getLogger(__name__)

__all__ = ["screen_job", "screening_summary", "screen_and_promote", "record_screening",
           "promotion_choice", "promotion_objectives", "recovery_gain", "check_side_study", "mean_screen_seconds",
           "target_picks"]



def screen_job(spec: SearchSpec, layers: Sequence[Layer]) -> Job:
    """The side study's job: channel choices only (fine-tune knobs fixed), adaptive-BN screens, short latency
    timing, the spec's budgets (the mAP floor is the reference of promotion, not a screen's constraint)."""
    lat = spec.latency
    short = dataclasses.replace(lat, warmup=min(lat.warmup, 2), runs=min(lat.runs, 10), rounds=min(lat.rounds, 5))
    name = records.side_study_name(spec.name)
    return Job(kind="screen", settings=spec.trial_settings.replace(latency=short), space=screen_space(spec.space),
               layers=tuple(layers), objectives=spec.objectives, study_dir=spec.files_dir(name),
               artifact_dir=spec.artifacts_dir, resources=spec.resources, retries=0,
               screen_batches=spec.screening.batches,
               constraints=dataclasses.replace(spec.constraints, map_floor=0.0))


def check_side_study(store: StudyStorage, spec: SearchSpec) -> None:
    """Refuse to screen when the side study's name belongs to a user study."""
    name = records.side_study_name(spec.name)
    if name in store.study_names() and records.role(store.load(name)) == "main":
        raise SpecError(f"name: screening study {name!r} would be the user study of that name; rename one of them "
                        "or set screening.factor: 0")


def _open_screen(spec: SearchSpec, store: StudyStorage) -> optuna.Study:
    options = dataclasses.replace(StudyOptions.of(spec), name=records.side_study_name(spec.name), role="screen")
    return open_study(options, store)


PROMOTION_OBJECTIVES = ("map50_95", "params", "macs")  # deterministic costs: no timing noise in the choice
LUT_METRIC = "latency_lut_ms"  # with latency.lut, the lookup table's latency estimate takes the place of MACs


def promotion_objectives(candidates: Sequence[dict[str, float]], baseline: dict[str, float]) -> list[str]:
    """The metrics promotion ranks by: ``PROMOTION_OBJECTIVES`` the candidates and the baseline all have, with
    the lookup table's latency estimate in place of MACs when they all have that."""
    names = [k for k in PROMOTION_OBJECTIVES if all(k in c for c in candidates) and k in baseline]
    if candidates and LUT_METRIC in baseline and all(LUT_METRIC in c for c in candidates):
        names = [LUT_METRIC if k == "macs" else k for k in names]
    return names


def recovery_gain(trials: Sequence[optuna.trial.FrozenTrial]) -> float:
    """Median of (fine-tuned - screen) mAP50-95 over the study's completed promoted trials (0 without any)."""
    gains = sorted(r.metrics["map50_95"] - r.screen.map50_95 for r in map(records.trial, trials)
                   if r.screen and "map50_95" in r.metrics)
    if not gains:
        return 0.0
    mid = len(gains) // 2
    return gains[mid] if len(gains) % 2 else (gains[mid - 1] + gains[mid]) / 2


def promotion_choice(candidates: Sequence[dict[str, float]], front: Sequence[dict[str, float]],
                     baseline: dict[str, float], map_floor: float, gain: float, n: int) -> list[int]:
    """Which ``n`` screened candidates (metric dicts) to fine-tune.

    First by hypervolume contribution to the study's fine-tuned front, in baseline-normalised
    (mAP50-95, params, MACs or the lookup table's latency: :func:`promotion_objectives`) space with the mAP
    floor as the reference point; a candidate's screen
    mAP is raised by ``gain``, what fine-tuning has recovered so far (the feedback of fine-tuned
    results). Candidates that add nothing (collapsed, dominated) come after, in non-dominated order.
    """
    names = promotion_objectives(candidates, baseline)
    ref = [-map_floor if k == "map50_95" else REFERENCE_MARGIN for k in names]

    def point(m: dict[str, float], extra: float) -> list[float]:
        return normalised_loss([m[k] + (extra if k == "map50_95" else 0.0) for k in names], names, baseline)

    pts = [point(c, gain) for c in candidates]
    first = contribution_order(pts, [point(f, 0.0) for f in front if all(k in f for k in names)], ref)
    rest = [i for i in promotion_order(candidates, names) if i not in first] if names else list(range(len(candidates)))
    return (first + rest)[:n]


def target_picks(candidates: Sequence[dict[str, float]], baseline: dict[str, float], targets: Sequence[Target],
                 taken: Sequence[int] = ()) -> list[int]:
    """For each target in turn, the candidate with the best screen mAP50-95 among those that meet it (and are not
    in ``taken`` or picked for an earlier target): what a target-driven run fine-tunes first."""
    out: list[int] = []
    for target in targets:
        fits = [i for i, c in enumerate(candidates)
                if i not in out and i not in taken and "map50_95" in c and target.meets(c, baseline)]
        if fits:
            out.append(max(fits, key=lambda i: candidates[i]["map50_95"]))
    return out


def screening_summary(trials: Sequence[optuna.trial.FrozenTrial], screen_seconds: Sequence[float]) -> dict[str, Any]:
    """Kendall tau of screen mAP vs final mAP over promoted, completed trials, and the compute ratio."""
    recs = [records.trial(t) for t in trials]
    pairs = [(r.screen.map50_95, r.metrics["map50_95"]) for r in recs if r.screen and "map50_95" in r.metrics]
    full = [r.wall_seconds for r in recs if r.screen and r.wall_seconds > 0]
    tau = kendall_tau([p[0] for p in pairs], [p[1] for p in pairs]) if len(pairs) >= 2 else float("nan")
    mean_screen = sum(screen_seconds) / len(screen_seconds) if screen_seconds else float("nan")
    mean_full = sum(full) / len(full) if full else float("nan")
    return {"kendall_tau": tau, "pairs": len(pairs), "screened": len(screen_seconds),
            "screen_seconds_mean": mean_screen, "full_seconds_mean": mean_full,
            "compute_saved_x": mean_full / mean_screen if mean_screen and mean_screen == mean_screen else float("nan")}


def screen_and_promote(ctx: RunContext, n_promote: int, *, recipe_knobs: bool = False,
                       seeds: Sequence[tuple[dict[str, Any], str]] = (),
                       deadline: float | None = None) -> tuple[optuna.Study, set[int]]:
    """Screen ``factor x n_promote`` candidates in the side study, enqueue the best ``n_promote`` (not promoted
    before, within the budgets) into the run's study.  Promoted trials fix only what the screen judged (channel
    choice); their fine-tune knobs are the recipe's with ``recipe_knobs``, else the main study's sampler's.
    ``seeds`` (policy dicts and where they come from, e.g. the sensitivity allocation) are screened first, on top
    of the ``factor x n_promote`` screens. With the spec's targets, each target's best candidate that meets it comes
    first. No screen starts after ``deadline`` (a ``time.time()``).
    Returns the side study and the numbers of its new trials."""
    study, store, spec, layers = ctx.study, ctx.store, ctx.spec, ctx.layers
    fingerprint = records.fingerprint(study)
    screen = _open_screen(spec, store)
    job = screen_job(spec, layers)
    journal.replay(screen, store, job.study_dir)  # results the storage refused last time
    fail_stale_trials(screen, store, 0)  # screens left RUNNING by a dead driver
    records.copy_study_attrs(study, screen, screen)
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))  # e.g. retries
    n_promote = max(0, n_promote - waiting)
    before = {t.number for t in screen.get_trials(deepcopy=False)}
    if n_promote == 0:
        return screen, set()
    n_screen = spec.screening.factor * n_promote if spec.screening.proposals else 0
    for policy, source in seeds:
        screen.enqueue_trial(params_for_policy(job.space, layers, policy), user_attrs=records.warm_start_attrs(source))
    warm_start(screen, store, job.space, spec.warm_start, layers, fingerprint, limit=n_screen)
    n_screen += len(seeds)
    logger.info("screening %d candidate policies with adaptive BatchNorm (%d batches each)", n_screen,
                spec.screening.batches)
    if n_screen:
        run_trials(screen, store, job, n_screen, ray_address=ctx.ray_address, deadline=deadline, session=ctx.session)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    promoted = {r.screen.trial for r in map(records.trial, study.get_trials(deepcopy=False)) if r.screen}
    candidates = [t for t in screen.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                  if t.number not in promoted and records.trial(t).metrics and feasible(t.constraints)]
    gain = recovery_gain(done)
    front = [records.trial(t).metrics for t in study.best_trials]
    metrics = [records.trial(t).metrics for t in candidates]
    base = records.baseline_metrics(study)
    first = target_picks(metrics, base, spec.targets)[:n_promote]
    order = first + [i for i in promotion_choice(metrics, front, base, spec.constraints.map_floor, gain, n_promote)
                     if i not in first]
    order = order[:n_promote]
    chosen = [candidates[i] for i in order]
    knobs = recipe_params(spec.space) if recipe_knobs else {}
    for t in chosen:
        rec = records.trial(t)
        score = records.ScreenScore(t.number, rec.metrics["map50_95"], rec.metrics["map50"], rec.wall_seconds or None)
        study.enqueue_trial({**screen_visible(t.params), **knobs}, user_attrs=records.screen_source_attrs(score))
    logger.info("promoted %d of %d screened candidates (recovery by fine-tuning so far %+.3f mAP): screen trials %s",
                len(chosen), len(candidates), gain, [t.number for t in chosen])
    return screen, {t.number for t in screen.get_trials(deepcopy=False)} - before


def mean_screen_seconds(spec: SearchSpec, study: optuna.Study) -> float | None:
    """Mean wall time of a completed screen in ``study``'s side study (None before the first, or without one)."""
    name = records.side_study_name(spec.name)
    try:
        screen = optuna.load_study(study_name=name, storage=study._storage)
    except KeyError:
        return None
    return records.mean_wall_seconds(screen.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def record_screening(study: optuna.Study, store: StudyStorage, spec: SearchSpec) -> dict[str, Any]:
    """Store (and return) the study's ``screening`` record: Kendall tau of screen vs final mAP."""
    screen = _open_screen(spec, store)
    seconds = [records.trial(t).wall_seconds for t in screen.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    summary = screening_summary(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                                [s for s in seconds if s > 0])
    summary = {k: (None if isinstance(v, float) and v != v else v) for k, v in summary.items()}
    records.set_screening(study, summary)

    tau, saved = summary["kendall_tau"], summary["compute_saved_x"]
    logger.info("screening: Kendall tau %s over %d promoted trials; %s", "n/a" if tau is None else f"{tau:.2f}",
                summary["pairs"], "a screen's cost against a trial's was not measured" if saved is None
                else f"a screen costs 1/{saved:.2f} of a trial")
    return summary
