"""Ray Tune executes the trials; an Optuna study (ask/tell) decides what they are.

:class:`StudySearcher` is a Ray Tune ``Searcher`` that asks the Optuna study for each
new trial and tells it the outcome.  Everything written to the study goes through
the driver; Ray workers only run trials and report one JSON payload each, so a
missing metric, a NaN or a dead worker becomes a FAILED trial with its reason and
never a RUNNING zombie.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune.search import Searcher

from autoprune import objectives
from autoprune.front import sync_front
from autoprune.policy import Layer, Policy, ratio_summary, sample_policy
from autoprune.spec import SearchSpec
from autoprune.study import FAIL_REASON, driver_id, heartbeat, maybe_retry, record_failure

logger = logging.getLogger(__name__)

__all__ = ["StudySearcher", "run_trials", "init_ray", "screen_trial", "PAYLOAD_KEY"]

PAYLOAD_KEY = "autoprune"


class StudySearcher(Searcher):
    """Hands out up to ``n_trials`` Optuna trials to Ray Tune and records their results."""

    def __init__(self, study: optuna.Study, spec: SearchSpec, layers: Sequence[Layer], n_trials: int,
                 on_done: Callable[[optuna.trial.FrozenTrial], None] | None = None,
                 baseline: dict[str, float] | None = None):
        super().__init__()
        self._baseline = dict(baseline or {})
        from autoprune.artifacts import artifact_dir_of, artifact_store

        self._store = artifact_store(artifact_dir_of(spec.studies_dir))
        self._study, self._spec, self._layers = study, spec, list(layers)
        self._n, self._asked = n_trials, 0  # _n grows by one for each retry granted
        self._live: dict[str, optuna.Trial] = {}
        self._on_done = on_done
        self.driver = driver_id()

    def set_search_properties(self, metric, mode, config, **spec) -> bool:  # noqa: ANN001 - Ray's signature
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self._asked >= self._n:
            return Searcher.FINISHED
        self._asked += 1
        ot = self._study.ask()
        ot.set_user_attr("driver", self.driver)
        ot.set_user_attr("ray_trial_id", trial_id)
        policy = sample_policy(ot, self._spec.space, self._layers)
        ot.set_user_attr("policy", policy.to_dict())
        self._live[trial_id] = ot
        workdir = self._spec.study_dir / "trials" / f"{ot.number:05d}"
        return {"number": ot.number, "attempt": int(ot.user_attrs.get("retry", 0)), "policy": policy.to_dict(),
                "workdir": str(workdir)}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ot = self._live.pop(trial_id, None)
        if ot is None:
            return
        payload = None
        if result and PAYLOAD_KEY in result:
            try:
                payload = json.loads(result[PAYLOAD_KEY])
            except (TypeError, ValueError):
                payload = None
        if error or payload is None:
            reason = "the Ray trial errored (worker died or crashed before reporting)" if error \
                else "the trial reported no result"
            self._fail(ot, reason)
            if error and maybe_retry(self._study, self._study._storage.get_trial(ot._trial_id), self._spec.retries):
                self._n += 1
        elif not payload.get("ok"):
            for k, v in payload.get("attrs", {}).items():
                ot.set_user_attr(k, v)
            self._fail(ot, payload.get("reason") or "unknown failure")
        else:
            self._complete(ot, payload)
        try:
            sync_front(self._study)
        except Exception as e:  # the study itself is intact; the table is rebuilt after the next trial
            logger.warning("could not update the front table: %s", e)
        if self._on_done:
            self._on_done(self._study._storage.get_trial(ot._trial_id))

    def _complete(self, ot: optuna.Trial, payload: dict[str, Any]) -> None:
        metrics = payload.get("metrics", {})
        names = list(self._spec.objectives)
        missing = [n for n in names if n not in metrics]
        if missing:
            return self._fail(ot, f"metric {missing[0]} missing from the trial's result")
        values = [float(metrics[n]) for n in names]
        bad = [n for n, v in zip(names, values) if not math.isfinite(v)]
        if bad:
            return self._fail(ot, f"metric {bad[0]} is not finite ({metrics[bad[0]]})")
        attrs = payload.get("attrs", {})
        for k, v in attrs.items():
            ot.set_user_attr(k, v)
        ot.set_user_attr("metrics", metrics)
        if self._baseline:
            ot.set_user_attr("baseline", self._baseline)
        self._upload(ot, metrics, attrs)
        self._study.tell(ot, values)

    def _upload(self, ot: optuna.Trial, metrics: dict[str, float], attrs: dict[str, Any]) -> None:
        from autoprune.artifacts import write_and_upload

        trial_dir = self._spec.study_dir / "trials" / f"{ot.number:05d}"
        try:
            from autoprune.policy_file import document_for_trial

            document = document_for_trial(self._study.user_attrs, self._spec.name, ot.number, attrs,
                                          metrics).to_dict()
            write_and_upload(ot, self._store, trial_dir, document, attrs.get("checkpoint"))
            ot.set_user_attr("artifact_dir", str(trial_dir))
        except Exception as e:  # artifacts are a convenience: the trial's result stands without them
            logger.warning("trial %d: artifact upload failed: %s", ot.number, e)

    def _fail(self, ot: optuna.Trial, reason: str) -> None:
        ot.set_user_attr(FAIL_REASON, reason)
        self._study.tell(ot, state=optuna.trial.TrialState.FAIL)

    def save(self, checkpoint_path: str) -> None:  # state lives in the Optuna storage
        return None

    def restore(self, checkpoint_path: str) -> None:
        return None

    def abandon_all(self, reason: str) -> None:
        """Mark every trial still handed out as FAILED (the run ended before they reported)."""
        for trial_id in list(self._live):
            ot = self._live.pop(trial_id)
            record_failure(self._study, ot._trial_id, reason)


def _tune_trial(config: dict[str, Any], spec: SearchSpec, layers: list[Layer], data: str) -> None:
    from autoprune.trial import run_trial_safely

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = run_trial_safely(spec, Policy.from_dict(config["policy"]), layers, data, Path(config["workdir"]))
    tune.report({PAYLOAD_KEY: json.dumps({"ok": result.ok, "metrics": result.metrics, "attrs": result.attrs,
                                          "reason": result.reason}, default=str)})


def _beat(study: optuna.Study, driver: str, stop: threading.Event, every_s: float = 30.0) -> None:
    while True:
        try:
            heartbeat(study, driver)
        except Exception as e:  # a missed heartbeat must not stop the search
            logger.debug("heartbeat failed: %s", e)
        if stop.wait(every_s):
            return


def _log_trial(t: optuna.trial.FrozenTrial) -> None:
    if t.state == optuna.trial.TrialState.COMPLETE:
        m = t.user_attrs.get("metrics", {})
        pol = t.user_attrs.get("policy", {})
        logger.info("trial %d done in %.0fs: mAP50-95 %.3f, mAP50 %.3f, params %s, latency %.2f ms (%s, %s)",
                    t.number, t.user_attrs.get("wall_seconds", float("nan")), m.get("map50_95", float("nan")),
                    m.get("map50", float("nan")), f"{int(m.get('params', 0)):,}", m.get("latency_ms", float("nan")),
                    pol.get("criterion"), ratio_summary(pol.get("ratios", {})))
    else:
        logger.warning("trial %d FAILED: %s", t.number, t.user_attrs.get(FAIL_REASON))


TrialFn = Callable[..., None]


def init_ray(address: str | None) -> None:
    """Start a local Ray (or join ``address``), quietly, passing autoprune's home to the workers."""
    import ray

    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
             configure_logging=False,
             runtime_env={"env_vars": {k: os.environ[k] for k in ("AUTOPRUNE_HOME",) if k in os.environ}})


