"""``autoprune search``: open the study, measure the baseline once, run the phases (the inputs are checked by
:mod:`autoprune.search.inputs` first).

This module owns Ray's lifetime for a search (one Ray session for the screen and the main trials).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import optuna
import sqlalchemy
from optuna.trial import TrialState

from autoprune.config.spec import SearchSpec
from autoprune.errors import StorageWriteError, scrubbed
from autoprune.model import records
from autoprune.model.space import Layer
from autoprune.search.execution.executor import Job
from autoprune.search.execution.ray_setup import check_cluster_resources, ray_session
from autoprune.search.execution.session import TuneSession, run_trials
from autoprune.search.inputs import materialise_yaml_model, prepare_inputs, resolve_round_to
from autoprune.search.storage import journal
from autoprune.search.storage.study import StudyStorage, fail_stale_trials, get_storage, masked, open_study_for
from autoprune.search.strategy.context import RunContext
from autoprune.search.strategy.plan import Plan, direct_plan, measurement_s, round_plan, searched, smallest_search_s
from autoprune.search.strategy.references import ensure_references

logger = logging.getLogger(__name__)

__all__ = ["run_search", "SearchOutcome", "main_job", "union_seconds"]


@dataclass(frozen=True)
class SearchOutcome:
    study: optuna.Study
    spec: SearchSpec
    new_trials: int
    store: StudyStorage


def _ensure_baseline(study: optuna.Study, spec: SearchSpec,
                     before_latency: Callable[[], object] | None = None) -> list[Layer]:
    from autoprune.adapters import pruning, yolo
    from autoprune.engine.identity import architecture, file_sha256, fingerprint
    from autoprune.engine.measure import Phases, measure_model
    from autoprune.engine.pipeline import TRACE_IMGSZ

    if not records.trial_settings(study):  # what an exported policy needs to repeat a trial's fine-tuning
        records.set_trial_settings(study, spec.seed, dataclasses.asdict(spec.finetune))
    layers = records.layers(study)
    if layers is not None and records.baseline(study):
        ensure_references(study, spec, records.baseline_metrics(study))
        return layers
    model = yolo.load_model(spec.model).to(spec.device)
    layers = [Layer(p.name, p.channels, yolo.layer_stage(model, p.name))
              for p in pruning.prunable_layers(model, TRACE_IMGSZ)]
    logger.info("measuring the unpruned baseline (%d prunable layers)", len(layers))
    phases = Phases()
    m = measure_model(model, spec.trial_settings, phases, before_latency=before_latency)
    metrics = m.metrics()
    if "latency_ratio" in metrics:
        metrics["latency_ratio"] = 1.0  # by definition; the measured self-ratio stays in "latency"
    records.set_layers(study, layers)
    records.set_identity(study, fingerprint(model), architecture(model), file_sha256(spec.model))
    # what its validation and timing took (not the wait for the first Ray worker): a floor under every measurement
    records.set_baseline(study, {**metrics, "latency": m.latency, "model": spec.model, "data": spec.data,
                                 "imgsz": spec.imgsz, "measure_s": round(sum(phases.seconds.values()), 3)})
    logger.info("baseline: mAP50-95 %.3f, mAP50 %.3f, params %s, MACs %s, latency %.2f ms",
                m.map50_95, m.map50, f"{m.params:,}", f"{m.macs:,}", m.latency_ms)
    ensure_references(study, spec, metrics)
    return layers


def _trial_seconds(study: optuna.Study, numbers: set[int], busy: list[tuple[float, float]] | None = None) -> float:
    """Sum of the trials' own wall time (measured inside the trial); with ``busy``, their intervals (end at the
    recorded completion, start ``wall_seconds`` before it) are appended to it."""
    total = 0.0
    for t in study.get_trials(deepcopy=False):
        if t.number in numbers:
            w = records.trial(t).wall_seconds
            total += w
            if busy is not None and t.datetime_complete is not None and w > 0:
                end = t.datetime_complete.timestamp()
                busy.append((end - w, end))
    return total


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of time intervals: the time in which at least one trial ran (overlaps count once)."""
    total, start, end = 0.0, None, None
    for a, b in sorted(intervals):
        if end is None or a > end:
            total += (end - start) if end is not None and start is not None else 0.0
            start, end = a, b
        else:
            end = max(end, b)
    return total + ((end - start) if end is not None and start is not None else 0.0)


