"""Ray Tune executes the trials; an Optuna study (ask/tell) decides what they are.

:class:`StudySearcher` is a Ray Tune ``Searcher`` that asks the Optuna study for each new
trial and tells it the outcome. Everything written to the study goes through the driver;
Ray workers only run a :class:`Job` (a real trial, or an adaptive-BN screen) and report one
JSON payload (:func:`encode` / :func:`decode`), so a missing metric, a NaN or a dead worker
becomes a FAILED trial with its reason and never a RUNNING zombie.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.trial import TrialState
from ray import tune
from ray.tune.search import Searcher

from autoprune.config.spec import Constraints, Resources, TrialSettings
from autoprune.model import records
from autoprune.model.allocation import REFERENCE, UNIFORM
from autoprune.model.constraints import constraint_values, feasible
from autoprune.model.policy import Policy, ratio_summary
from autoprune.model.records import TrialResult
from autoprune.model.sampling import sample_policy
from autoprune.model.space import Layer, Space
from autoprune.search.storage import journal
from autoprune.search.storage.front import sync_front
from autoprune.search.storage.study import (
    StudyStorage,
    driver_id,
    fail_trial,
    heartbeat,
    maybe_retry,
)

logger = logging.getLogger(__name__)

__all__ = ["Job", "StudySearcher", "trainable",
           "encode", "decode", "beat", "log_trial", "TrialFn", "PAYLOAD_KEY"]

PAYLOAD_KEY = "autoprune"


@dataclass(frozen=True)
class Job:
    """What the trials of one Ray Tune run do, and where their files go."""

    kind: Literal["trial", "screen"]
    settings: TrialSettings
    space: Space
    layers: tuple[Layer, ...]
    objectives: tuple[str, ...]
    study_dir: Path  # trial files: study_dir/trials/NNNNN
    artifact_dir: Path  # the Optuna artifact store offered by optuna-dashboard
    resources: Resources = Resources()
    retries: int = 0
    screen_batches: int = 8
    constraints: Constraints = Constraints()
    # run only the study's queued trials (a scan's probes): the batch ends when none is waiting, since another
    # driver on the same study may have taken them
    queued_only: bool = False
    finetune: bool = True  # False: trials get adaptive BN in place of their fine-tunes (budget.direct)


def encode(result: TrialResult) -> dict[str, str]:
    """The one payload a Ray worker reports."""
    return {PAYLOAD_KEY: json.dumps(result.to_json(), default=str)}


def decode(report: dict[str, Any] | None) -> TrialResult | None:
    """The worker's result, or None when the report holds no readable payload."""
    if not report or PAYLOAD_KEY not in report:
        return None
    try:
        d = json.loads(report[PAYLOAD_KEY])
        return TrialResult.from_json(d)
    except (TypeError, ValueError, AttributeError):
        return None