def screen_trial(config: dict[str, Any], spec: SearchSpec, layers: list[Layer], data: str) -> None:
    """The Ray trainable of a screening trial (adaptive-BN screen, no fine-tuning)."""
    from autoprune.screening import screen_trial_payload

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    payload = screen_trial_payload(spec, Policy.from_dict(config["policy"]), layers, data)
    tune.report({PAYLOAD_KEY: json.dumps(payload, default=str)})


def run_trials(study: optuna.Study, spec: SearchSpec, layers: Sequence[Layer], data: str, n_trials: int,
               ray_address: str | None = None, trial_fn: TrialFn | None = None) -> None:
    """Run ``n_trials`` new trials of ``study`` under Ray Tune (a local Ray unless ``ray_address``).

    ``trial_fn(config, spec=, layers=, data=)`` is the Ray trainable; the default runs a real trial.
    """
    import ray

    started = False
    if not ray.is_initialized():
        init_ray(ray_address)
        started = True
    baseline = {k: v for k, v in study.user_attrs.get("baseline", {}).items() if isinstance(v, (int, float))}
    searcher = StudySearcher(study, spec, layers, n_trials, on_done=_log_trial, baseline=baseline)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's legacy reporter honours verbose=0
    trainable = tune.with_resources(
        tune.with_parameters(trial_fn or _tune_trial, spec=spec, layers=list(layers), data=data),
        resources={"cpu": spec.resources.cpus, "gpu": spec.resources.gpus},
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=n_trials * (1 + spec.retries),
                                    max_concurrent_trials=spec.resources.concurrent, reuse_actors=True),
        run_config=tune.RunConfig(name=f"{spec.name}-ray", storage_path=str(spec.study_dir / "ray"), verbose=0),
    )
    stop = threading.Event()
    beat = threading.Thread(target=_beat, args=(study, searcher.driver, stop), daemon=True, name="autoprune-heartbeat")
    beat.start()
    try:
        tuner.fit()
    finally:
        stop.set()
        searcher.abandon_all("the search run ended before this trial reported (interrupted)")
        if started:
            ray.shutdown()
    logger.info("%d trial(s) run; objectives: %s", n_trials, ", ".join(objectives.get(n).label for n in spec.objectives))
