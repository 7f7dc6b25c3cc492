"""``autoprune search`` as one entry: one plan of the budget, the search within it, then (with a budget and
targets) each target's winner given the final fine-tune with the rest, and exported.

The budget covers the whole command, from its start: input checks and the baseline (``prepare``), the hand recipe's
model at each target (``recipe``: measured first, it is what a target gets at worst, and what it took sizes the
search), the sensitivity scan when this run makes it (a cached scan costs nothing here, and the ledger says it was
reused), screens, fine-tuned trials and the final fine-tunes with their validations and exports (``final``); what no
phase claims is ``other``. When the search's share cannot hold the smallest search that could change a delivery,
there is none, and the run says so. No round of screens and trials starts unless it is expected to end before the
search's deadline (a target that no completed trial meets yet may borrow half the final share for its first trials;
with ``budget.direct`` the picks of a round whose screens ran are measured whatever the clock says: adaptive BN,
seconds each, charged to the trials), and each final fine-tune is ultralytics' own time-budgeted training (it fits
its epochs and cosine schedule to the time it is given), so a run ends within one trial (or one optimizer step and
an export) of its budget.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from autoprune.config.spec import SearchSpec
from autoprune.deploy import chain
from autoprune.deploy.finalize import EXPORT_RESERVE_S, MAX_EPOCHS, FinalizeSettings, Raced, finalize_trial
from autoprune.deploy.race import Entrant, RaceOutcome, RaceSettings, run_race
from autoprune.errors import AutopruneError
from autoprune.model import records
from autoprune.model.budget import Ledger, Target, format_duration
from autoprune.model.race import lr_grid
from autoprune.search.run import Progress, SearchOutcome, run_search
from autoprune.search.strategy.plan import Plan
from autoprune.search.strategy.targets import trial_for_target

logger = logging.getLogger(__name__)

__all__ = ["Delivered", "RunOutcome", "run", "trial_for_target", "delivery_dir", "target_entrants"]


@dataclass(frozen=True)
class Delivered:
    """A target's finalized model, or why there is none."""

    target: Target
    trial: int | None = None
    out_dir: Path | None = None
    finalize: dict[str, Any] = field(default_factory=dict)  # the policy file's finalize section
    params: float | None = None
    reason: str | None = None  # set when nothing was delivered
    checkpoint: Path | None = None  # the delivered model's (a later target's recipe model may continue from it)

    def record(self, base_params: float | None) -> dict[str, Any]:
        out: dict[str, Any] = {"target": self.target.to_dict(), "trial": self.trial,
                               "out_dir": str(self.out_dir) if self.out_dir else None, "reason": self.reason}
        if self.finalize:
            out.update({"before": self.finalize.get("before"), "after": self.finalize.get("after"),
                        "epochs": self.finalize.get("epochs"), "optimizer_steps": self.finalize.get("optimizer_steps"),
                        "train_s": self.finalize.get("train_s"), "kept": self.finalize.get("kept"),
                        "lr": self.finalize.get("lr"), "source": self.finalize.get("source"),
                        "continued_from": self.finalize.get("continued_from"),
                        "race": _race_summary(self.finalize.get("race") or {})})
        if self.params is not None and base_params:
            out["params_ratio"] = self.params / base_params
        return out


def _race_summary(race: dict[str, Any]) -> dict[str, Any]:
    """What the study's delivery record keeps of a race (the policy file has all of it)."""
    keep = ("winner", "why", "rungs", "lrs", "spent_s")
    arms = [{k: a.get(k) for k in ("trial", "source", "lr", "latency_ratio", "val_map50_95")}
            for a in race.get("arms", [])]
    return {**{k: race[k] for k in keep if k in race}, **({"arms": arms} if arms else {})}


@dataclass(frozen=True)
class RunOutcome:
    search: SearchOutcome
    delivered: tuple[Delivered, ...]  # one per target (a run with a budget and targets), else none
    ledger: Ledger  # the plan's: seconds charged to each phase