class StudySearcher(Searcher):
    """Hands out up to ``n_trials`` Optuna trials to Ray Tune and records their results."""

    def __init__(self, study: optuna.Study, store: StudyStorage, job: Job, n_trials: int,
                 on_done: Callable[[optuna.trial.FrozenTrial], None] | None = None, deadline: float | None = None):
        super().__init__()
        from autoprune.search.storage.artifacts import artifact_store

        self._baseline = records.baseline_metrics(study)
        self._store = artifact_store(job.artifact_dir)
        self._study, self._storage, self._job = study, store, job
        self._n, self._asked = n_trials, 0  # _n grows by one for each retry granted
        self._deadline = deadline  # time.time() after which no new trial is handed out (a budgeted run)
        self._live: dict[str, optuna.Trial] = {}
        self._on_done = on_done
        self.driver = driver_id()
        self.kept: list[Path] = []  # journal files of results the storage refused
        self.lost: list[int] = []  # trials whose result neither the storage nor the journal could take

    def set_search_properties(self, metric: Any, mode: Any, config: Any, **spec: Any) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:  # or Searcher.FINISHED
        if self.exhausted:
            return Searcher.FINISHED  # type: ignore[return-value]  # Ray's sentinel string
        if self._job.queued_only and not self._study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            self._n = self._asked  # the queue is empty: the batch is done
            return Searcher.FINISHED  # type: ignore[return-value]
        self._asked += 1
        ot = journal.with_retries(self._study.ask, "a new trial")  # a refused insert leaves no trial behind
        if self._job.queued_only and not self._storage.was_queued(self._study, ot.number):  # another driver
            # popped the last queued trial between the check and the ask: this one was sampled, not queued
            fail_trial(self._study, ot, "no queued trial left: another driver took it")
            self._n = self._asked
            return Searcher.FINISHED  # type: ignore[return-value]

        def start() -> Policy:
            records.start_trial(ot, self.driver, trial_id)
            journal.reserve(self._job.study_dir, self._study.study_name, ot.number)
            with warnings.catch_warnings():  # probes and warm starts fix ratios outside the range on purpose (a
                # probe leaves the other blocks whole: 0; an earlier study's front its own values); not the user's
                warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range")
                policy = sample_policy(ot, self._job.space, self._job.layers)
            records.set_policy(ot, policy.to_dict())
            return policy
        policy = journal.with_retries(start, f"trial {ot.number}'s start")
        self._live[trial_id] = ot
        return {"number": ot.number, "attempt": records.trial(ot).retry, "policy": policy.to_dict(),
                "workdir": str(self._trial_dir(ot.number))}

    @property
    def exhausted(self) -> bool:
        """Every trial of the budget (retries included) has been handed out, or the run's deadline has passed."""
        return self._asked >= self._n or (self._deadline is not None and time.time() >= self._deadline)

    @property
    def asked(self) -> int:
        """Trials handed out so far."""
        return self._asked

    @property
    def live(self) -> int:
        """Trials handed out that have not reported."""
        return len(self._live)

    def _trial_dir(self, number: int) -> Path:
        return self._job.study_dir / "trials" / f"{number:05d}"

    def _frozen(self, number: int) -> optuna.trial.FrozenTrial:
        return next(t for t in self._study.get_trials(deepcopy=False) if t.number == number)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        ot = self._live.get(trial_id)
        if ot is None:
            return
        payload = decode(result)
        outcome = self._outcome(ot, payload, error)
        try:
            journal.write_with_retries(self._study, ot, outcome,
                                       before_tell=lambda: self._upload(ot, payload.attrs if payload else {}))
        except journal.STORAGE_ERRORS as e:
            self._keep(outcome, e)
            return
        finally:
            self._live.pop(trial_id, None)
        journal.release(self._job.study_dir, self._study.study_name, ot.number)
        if error and maybe_retry(self._study, self._frozen(ot.number), self._job.retries):
            self._n += 1
        try:
            sync_front(self._study, self._storage)
        except Exception as e:  # the study itself is intact; the table is rebuilt after the next trial
            logger.warning("could not update the front table: %s", e)
        if self._on_done:
            self._on_done(self._frozen(ot.number))

    def _outcome(self, ot: optuna.Trial, payload: TrialResult | None, error: bool) -> journal.Outcome:
        """What the trial's end writes: a failure with its reason, or the result, its values and constraints."""
        n = ot.number
        if error or payload is None:
            return journal.Outcome(n, "fail", reason="the Ray trial errored (worker died or crashed before reporting)"
                                   if error else "the trial reported no result")
        if not payload.ok:
            return journal.Outcome(n, "fail", dict(payload.attrs), reason=payload.reason or "unknown failure")
        metrics = payload.metrics
        names = list(self._job.objectives)
        missing = [k for k in names if k not in metrics]
        if missing:
            return journal.Outcome(n, "fail", reason=f"metric {missing[0]} missing from the trial's result")
        values = [float(metrics[k]) for k in names]
        bad = [k for k, v in zip(names, values) if not math.isfinite(v)]
        if bad:
            return journal.Outcome(n, "fail", reason=f"metric {bad[0]} is not finite ({metrics[bad[0]]})")
        c = self._job.constraints
        attrs = {**payload.attrs, "metrics": dict(metrics), **({"baseline": self._baseline} if self._baseline else {})}
        return journal.Outcome(n, "complete", attrs, values,
                               constraint_values(metrics, self._baseline, c.map_floor, c.budgets))

    def _keep(self, outcome: journal.Outcome, e: BaseException) -> None:
        try:
            path = journal.keep(self._job.study_dir, self._study.study_name, outcome)
        except OSError as full:
            self.lost.append(outcome.number)
            logger.error("trial %d: its result is LOST: the storage cannot be written (%s) nor the journal (%s)",
                         outcome.number, journal.cause(e), full.strerror or full)
            return
        self.kept.append(path)
        logger.error("trial %d: the storage cannot be written (%s); its result is kept in %s and written on the "
                     "next run", outcome.number, journal.cause(e), path)

    def _upload(self, ot: optuna.Trial, attrs: dict[str, Any]) -> None:
        from autoprune.engine.identity import versions
        from autoprune.model.document import document_for_trial
        from autoprune.search.storage.artifacts import write_and_upload

        trial_dir = self._trial_dir(ot.number)
        try:
            document = document_for_trial(self._study, self._study.study_name, ot.number, ot, versions()).to_dict()
            write_and_upload(ot, self._store, trial_dir, document, attrs.get("checkpoint"))
            records.set_artifact_dir(ot, str(trial_dir))
        except Exception as e:  # artifacts are a convenience: the trial's result stands without them
            logger.warning("trial %d: artifact upload failed: %s", ot.number, e)

    def __getstate__(self) -> dict[str, Any]:
        """What Ray Tune persists of the searcher (its experiment state, tuner.pkl): never the study or its storage,
        whose URL may hold a password. The study state lives in the storage; nothing here is needed to resume."""
        hidden = {"_study", "_storage", "_store", "_live", "_on_done", "_baseline", "kept", "lost"}
        return {k: v for k, v in self.__dict__.items() if k not in hidden}

    def save(self, checkpoint_path: str) -> None:  # state lives in the Optuna storage
        return None

    def restore(self, checkpoint_path: str) -> None:
        return None

    def abandon_all(self, reason: str) -> None:
        """Mark every trial still handed out as FAILED (the run ended before they reported); journal what the
        storage refuses."""
        for trial_id in list(self._live):
            ot = self._live.pop(trial_id)
            try:
                fail_trial(self._study, ot, reason)
            except journal.STORAGE_ERRORS as e:
                self._keep(journal.Outcome(ot.number, "fail", reason=reason), e)


