"""A search's progress for people: a bar with the phase, trials done of the run's budget, the ETA (tqdm's),
the feasible front's size and the best mAP50-95 within the constraints."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from autoprune.model import records
from autoprune.model.constraints import feasible

__all__ = ["ProgressSummary", "summary", "ProgressBar"]


@dataclass(frozen=True)
class ProgressSummary:
    completed: int
    failed: int
    front_size: int  # feasible, non-dominated
    best_map50_95: float | None  # best feasible
    base_map50_95: float | None

    def postfix(self) -> str:
        best = "-" if self.best_map50_95 is None else f"{self.best_map50_95:.3f}"
        base = "" if self.base_map50_95 is None else f" (base {self.base_map50_95:.3f})"
        failed = f", {self.failed} failed" if self.failed else ""
        return f"front {self.front_size}, best feasible mAP50-95 {best}{base}{failed}"


def summary(study: optuna.Study) -> ProgressSummary:
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    ok = [records.trial(t).metrics.get("map50_95") for t in done if feasible(t.constraints)]
    maps = [m for m in ok if m is not None]
    return ProgressSummary(completed=len(done), failed=len(trials) - len(done), front_size=len(study.best_trials),
                           best_map50_95=max(maps) if maps else None,
                           base_map50_95=records.baseline(study).get("map50_95"))


class ProgressBar:
    """tqdm on stderr when it is a terminal (nothing otherwise: logs and CI output stay clean)."""

    def __init__(self, enabled: bool | None = None) -> None:
        self._enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bar: Any = None
        self._phase = ""

    def start(self, study: optuna.Study, total: int | None) -> None:
        """``total``: the trials this run will start (None: unknown, a budgeted run)."""
        if not self._enabled:
            return
        from tqdm import tqdm

        self._bar = tqdm(total=total, desc=f"{study.study_name}", unit="trial", file=sys.stderr, leave=True,
                         dynamic_ncols=True)
        self._bar.set_postfix_str(summary(study).postfix())

    def phase(self, text: str) -> None:
        self._phase = text
        if self._bar is not None:
            self._bar.set_description_str(text)

    def trial_done(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(summary(study).postfix())

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