def delivery_dir(spec: SearchSpec, target: Target) -> Path:
    return spec.study_dir / "final" / target.label


def run(spec: SearchSpec, started: float, max_new_trials: int | None = None, ray_address: str | None = None,
        progress: Progress | None = None) -> RunOutcome:
    """``autoprune search``: the one plan of ``spec``'s budget from ``started`` (a ``time.perf_counter()``: the
    command's start), the search within it, then, with a budget and targets, a finalized model per target (see
    module doc)."""
    plan = Plan.of(spec, started)
    budget = plan.ledger.budget_s
    if budget is not None:
        search_s = plan.deadline - (time.time() - (time.perf_counter() - started))
        logger.info("budget %s: %s for the search%s", format_duration(budget), format_duration(search_s),
                    f", {format_duration(budget - search_s)} for the final fine-tune of {len(spec.targets)} "
                    "target(s)" if spec.targets else "")
    outcome = run_search(spec, max_new_trials=max_new_trials, ray_address=ray_address, progress=progress, plan=plan)
    if budget is None:
        return RunOutcome(outcome, (), plan.ledger)
    if progress is not None and spec.targets:
        progress.phase("final fine-tune")
    delivered = _finalize_targets(outcome, spec, plan)
    plan.ledger.close(time.perf_counter() - started)
    study = outcome.study
    records.append_budget_run(study, study, {**plan.ledger.to_dict(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                             "targets": [t.label for t in spec.targets]})
    return RunOutcome(outcome, tuple(delivered), plan.ledger)


def _finalize_targets(outcome: SearchOutcome, spec: SearchSpec, plan: Plan) -> list[Delivered]:
    """Race and finalize each target's candidates, from the largest model to the smallest; with
    ``budget.progressive`` each recipe model continues from an earlier delivery where it can
    (:mod:`autoprune.deploy.chain`). The plan's time left is shared by the targets that have a candidate (the
    chain's first gets ``budget.chain_first_share`` of it, else equal parts). Returned in the spec's order."""
    study, store = outcome.study, outcome.store
    base_params = records.baseline_metrics(study).get("params")
    entrants = {t: target_entrants(study, t, spec.budget.as_fast_as_recipe) for t in spec.targets}
    pending = chain.chain_order([t for t in spec.targets if entrants[t]], {
        t: float(records.trial(_recipe_or_first(entrants[t]).trial).metrics.get("params", 0.0))
        for t in spec.targets if entrants[t]})
    progressive = spec.budget.progressive
    done: dict[Target, Delivered] = {}
    links: list[chain.Earlier] = []
    marked: dict[int, dict[str, Any]] = {}  # what this run marked on each trial: the study's cache of a finished
    for target in [*pending, *(t for t in spec.targets if not entrants[t])]:  # trial does not see a mark, and a
        t0 = time.perf_counter()                                               # trial can be delivered twice
        if not entrants[target]:
            reason = "no trial reached it within the budget"
            logger.warning("target %s: %s", target.label, reason)
            d = Delivered(target, reason=reason)
        else:
            seconds = chain.first_seconds(plan.seconds_left(), len(pending), spec.budget.chain_first_share,
                                          progressive and not links, floor=_recipe_part(spec, plan))
            pending.remove(target)
            d = _deliver(study, store, spec, target, entrants[target], seconds, links if progressive else [])
            link = chain.earlier_of(target, _trial(study, d.trial), d.checkpoint) if d.trial is not None else None
            if link is not None:
                links.append(link)
        plan.ledger.charge("final", time.perf_counter() - t0)
        records.set_delivery(study, study, target.label, d.record(base_params))
        if d.out_dir is not None and d.trial is not None:  # on the trial too, for optuna-dashboard's trial page
            attrs = records.delivered_attrs(_trial(study, d.trial), target.label, d.record(base_params),
                                            earlier=marked.get(d.trial))
            marked[d.trial] = attrs["delivered"]
            store.mark(study, d.trial, attrs)
        done[target] = d
    return [done[t] for t in spec.targets]


def _recipe_part(spec: SearchSpec, plan: Plan) -> float:
    """Where no search ran: the final seconds the chain's first target gets at least, a target's part of the budget
    (what the hand recipe sizes, prunes, trains and validates it in) less what the recovery probe trained it, plus
    the export's reserve (a finalize keeps it from its training; the recipe's part holds no export); else 0."""
    budget = plan.ledger.budget_s
    if not plan.ledger.search_skipped or not budget or not spec.targets:
        return 0.0
    probed = plan.ledger.recovery.get("train_s")
    trained = float(probed) if isinstance(probed, int | float) else 0.0
    return max(0.0, budget / len(spec.targets) - trained + EXPORT_RESERVE_S)


def _recipe_or_first(entrants: list[Entrant]) -> Entrant:
    return next((e for e in entrants if e.source == "recipe"), entrants[0])


def _trial(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def target_entrants(study: optuna.Study, target: Target, as_fast: bool = True) -> list[Entrant]:
    """What the final phase races at ``target``: the search's pick (the best val mAP50-95 that meets it; with
    ``as_fast``, among the trials no more than the race's latency margin slower than the recipe's model there) and
    the hand recipe's model (:mod:`autoprune.search.strategy.recipe`), where the study has them."""
    from autoprune.model.race import DOMINANCE
    from autoprune.search.strategy.recipe import recipe_trial
    from autoprune.search.strategy.targets import latency_of

    recipe = recipe_trial(study, target)
    bar = latency_of(recipe) if recipe is not None and as_fast else None
    pick = trial_for_target(study, target, searched_only=True,
                            max_latency=bar / (1 - DOMINANCE.latency_share) if bar else None)
    return [*([Entrant(pick, "search")] if pick is not None else []),
            *([Entrant(recipe, "recipe")] if recipe is not None else [])]


def _race(study: optuna.Study, store: Any, spec: SearchSpec, entrants: list[Entrant], seconds: float) -> RaceOutcome:
    b = spec.budget
    lrs = tuple(lr_grid(b.final_lr, b.race_lr_low, b.race_lrs))
    if len(entrants) == 1 and (len(lrs) == 1 or b.race_share <= 0):
        e = entrants[0]
        return RaceOutcome(e.trial, e.source, b.final_lr, e.state,
                           {"why": "one candidate" + ("" if len(lrs) == 1 else ", no race (budget.race_share 0)")},
                           trained=e.probe is not None)  # probed at final_lr: its fine-tune goes on, no warm-up
    data = str(records.baseline(study).get("data") or spec.data)
    settings = RaceSettings(data=data, imgsz=spec.imgsz, seconds=seconds * b.race_share, lrs=lrs, device=spec.device,
                            threads=spec.train_threads, seed=spec.seed, finetune=spec.finetune)
    return run_race(study, store, entrants, settings, artifact_dir=spec.artifacts_dir, scratch=spec.study_dir)


def _probed(study: optuna.Study, e: Entrant) -> Entrant:
    """``e`` starting from its recovery probe's weights (:mod:`autoprune.search.strategy.recovery`), where it had one:
    that training is not thrown away."""
    from autoprune.search.strategy.recovery import probed_start

    got = probed_start(study, e.trial) if e.source == "recipe" and e.state is None else None
    if got is None:
        return e
    logger.info("trial %d starts from its recovery probe's weights (%.0f s of fine-tuning)", e.trial.number,
                float(got[1].get("train_s", 0.0)))
    return Entrant(e.trial, e.source, got[0], e.continued_from, got[1])


def _continued(study: optuna.Study, spec: SearchSpec, entrants: list[Entrant],
               links: list[chain.Earlier]) -> list[Entrant]:
    """``entrants`` each continued from an earlier delivery where one fits (progressive delivery: the recipe's model,
    and the search's pick where the earlier delivery has at least its channels); where the only delivery to continue
    from is narrower than a candidate in some layer, that delivery pruned on to the narrower of the two (a trial of
    its own) races beside the candidate, which starts from its own checkpoint."""
    if not links:
        return entrants
    out = []
    for e in entrants:
        got = chain.inherit(links, e.trial, spec.trial_settings)
        if got is None:
            out.append(e)
        elif got.model is None:
            out.append(Entrant(e.trial, e.source, got.state, got.record))
        else:
            try:
                made = chain.continued_trial(study, spec, e.trial, got)
            except (AutopruneError, RuntimeError, ValueError, OSError) as err:
                logger.warning("trial %d: its capped continuation could not be measured (%s); it starts from its "
                               "own checkpoint", e.trial.number, str(err).strip().splitlines()[0][:200]
                               if str(err).strip() else type(err).__name__)
                out.append(e)
                continue
            out += [Entrant(made, e.source, None, records.trial(made).continued), e]
    return out


def _deliver(study: optuna.Study, store: Any, spec: SearchSpec, target: Target, entrants: list[Entrant],
             seconds: float, links: list[chain.Earlier] | None = None) -> Delivered:
    first = entrants[0].trial.number
    t0 = time.perf_counter()
    out = delivery_dir(spec, target)
    try:
        entrants = _continued(study, spec, [_probed(study, e) for e in entrants], list(links or []))
        try:
            won = _race(study, store, spec, entrants, max(0.0, seconds - (time.perf_counter() - t0)))
        except (AutopruneError, RuntimeError, ValueError, OSError) as e:  # the race only chooses: deliver without it
            why = f"the race failed ({str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__})"
            logger.warning("target %s: %s; the first candidate is delivered at lr %g", target.label, why,
                           spec.budget.final_lr)
            won = RaceOutcome(entrants[0].trial, entrants[0].source, spec.budget.final_lr, entrants[0].state,
                              {"why": why})
        entrant = next((e for e in entrants if e.trial.number == won.trial.number and e.source == won.source), None)
        cont = entrant.continued_from if entrant is not None else None
        probe = entrant.probe if entrant is not None and entrant.state is won.state else None
        what = "the uniform recipe's model" + (f", continued from the {cont['target']} delivery"
                                                + (" (capped)" if cont.get("capped_layers") else "") if cont else "")
        if won.source == "recipe" and any(e.source == "search" for e in entrants):
            logger.info("%s: %s won on this task (trial %d)", target.label, what, won.trial.number)
        elif won.source == "recipe":
            logger.info("%s: the search found no model that meets it; %s is delivered (trial %d)", target.label, what,
                        won.trial.number)
        left = seconds - (time.perf_counter() - t0)
        if left <= 0:
            logger.warning("target %s: the budget was spent before its final fine-tune: trial %d is delivered as it "
                           "was measured (adaptive BN, no fine-tune)", target.label, won.trial.number)
        settings = FinalizeSettings(seconds=left if left > 0 else None, epochs=MAX_EPOCHS if left > 0 else 0,
                                    lr=won.lr, device=spec.device, threads=spec.train_threads,
                                    warmup_epochs=0.0 if won.trained else 1.0)
        evidence = {"race": won.record, "source": won.source, **({"continued_from": dict(cont)} if cont else {}),
                    **({"recovery_probe": dict(probe)} if probe else {})}
        res = finalize_trial(study, store, won.trial, out, settings, artifact_dir=spec.artifacts_dir, force=True,
                             raced=Raced(won.state, evidence))
    except AutopruneError as e:
        logger.warning("target %s: trial %d could not be finalized: %s", target.label, first, e)
        return Delivered(target, trial=first, reason=f"finalize failed: {e}")
    from autoprune.model.document import load_policy_file

    doc = load_policy_file(res.policy)
    return Delivered(target, trial=won.trial.number, out_dir=res.out_dir, finalize=dict(doc.finalize or {}),
                     params=records.trial(won.trial).metrics.get("params"), checkpoint=res.checkpoint)