def main_job(spec: SearchSpec, layers: list[Layer]) -> Job:
    return Job(kind="trial", settings=spec.trial_settings, space=spec.space, layers=tuple(layers),
               objectives=spec.objectives, study_dir=spec.study_dir, artifact_dir=spec.artifacts_dir,
               resources=spec.resources, retries=spec.retries, constraints=spec.constraints)


class Progress(Protocol):
    """Told what a search is doing (the CLI shows it as a progress bar)."""

    def start(self, study: optuna.Study, total: int | None) -> None: ...

    def phase(self, text: str) -> None: ...

    def trial_done(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None: ...


def run_search(spec: SearchSpec, max_new_trials: int | None = None, ray_address: str | None = None,
               progress: Progress | None = None, plan: Plan | None = None) -> SearchOutcome:
    """Run (or continue) the spec's study within ``plan`` (default: the spec's budget's, from now).

    Without a budget the study is filled up to ``spec.trials`` completed trials (without ``max_new_trials``) or
    exactly that many new trials are started; with one, rounds of screens and trials go on until the plan's
    deadline (or ``max_new_trials``), whatever ``spec.trials`` says.
    """
    plan = plan or Plan.of(spec, time.perf_counter())
    prepared = prepare_inputs(spec)
    spec = prepared.spec
    t0 = time.perf_counter()
    with ray_session(ray_address):  # one Ray session for the screen and the main trials
        check_cluster_resources(spec.resources)  # before any storage is created
        ray_init_s = time.perf_counter() - t0
        store = get_storage(spec.storage_url)
        if spec.screening.factor:  # the side study's name must not be a user study's (checked before writing)
            from autoprune.search.strategy.promotion import check_side_study

            check_side_study(store, spec)
        try:
            return _search(spec, prepared.nc, store, max_new_trials, ray_address, ray_init_s, progress, plan)
        except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as e:
            first = scrubbed(journal.cause(e), store.url)  # the database's own words, not Optuna's wrapper's
            raise StorageWriteError(f"storage: {masked(store.url)} cannot be written ({first})") from None


def _allocate(ctx: RunContext, run: records.RunTimings, busy: list[tuple[float, float]],
              plan: Plan) -> tuple[list[tuple[dict[str, object], str]], records.RunTimings]:
    """The sensitivity scan (cached) and the first round's allocated candidates, as screening seeds (with targets,
    allocations at each target's parameter cut too)."""
    from autoprune.search.strategy.sensitivity import ScanBudget, ensure_scan, scan_knobs
    from autoprune.search.strategy.target_allocation import target_candidates

    spec, layers = ctx.spec, list(ctx.layers)
    share = spec.budget.scan_share if plan.bounded else None
    since = time.perf_counter()  # the scan's share counts from its start (the baseline and the recipe's models
    sizing = ScanBudget.of(spec, share, lambda: plan.share_left(share, since)) if share else None  # came first)
    scan = ensure_scan(ctx.study, ctx.store, spec, layers, ctx.ray_address, sizing=sizing, session=ctx.session)
    sens, ran = scan.sensitivity, scan.ran
    if plan.bounded and not ran:
        plan.ledger.scan_reused = True
        logger.info("sensitivity scan: reused from the cache (its cost was charged to the run that made it)")
    run = dataclasses.replace(run, screen_trial_s=run.screen_trial_s + _trial_seconds(scan.study, ran, busy))
    n = spec.sensitivity.candidates
    criterion, round_to = scan_knobs(spec.space)
    if sizing is not None:
        n = sizing.allocations(spec, scan)
        plan.ledger.scan_size = {"levels": scan.levels, "allocations": n}
    found = target_candidates(spec, layers, scan, n, criterion, round_to, records.baseline_metrics(ctx.study))
    logger.info("sensitivity allocation: %d candidate(s) over the cost range (reference screen mAP50-95 %.3f)",
                len(found), sens.reference_map)
    return [({"ratios": c.ratios, "criterion": criterion, "round_to": round_to}, c.source) for c in found], run


BUDGETED_MAX_TRIALS = 100_000  # a budgeted run's trial cap when none is given: its plan's deadline ends it


def _search(spec: SearchSpec, nc: int, store: StudyStorage, max_new_trials: int | None, ray_address: str | None,
            ray_init_s: float, progress: Progress | None, plan: Plan) -> SearchOutcome:
    study = open_study_for(spec, store)
    spec = resolve_round_to(spec)
    spec = materialise_yaml_model(spec, nc)
    journal.replay(study, store, spec.study_dir)  # results the storage refused last time, before stale trials fail
    fail_stale_trials(study, store, spec.retries)
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    n_new = max_new_trials if max_new_trials is not None else max(0, spec.trials - done)
    if plan.bounded and max_new_trials is None:
        n_new = BUDGETED_MAX_TRIALS
    if n_new == 0:
        _ensure_baseline(study, spec)
        logger.info("study %s already has %d completed trials (budget %d): nothing to run", spec.name, done,
                    spec.trials)
        return SearchOutcome(study=study, spec=spec, new_trials=0, store=store)
    # one Tune run for every phase; its first worker starts (imports the trial code) while the baseline is measured
    session = TuneSession(f"{spec.name}-ray", spec.study_dir / "ray", spec.resources, warm=True)
    base = RunContext(study, store, spec, ray_address=ray_address, session=session)
    return session.drive(lambda: _phases(base, n_new, done, ray_init_s, session, progress, plan))


def _screened_rounds(ctx: RunContext, run: records.RunTimings, busy: list[tuple[float, float]], n_new: int,
                     on_trial: Callable[[optuna.trial.FrozenTrial], None] | None, phase: Callable[[str], None],
                     plan: Plan) -> tuple[records.RunTimings, int]:
    """The scan (first run only), then rounds of screening and fine-tuning the promoted; returns the run's timings
    and how many trials were started."""
    from autoprune.search.strategy.promotion import screen_and_promote

    study, store, spec = ctx.study, ctx.store, ctx.spec
    job = main_job(spec, list(ctx.layers))
    first = not searched(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))  # the recipe's aside
    seeds: list[tuple[dict[str, object], str]] = []
    if first and spec.sensitivity.probes:
        t0 = time.perf_counter()
        phase("sensitivity scan")
        seeds, run = _allocate(ctx, run, busy, plan)
        run = dataclasses.replace(run, screen_run_s=run.screen_run_s + time.perf_counter() - t0)
        plan.ledger.charge("scan", time.perf_counter() - t0)
    started = 0
    direct = plan.bounded and spec.budget.direct
    if direct:  # one round: each target's best screened candidate, adaptive BN in place of the short fine-tune
        job = dataclasses.replace(job, finetune=False, queued_only=True)  # the screened picks, never a fresh draw
        logger.info("budget.direct: one round of screens; each target's best screened candidate goes straight to its "
                    "final fine-tune")
    sizes = direct_plan(study, spec, n_new, plan) if direct else round_plan(study, spec, n_new, plan)
    for k, size in enumerate(sizes):
        t0 = time.perf_counter()
        phase(f"round {k + 1}: screening")
        deadline = plan.round_deadline(study, spec) if plan.bounded else None
        screen, screened = screen_and_promote(ctx, size, recipe_knobs=first and k == 0,
                                              seeds=seeds if k == 0 else (), deadline=deadline)
        screen_s = time.perf_counter() - t0
        run = dataclasses.replace(run, screen_run_s=run.screen_run_s + screen_s,
                                  screen_trial_s=run.screen_trial_s + _trial_seconds(screen, screened, busy))
        doing = "measuring (adaptive BN, no fine-tune)" if direct else "fine-tuning"
        logger.info("study %s, round %d: %s %d promoted trial(s)", spec.name, k + 1, doing, size)
        t0 = time.perf_counter()
        phase(f"round {k + 1}: {doing.split(' ')[0]}")
        count = len(study.get_trials(deepcopy=False))
        # a direct round's promoted picks (one per target, adaptive BN: seconds each) are measured even past the
        # deadline: the screens that chose them are paid for, and an unmeasured pick leaves its target undelivered
        run_trials(study, store, job, size, ray_address=ctx.ray_address, on_trial=on_trial,
                   deadline=None if direct else deadline, session=ctx.session)
        started += len(study.get_trials(deepcopy=False)) - count
        run = dataclasses.replace(run, run_s=run.run_s + time.perf_counter() - t0)
        plan.ledger.charge("screens", screen_s)
        plan.ledger.charge("trials", time.perf_counter() - t0)
    return run, started


