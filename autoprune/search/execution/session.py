"""One Ray Tune run for a whole search.

A search runs in phases (the sensitivity scan, rounds of screens, fine-tuned trials); each phase is a batch of
trials of one study. They are all handed to one Tune run, batch by batch, by the :class:`Dispatcher`, so the Ray
worker that has imported the trial code (torch, ultralytics: seconds) serves every phase: Tune reuses its actor
and keeps it while the driver promotes between phases. The first worker is started while the driver measures the
baseline (a warm-up Tune trial that imports the trial code and reports nothing), so the first trial does not pay
for it either.

The Tune run needs the main thread (signals reach it there); the phases run in a thread of their own
(:meth:`TuneSession.drive`), each waiting in :meth:`TuneSession.run` until its batch has ended.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import optuna
from ray import tune
from ray.tune.search import Searcher

from autoprune.config.spec import Resources
from autoprune.errors import StorageWriteError
from autoprune.model import objectives
from autoprune.search.execution.executor import (
    Job,
    StudySearcher,
    TrialFn,
    beat,
    decode,
    encode,
    log_trial,
    trainable,
)
from autoprune.search.execution.ray_setup import ray_session
from autoprune.search.storage.study import StudyStorage, masked

logger = logging.getLogger(__name__)

__all__ = ["Dispatcher", "TuneSession", "SessionClosed", "run_trials", "run_in_process", "WARM_KEY", "JOB_KEY"]

WARM_KEY = "autoprune_warm"  # the config of the warm-up trial
JOB_KEY = "autoprune_job"  # the Job a trial's config carries
INTERRUPTED = "interrupted: the search run ended before this trial reported"
T = TypeVar("T")


class SessionClosed(RuntimeError):
    """The Tune run ended (interrupted) while a phase still waited for its batch."""


@dataclass
class _Batch:
    searcher: StudySearcher
    job: Job
    done: threading.Event = field(default_factory=threading.Event)  # ended, or woken because the run ended
    finished: bool = False  # every trial of the batch has ended


class Dispatcher(Searcher):
    """The searcher of a session's Tune run: the trials of the batch at hand, nothing (``None``) between batches,
    ``FINISHED`` once closed. Tune calls it from the main thread; phases submit batches from theirs."""

    def __init__(self, warm: bool = False) -> None:
        super().__init__()
        self._lock = threading.RLock()
        self._warm_pending = warm
        self._warm_id: str | None = None
        self.warmed = threading.Event()  # the warm-up trial ended (or there is none)
        if not warm:
            self.warmed.set()
        self._batch: _Batch | None = None
        self._owner: dict[str, _Batch] = {}
        self._closed = False
        self._jobs: dict[int, int] = {}  # jobs run by each worker process (by pid) in this session

    def set_search_properties(self, metric: Any, mode: Any, config: Any, **spec: Any) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, searcher: StudySearcher, job: Job) -> _Batch:
        with self._lock:
            if self._closed:
                raise SessionClosed("the Ray Tune run has ended")
            self._batch = _Batch(searcher, job)
            return self._batch

    def close(self) -> None:
        """No more batches: the run ends once its trials have; a phase still waiting is woken."""
        with self._lock:
            self._closed = True
            self.warmed.set()
            if self._batch is not None:
                self._batch.done.set()

    def suggest(self, trial_id: str) -> dict[str, Any] | None:  # or Searcher.FINISHED
        with self._lock:
            if self._warm_pending and not self._closed:
                self._warm_pending, self._warm_id = False, trial_id
                return {WARM_KEY: True}
            b = self._batch
            if b is None:
                return Searcher.FINISHED if self._closed else None  # type: ignore[return-value]
            config = b.searcher.suggest(trial_id)
            if config is None or config == Searcher.FINISHED:
                self._end_if_done(b)
                return Searcher.FINISHED if self._closed and self._batch is None else None  # type: ignore
            self._owner[trial_id] = b
            return {**config, JOB_KEY: b.job}

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        with self._lock:
            if trial_id == self._warm_id:
                if error:
                    logger.debug("the warm-up trial errored (the first trial starts its worker)")
                elif result and "pid" in result:
                    self._jobs[int(result["pid"])] = self._jobs.get(int(result["pid"]), 0) + 1
                self.warmed.set()
                return
            b = self._owner.pop(trial_id, None)
            if b is None:
                return
            b.searcher.on_trial_complete(trial_id, self._counted(result), error)
            self._end_if_done(b)

    def _counted(self, result: dict[str, Any] | None) -> dict[str, Any] | None:
        """``result`` with its worker's ``jobs``: how many of this session's jobs (the warm-up included) that worker
        process ran, this one included; more than one means a warm worker ran it."""
        payload = decode(result)
        pid = (payload.ray_worker or {}).get("pid") if payload is not None else None
        if payload is None or pid is None or result is None:
            return result
        self._jobs[int(pid)] = self._jobs.get(int(pid), 0) + 1
        payload.ray_worker = {"pid": int(pid), "jobs": self._jobs[int(pid)]}
        return {**result, **encode(payload)}

    def _end_if_done(self, b: _Batch) -> None:
        if b.searcher.exhausted and not any(o is b for o in self._owner.values()):
            b.finished = True
            b.done.set()
            if self._batch is b:
                self._batch = None

    def abandon_all(self, reason: str) -> None:
        """Every trial still handed out is FAILED with ``reason`` (the run ended before it reported)."""
        with self._lock:
            batches = {id(b): b for b in self._owner.values()}
            self._owner.clear()
        for b in batches.values():
            b.searcher.abandon_all(reason)

    def __getstate__(self) -> dict[str, Any]:
        """What Ray Tune persists of the searcher: nothing of the studies (their storage URL may hold a password)."""
        return {"_closed": True}

    def save(self, checkpoint_path: str) -> None:  # state lives in the Optuna storages
        return None

    def restore(self, checkpoint_path: str) -> None:
        return None


def run_job(config: dict[str, Any], trial_fn: TrialFn | None = None) -> None:
    """The Ray trainable of a session: the warm-up (import the trial code once per worker) or one job's trial."""
    if config.get(WARM_KEY):
        import autoprune.engine.screen
        import autoprune.engine.trial  # noqa: F401

        tune.report({WARM_KEY: 1, "pid": os.getpid()})  # a trial that reports nothing is announced on the terminal
        return
    (trial_fn or trainable)(config, job=config[JOB_KEY])