def trainable(config: dict[str, Any], job: Job) -> None:
    """The Ray trainable: run the job's trial (or screen) for one policy and report its payload."""
    from autoprune.engine.screen import screen_safely
    from autoprune.engine.trial import run_trial_safely

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    policy = Policy.from_dict(config["policy"])
    if job.kind == "screen":
        result = screen_safely(job.settings, policy, job.layers, job.screen_batches)
    else:
        result = run_trial_safely(job.settings, policy, job.layers, Path(config["workdir"]), job.finetune)
    result.ray_node = _node_id()  # which node of the cluster ran it
    result.ray_worker = {"pid": os.getpid()}  # the driver counts the jobs each worker process ran
    tune.report(encode(result))


def _node_id() -> str:
    import ray

    try:
        return str(ray.get_runtime_context().get_node_id())
    except Exception:  # not inside Ray (a trial run in-process)
        return ""


def beat(study: optuna.Study, driver: str, stop: threading.Event, every_s: float = 30.0) -> None:
    while True:
        try:
            heartbeat(study, driver)
        except Exception as e:  # a missed heartbeat must not stop the search
            logger.debug("heartbeat failed: %s", e)
        if stop.wait(every_s):
            return


def log_trial(t: optuna.trial.FrozenTrial, job: Job) -> None:
    """One line for a finished job, named for what it was: a sensitivity ``probe`` (one block pruned alone: its mAP
    and parameters, no latency), a ``screen`` (adaptive BN) or a ``trial`` (the hand recipe's model, a measured pick
    or a fine-tuned trial)."""
    rec = records.trial(t)
    key = records.probe(t)
    block = {REFERENCE: "nothing pruned", UNIFORM: "every layer"}.get(key[0], key[0]) if key else ""
    what = (f"probe {t.number} ({block} at {key[1]:.2f})" if key else f"screen {t.number}" if job.kind == "screen"
            else f"trial {t.number}" + (f" (the hand recipe's model at {rec.recipe['target']})" if rec.recipe
                                        else "" if job.finetune else " (adaptive BN, no fine-tune)"))
    if t.state != optuna.trial.TrialState.COMPLETE:
        logger.warning("%s FAILED: %s", what, rec.fail_reason)
        return
    m, pol = rec.metrics, rec.policy or {}
    latency = "" if key else f", latency {m.get('latency_ms', float('nan')):.2f} ms"
    logger.info("%s done in %.0fs%s: mAP50-95 %.3f, mAP50 %.3f, params %s%s (%s, %s)", what, rec.wall_seconds,
                "" if feasible(t.constraints) else " (infeasible)", m.get("map50_95", float("nan")),
                m.get("map50", float("nan")), f"{int(m.get('params', 0)):,}", latency, pol.get("criterion"),
                ratio_summary(pol.get("ratios", {})))


TrialFn = Callable[..., None]