def _recipe_models(ctx: RunContext, job: Job, plan: Plan, phase: Callable[[str], None]) -> bool:
    """The hand recipe's model at each target (:mod:`autoprune.search.strategy.recipe`), before the search: the
    final phase races the search's picks against them, and delivers them where the search has nothing. Sized first;
    where the search cannot fit even before they are measured (:func:`_search_fits`, from the baseline's
    measurement, a floor), they are measured in this process, without Ray; else the first under Ray, and what it
    took judges again whether a search fits after the others (if not, they are, too). Returns whether one fits."""
    from autoprune.search.strategy.recipe import add_recipe_trials, recipe_ratios

    t0 = time.perf_counter()
    phase("the hand recipe's models")
    search = True
    probe = ctx.spec.budget.recovery_probe
    try:
        wanted = recipe_ratios(ctx)
        search = _search_fits(ctx, plan, pending=len(wanted), probe=probe)
        if search and len(wanted) > 1 and measurement_s(ctx.study) is None:  # judged on the floor
            add_recipe_trials(ctx, job, wanted[:1])
            wanted = wanted[1:]
            search = _search_fits(ctx, plan, pending=len(wanted), probe=probe)
        add_recipe_trials(ctx, job, wanted, in_process=not search)
    except Exception as e:  # the search's picks are still delivered, only without the recipe's beside them
        logger.warning("the hand recipe's models could not be made: %s", str(e).strip().splitlines()[0][:300]
                       if str(e).strip() else type(e).__name__)
    plan.ledger.charge("recipe", time.perf_counter() - t0)
    return search and _search_fits(ctx, plan, probe=probe)