class TuneSession:
    """One Tune run that executes batches of trials of any study (the phases of a search) until closed."""

    def __init__(self, name: str, storage_path: Path, resources: Resources, trial_fn: TrialFn | None = None,
                 warm: bool = False) -> None:
        self.name, self.storage_path, self.resources, self.trial_fn = name, storage_path, resources, trial_fn
        self.dispatcher = Dispatcher(warm=warm)

    def wait_warm(self, timeout_s: float = 120.0) -> None:
        """Until the warm-up trial has ended (so timing in the driver does not share the CPU with its imports)."""
        self.dispatcher.warmed.wait(timeout_s)

    def run(self, study: optuna.Study, store: StudyStorage, job: Job, n_trials: int,
            on_trial: Callable[[optuna.trial.FrozenTrial], None] | None = None, deadline: float | None = None) -> None:
        """Run ``n_trials`` new trials of ``study`` in this session's Tune run (none started after ``deadline``,
        a ``time.time()``); back when they have all ended."""
        def done(t: optuna.trial.FrozenTrial) -> None:
            log_trial(t, job)
            if on_trial is not None:
                on_trial(t)

        searcher = StudySearcher(study, store, job, n_trials, on_done=done, deadline=deadline)
        stop = threading.Event()
        heart = threading.Thread(target=beat, args=(study, searcher.driver, stop), daemon=True,
                                 name="autoprune-heartbeat")
        heart.start()
        try:
            batch = self.dispatcher.submit(searcher, job)
            while not batch.done.wait(0.5):
                pass
            if not batch.finished:
                raise SessionClosed("the Ray Tune run ended before the batch did")
        finally:
            stop.set()
        _ended(searcher, store, job)

    def drive(self, work: Callable[[], T]) -> T:
        """Run ``work`` (the phases, calling :meth:`run`) in a thread while the Tune run holds the main thread."""
        out: dict[str, Any] = {}

        def target() -> None:
            try:
                out["value"] = work()
            except BaseException as e:  # handed to the caller's thread
                out["error"] = e
            finally:
                self.dispatcher.close()

        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's legacy reporter honours verbose=0
        r = self.resources
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(run_job, trial_fn=self.trial_fn),
                                resources={"cpu": r.cpus, "gpu": r.gpus}),
            tune_config=tune.TuneConfig(search_alg=self.dispatcher, num_samples=-1,
                                        max_concurrent_trials=r.concurrent, reuse_actors=True),
            run_config=tune.RunConfig(name=self.name, storage_path=str(self.storage_path), verbose=0),
        )
        phases = threading.Thread(target=target, daemon=True, name=PHASES_THREAD)
        interrupted = True
        try:
            phases.start()
            tuner.fit()
            interrupted = False
        finally:
            self.dispatcher.close()
            self.dispatcher.abandon_all(INTERRUPTED)
            phases.join(timeout=10.0 if interrupted else None)
        if "error" in out:
            raise out["error"]
        value: T = out["value"]
        return value


