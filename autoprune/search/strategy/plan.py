"""A run's time plan: made once from the spec's budget at the command's start and handed to every phase (the
search's deadline and grace, the scan's share, the ledger each phase charges, each target's final seconds); the
rounds of screens and trials that fit before the deadline, and whether a search fits at all.

A run without a budget has an unbounded plan (its deadline is infinite: the trial count ends it). No round starts
unless it is expected to end before its deadline: expected from the trials and screens measured so far, and before
the first from what one measurement (prune, adaptive BN, validation, timing) took on this machine, which every
screen, probe and trial costs at least.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune.config.spec import SearchSpec
from autoprune.model import records
from autoprune.model.budget import Ledger
from autoprune.search.strategy.targets import covered, winner_maps

logger = logging.getLogger(__name__)

__all__ = ["Plan", "round_sizes", "round_plan", "direct_plan", "searched", "measurement_s", "smallest_search_s"]


@dataclass(frozen=True)
class Plan:
    """A run's time plan (:meth:`of`): no trial or screen starts after ``deadline`` (a ``time.time()``; infinite
    without a budget), except that a round that starts while a target has no completed trial that meets it may
    screen and fine-tune until ``grace`` (borrowed from the final fine-tunes); each phase's wall time is charged to
    ``ledger``, from ``started`` (a ``time.perf_counter()``: the command's start); the final phase gets what the
    search leaves of the budget."""

    deadline: float
    ledger: Ledger
    started: float
    grace: float | None = None

    @classmethod
    def of(cls, spec: SearchSpec, started: float) -> Plan:
        """The plan of ``spec``'s budget from ``started``: the search gets ``1 - budget.final_share`` of it (all of
        it without targets) and a round may borrow half the final share while a target is uncovered."""
        budget = spec.budget.seconds
        if budget is None:
            return cls(deadline=math.inf, ledger=Ledger(), started=started)
        share = spec.budget.final_share if spec.targets else 0.0
        deadline = time.time() - (time.perf_counter() - started) + budget * (1 - share)
        return cls(deadline=deadline, ledger=Ledger(budget_s=budget), started=started,
                   grace=deadline + budget * share / 2)

    @property
    def bounded(self) -> bool:
        """Whether a budget bounds the run (else the trial count ends it)."""
        return math.isfinite(self.deadline)

    @property
    def search_deadline(self) -> float | None:
        """The search's deadline for the trial runner (None: none)."""
        return self.deadline if self.bounded else None

    def seconds_left(self) -> float:
        """Seconds of the whole budget left now (infinite without one)."""
        if self.ledger.budget_s is None:
            return math.inf
        return self.ledger.budget_s - (time.perf_counter() - self.started)

    def share_left(self, share: float, since: float) -> float:
        """Seconds until ``share`` of the budget has passed since ``since`` (a ``time.perf_counter()``: the phase's
        start), and never past the search's deadline (negative: past either)."""
        left = since + share * (self.ledger.budget_s or 0.0) - time.perf_counter()
        return min(left, self.deadline - time.time())

    def round_deadline(self, study: optuna.Study, spec: SearchSpec) -> float:
        """The deadline of the next round's screens and trials: ``grace`` while a target is uncovered."""
        if self.grace is None or not spec.targets:
            return self.deadline
        return self.deadline if covered(study, spec.targets) else max(self.deadline, self.grace)


def searched(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The trials the search made (not the hand recipe's models, nor those the final phase continued from a
    delivery)."""
    return [t for t in trials if records.trial(t).searched]


def measurement_s(study: optuna.Study) -> float | None:
    """What one measurement took on this machine: the mean wall time of the hand recipe's models (each pruned,
    BN-recalibrated, validated and timed, no fine-tune), a floor under every probe, screen and trial."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return records.mean_wall_seconds([t for t in done if records.trial(t).recipe])


def smallest_search_s(spec: SearchSpec, measure_s: float) -> float:
    """The least a search that can change a delivery costs, at ``measure_s`` a measurement: one round, its screens
    and ``max(2, concurrent)`` fine-tuned trials (each at least a measurement), ``resources.concurrent`` at a time.
    The scan is left out: it shrinks to its share, down to nothing."""
    c = spec.resources.concurrent
    k = max(2, c)
    return measure_s * (math.ceil(spec.screening.factor * k / c) + math.ceil(k / c))


def round_sizes(n: int, rounds: int) -> list[int]:
    """``n`` trials split into at most ``rounds`` rounds as equal as possible (larger rounds first)."""
    rounds = max(1, min(rounds, n))
    return [n // rounds + (1 if i < n % rounds else 0) for i in range(rounds)]


def round_plan(study: optuna.Study, spec: SearchSpec, n_new: int, plan: Plan) -> Iterator[int]:
    """Fine-tuned trials per round: ``screening.rounds`` equal rounds of ``n_new``; with a budget, rounds of
    ``max(2, concurrent)`` trials while a round is expected to end before the deadline (from the trials and screens
    so far; before the first, each at least a measurement: :func:`measurement_s`), shrunk to what fits, until
    ``n_new`` trials ran, or until
    ``budget.patience`` rounds in a row left every target's winner as it was (what is left of the search's share
    then goes to the final fine-tunes)."""
    if not plan.bounded:
        yield from round_sizes(n_new, spec.screening.rounds)
        return
    from autoprune.search.strategy.promotion import mean_screen_seconds

    size, left = max(2, spec.resources.concurrent), n_new
    patience = spec.budget.patience if spec.targets else 0
    # rounds in a row after which no target's winner improved (a winner's mAP only rises)
    stale, best = 0, tuple[float | None, ...]()
    while left > 0:
        if patience:
            now = winner_maps(study, spec.targets)
            stale, best = (stale + 1 if now == best else 0), now
        if patience and None not in best and stale >= patience:
            logger.info("budget: no target's winner improved in %d round(s): the search hands its remaining %.0f s "
                        "to the final fine-tune", stale, max(0.0, plan.deadline - time.time()))
            return
        floor = measurement_s(study)
        trial_s = records.mean_wall_seconds(searched(study.get_trials(deepcopy=False,
                                                                      states=(TrialState.COMPLETE,)))) or floor
        screen_s = mean_screen_seconds(spec, study) or floor
        remaining = plan.round_deadline(study, spec) - time.time()
        k = min(size, left)
        if trial_s is not None:
            c = spec.resources.concurrent
            while k > 0 and (-(-k // c) * trial_s + spec.screening.factor * k * (screen_s or 0.0) / c) > remaining:
                k -= 1
        if k <= 0 or remaining <= 0:
            logger.info("budget: %.0f s left for the search, less than a round of trials takes: stopping the search",
                        max(0.0, remaining))
            return
        yield k
        left -= k


def direct_plan(study: optuna.Study, spec: SearchSpec, n_new: int, plan: Plan) -> Iterator[int]:
    """``budget.direct``'s rounds: one trial per target; another round, for the targets no trial meets yet, only
    while a round may still start (the plan's grace) and trials are left."""
    size = min(len(spec.targets), n_new)
    while size > 0:
        yield size
        n_new -= size
        if covered(study, spec.targets) or time.time() >= plan.round_deadline(study, spec):
            return
        size = min(n_new, sum(not covered(study, (t,)) for t in spec.targets))