def _search_fits(ctx: RunContext, plan: Plan, pending: int = 0, probe: bool = False) -> bool:
    """Whether the search's share still holds the smallest search that could change a delivery, after ``pending``
    measurements and (``probe``) the recovery probe, which runs as long as that search, that come first (from what a
    measurement took here: the recipe's models, else the baseline's validation and timing, a floor); if not, the run
    says so in one line and its final phase gets the whole rest."""
    measure_s = measurement_s(ctx.study)
    floor = measure_s is None
    if floor:
        measure_s = records.baseline(ctx.study).get("measure_s")
    if not measure_s:
        return True  # nothing measured to judge by
    smallest = smallest_search_s(ctx.spec, measure_s)
    need = smallest * (2 if probe else 1) + pending * measure_s
    left = plan.deadline - time.time()
    if need <= left:
        return True
    first = ", ".join([*([f"the recipe's {pending} model(s)"] if pending else []),
                       *([f"the recovery probe's {smallest:.0f} s"] if probe else [])])
    first = f", {first} first" if first else ""
    what = "a measurement (the baseline's validation and timing)" if floor else "a measurement here"
    plan.ledger.search_skipped = (f"the search's {max(0.0, left):.0f} s hold less than its smallest useful size "
                                   f"(~{need:.0f} s{first} at {measure_s:.1f} s {what})")
    logger.warning("budget: %s: no search; the hand recipe's models get the rest of the budget",
                   plan.ledger.search_skipped)
    return False


def _worth_a_search(ctx: RunContext, plan: Plan, phase: Callable[[str], None]) -> bool:
    """The recovery probe (:mod:`autoprune.search.strategy.recovery`), for as long as the smallest search costs:
    whether a searched start can be worth the search's time on this task; if not, the run says so in one line."""
    from autoprune.search.strategy.recovery import probe_recovery

    measure_s = measurement_s(ctx.study)
    if measure_s is None:
        return True
    seconds = smallest_search_s(ctx.spec, measure_s)
    t0 = time.perf_counter()
    phase("recovery probe")
    try:
        rec = probe_recovery(ctx.study, ctx.spec, seconds)
    except Exception as e:  # the probe only informs the choice: the search runs without it
        logger.warning("the recovery probe failed: %s", str(e).strip().splitlines()[0][:300] if str(e).strip()
                       else type(e).__name__)
        rec = None
    plan.ledger.charge("recipe", time.perf_counter() - t0)
    if rec is None:
        return True
    plan.ledger.recovery = rec.to_dict()
    share = (plan.ledger.budget_s or 0.0) * (1 - ctx.spec.budget.final_share)
    took = (f"val mAP50-95 {rec.val_before:.3f} -> {rec.val_after:.3f} in {rec.train_s:.0f} s of fine-tuning, the "
            f"base {rec.base_val:.3f}")
    if rec.recovery_s > share:
        logger.info("recovery probe: the hand recipe's model at %s (%s) needs ~%s s to be back at the base's val: more "
                    "than the search's share (%.0f s): the search runs", rec.target, took,
                    f"{rec.recovery_s:.0f}" if math.isfinite(rec.recovery_s) else "inf", share)
        return True
    plan.ledger.search_skipped = (
        f"the hand recipe's model at {rec.target} is back at the base's val mAP50-95 after ~{rec.recovery_s:.0f} s "
        f"of fine-tuning ({took}{'' if rec.recovered else '; extrapolated at that rate'}), less than the search's "
        f"share ({share:.0f} s): no searched start is worth the search's time here")
    logger.warning("budget: %s: no search; the hand recipe's models get the rest of the budget",
                   plan.ledger.search_skipped)
    return False