PHASES_THREAD = "autoprune-phases"


def _ended(searcher: StudySearcher, store: StudyStorage, job: Job) -> None:
    """After a batch: raise where a result could not be written to the storage, else log the count."""
    if searcher.kept or searcher.lost:
        kept = (f"{len(searcher.kept)} trial result(s) kept in {searcher.kept[0].parent} are written on the next "
                "run" if searcher.kept else "")
        lost = f"the result(s) of trial(s) {searcher.lost} are LOST (the journal could not be written either)" \
            if searcher.lost else ""
        raise StorageWriteError(f"storage: {masked(store.url)} could not be written; "
                                f"{'; '.join(x for x in (kept, lost) if x)}")
    logger.info("%d trial(s) run; objectives: %s", searcher.asked,
                ", ".join(objectives.get(n).label for n in job.objectives))


def run_in_process(study: optuna.Study, store: StudyStorage, job: Job, n_trials: int) -> None:
    """Run ``n_trials`` trials of ``job`` one after another in this process, without Ray: the same searcher (the
    study's ask, the trial's records, its tell, its failure with a reason) and the same trial code as a Tune run.
    For a few measurements of seconds each where a Ray trial's own start would be most of their cost (the hand
    recipe's models of a run that has no time for a search)."""
    from autoprune.engine.trial import run_trial_safely
    from autoprune.model.policy import Policy

    if job.kind != "trial":
        raise ValueError("only trials run in-process")
    searcher = StudySearcher(study, store, job, n_trials, on_done=lambda t: log_trial(t, job))
    for i in range(n_trials):
        config = searcher.suggest(f"in-process-{i}")
        if not isinstance(config, dict):  # Searcher.FINISHED: the queue (or the count) is done
            break
        result = run_trial_safely(job.settings, Policy.from_dict(config["policy"]), job.layers,
                                  Path(config["workdir"]), job.finetune)
        searcher.on_trial_complete(f"in-process-{i}", encode(result))
    _ended(searcher, store, job)


def run_trials(study: optuna.Study, store: StudyStorage, job: Job, n_trials: int, ray_address: str | None = None,
               trial_fn: TrialFn | None = None,
               on_trial: Callable[[optuna.trial.FrozenTrial], None] | None = None,
               deadline: float | None = None, session: TuneSession | None = None) -> None:
    """Run ``n_trials`` new trials of ``study`` under Ray Tune: in ``session`` (a search's phases pass theirs: once
    it is closed, after an interrupt, it refuses, so a phase still running then starts no Tune run of its own), else
    in a Tune run of their own (a local Ray unless one is up or ``ray_address``).

    ``trial_fn(config, job=)`` replaces the default trial (tests); ``on_trial`` is called with each finished trial
    (after it is recorded). No trial starts after ``deadline`` (a ``time.time()``; a budgeted run).
    """
    if session is not None:  # a phase of a search: its session runs every batch
        if trial_fn is not session.trial_fn or job.resources != session.resources:
            raise RuntimeError("a search's batches share its session's trial function and resources")
        session.run(study, store, job, n_trials, on_trial, deadline)
        return
    with ray_session(ray_address):
        own = TuneSession(f"{study.study_name}-ray", job.study_dir / "ray", job.resources, trial_fn=trial_fn)
        own.drive(lambda: own.run(study, store, job, n_trials, on_trial, deadline))


def exit_if_phases_alive(code: int) -> None:
    """After an interrupt, with the CLI's message written: a phases thread still inside a long C call (timing a
    baseline) would abort the interpreter's shutdown (exit -6 instead of 130); its session is closed, so it can
    start nothing, and the process ends now with ``code``."""
    if any(t.name == PHASES_THREAD and t.is_alive() for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