def _phases(base: RunContext, n_new: int, done: int, ray_init_s: float, session: TuneSession,
            progress: Progress | None, plan: Plan) -> SearchOutcome:
    """The search proper (in the session's phase thread): the baseline, then the scan, screens and trials."""
    study, store, spec, ray_address = base.study, base.store, base.spec, base.ray_address
    layers = _ensure_baseline(study, spec, before_latency=session.wait_warm)
    ctx = dataclasses.replace(base, layers=tuple(layers))
    plan.ledger.charge("prepare", time.perf_counter() - plan.started)
    from autoprune.search.strategy.warmstart import warm_start

    run = records.RunTimings(started=time.strftime("%Y-%m-%dT%H:%M:%S"), ray_init_s=ray_init_s)
    if progress is not None:  # a budgeted run's trial count is not known in advance: the deadline ends it
        progress.start(study, None if plan.bounded and n_new == BUDGETED_MAX_TRIALS else n_new)
    on_trial = (lambda t: progress.trial_done(study, t)) if progress is not None else None

    def phase(text: str) -> None:
        if progress is not None:
            progress.phase(text)
    before = {t.number for t in study.get_trials(deepcopy=False)}
    busy: list[tuple[float, float]] = []  # when trials and screens ran: orchestration is the rest of the wall time
    fingerprint = records.fingerprint(study)
    job = main_job(spec, layers)
    search = True
    if plan.bounded and spec.targets:  # the hand recipe's models first: what each target gets at worst
        search = _recipe_models(ctx, job, plan, phase)
        if search and spec.budget.recovery_probe:  # the probe's time is the search's: what is left must still fit
            search = _worth_a_search(ctx, plan, phase) and _search_fits(ctx, plan)
        n_new = n_new if search else 0
    if search and spec.screening.factor:
        run, started = _screened_rounds(ctx, run, busy, n_new, on_trial, phase, plan)
        if plan.bounded:
            n_new = started
    elif search:
        waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        warm_start(study, store, spec.space, spec.warm_start, layers, fingerprint, limit=max(0, n_new - waiting))
        logger.info("study %s: running %d new trial(s) (%d completed so far) with Ray Tune", spec.name, n_new,
                    done)
        t0 = time.perf_counter()
        phase("fine-tuning")
        count = len(study.get_trials(deepcopy=False))
        run_trials(study, store, job, n_new, ray_address=ray_address, on_trial=on_trial,
                   deadline=plan.search_deadline, session=ctx.session)
        run = dataclasses.replace(run, run_s=time.perf_counter() - t0)
        plan.ledger.charge("trials", run.run_s)
        if plan.bounded:
            n_new = len(study.get_trials(deepcopy=False)) - count
    new = {t.number for t in study.get_trials(deepcopy=False)} - before
    run = dataclasses.replace(run, trials=len(new), trial_s=_trial_seconds(study, new, busy))
    wall = run.run_s + run.screen_run_s
    busy_s = min(wall, union_seconds(busy))
    run = dataclasses.replace(run, busy_s=busy_s, overhead_share=(wall - busy_s) / wall if busy_s and wall else None,
                              trials_per_hour=3600.0 * len(new) / wall if wall else None)
    records.append_run(study, study, run)
    if spec.screening.factor:
        from autoprune.search.strategy.promotion import record_screening

        record_screening(study, store, spec)
    return SearchOutcome(study=study, spec=spec, new_trials=n_new, store=store)
