"""``autoprune search``: validate inputs, open the study, measure the baseline once, run trials."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from autoprune.errors import InputError
from autoprune.policy import Layer
from autoprune.spec import SearchSpec
from autoprune.study import (BASELINE_KEY, SETTINGS_KEY, fail_stale_trials, get_storage, open_study, store_layers,
                             stored_layers)

logger = logging.getLogger(__name__)

__all__ = ["PreparedInputs", "prepare_inputs", "run_search", "SearchOutcome"]


@dataclass(frozen=True)
class PreparedInputs:
    spec: SearchSpec  # model and data resolved to absolute paths
    nc: int


def _resolve_data(data: str) -> Path:
    if data == "demo":
        from autoprune.demo.synthetic import ensure_dataset

        return ensure_dataset()
    p = Path(data).expanduser()
    if not p.is_file():
        raise InputError(f"data: {data}: data set YAML not found")
    return p.resolve()


def _resolve_model(model: str) -> str:
    if model == "demo":
        from autoprune.demo.baseline import resolve_demo_model

        return str(resolve_demo_model())
    p = Path(model).expanduser()
    if p.is_file():
        return str(p.resolve())
    if model.endswith((".yaml", ".yml")) and "/" not in model:  # an ultralytics model config such as yolov8n.yaml
        return model
    raise InputError(f"model: {model}: file not found")


def prepare_inputs(spec: SearchSpec) -> PreparedInputs:
    """Check the model and data set without writing to the study (data/demo files may be generated)."""
    from autoprune.adapters import ultra

    data = _resolve_data(spec.data)
    info = ultra.read_dataset(str(data))
    ultra.check_dataset_files(spec.data, info)
    nc = int(info["nc"])
    model_path = _resolve_model(spec.model)
    if not model_path.endswith((".yaml", ".yml")):
        model = ultra.load_model(model_path)
        if ultra.model_nc(model) != nc:
            raise InputError(f"model: {spec.model} predicts {ultra.model_nc(model)} classes but data {spec.data} "
                             f"has {nc}")
    else:
        try:
            ultra.load_model(model_path, nc=nc)
        except Exception as e:
            raise InputError(f"model: {model_path}: not a buildable ultralytics model config ({type(e).__name__})")
    return PreparedInputs(spec=spec.replace(model=model_path, data=str(data)), nc=nc)


def _materialise_yaml_model(spec: SearchSpec, nc: int) -> SearchSpec:
    """A model YAML is built once with a fixed seed and saved, so every trial prunes the same weights."""
    if not spec.model.endswith((".yaml", ".yml")):
        return spec
    import torch

    from autoprune.adapters import ultra

    path = spec.study_dir / "base.pt"
    if not path.exists():
        torch.manual_seed(spec.seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        ultra.save_checkpoint(ultra.load_model(spec.model, nc=nc), path)
    return spec.replace(model=str(path))


@dataclass(frozen=True)
class SearchOutcome:
    study: optuna.Study
    spec: SearchSpec
    new_trials: int


def _ensure_baseline(study: optuna.Study, spec: SearchSpec) -> list[Layer]:
    from autoprune.adapters import tp, ultra
    from autoprune.trial import TRACE_IMGSZ, measure_model

    if SETTINGS_KEY not in study.user_attrs:  # what an exported policy needs to repeat a trial's fine-tuning
        study.set_user_attr(SETTINGS_KEY, {"seed": spec.seed, "finetune": asdict(spec.finetune)})
    layers = stored_layers(study)
    if layers is not None and BASELINE_KEY in study.user_attrs:
        return layers
    model = ultra.load_model(spec.model).to(spec.device)
    layers = [Layer(p.name, p.channels, ultra.layer_stage(model, p.name))
              for p in tp.prunable_layers(model, TRACE_IMGSZ)]
    logger.info("measuring the unpruned baseline (%d prunable layers)", len(layers))
    m = measure_model(model, spec, spec.data)
    from autoprune.policy_file import architecture, fingerprint

    metrics = m.metrics()
    if "latency_ratio" in metrics:
        metrics["latency_ratio"] = 1.0  # by definition; the measured self-ratio stays in "latency"
    baseline = {**metrics, "latency": m.latency, "model": spec.model, "data": spec.data, "imgsz": spec.imgsz}
    store_layers(study, layers)
    study.set_user_attr("model_fingerprint", fingerprint(model))
    study.set_user_attr("architecture", architecture(model))
    study.set_user_attr(BASELINE_KEY, baseline)
    logger.info("baseline: mAP50-95 %.3f, mAP50 %.3f, params %s, MACs %s, latency %.2f ms",
                m.map50_95, m.map50, f"{m.params:,}", f"{m.macs:,}", m.latency_ms)
    return layers


def _trial_seconds(study: optuna.Study, numbers: set[int]) -> float:
    """Sum of the trials' own wall time (measured inside the trial), for the orchestration overhead."""
    return float(sum(t.user_attrs.get("wall_seconds", 0.0) for t in study.get_trials(deepcopy=False)
                     if t.number in numbers))


def run_search(spec: SearchSpec, max_new_trials: int | None = None, ray_address: str | None = None) -> SearchOutcome:
    """Run (or continue) the spec's study.

    Without ``max_new_trials`` the study is filled up to ``spec.trials`` completed trials;
    with it, exactly that many new trials are started.
    """
    prepared = prepare_inputs(spec)
    spec = prepared.spec
    storage = get_storage(spec.storage_url)
    study = open_study(spec, storage)
    spec = _materialise_yaml_model(spec, prepared.nc)
    fail_stale_trials(study, spec.retries)
    layers = _ensure_baseline(study, spec)
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    n_new = max_new_trials if max_new_trials is not None else max(0, spec.trials - done)
    if n_new == 0:
        logger.info("study %s already has %d completed trials (budget %d): nothing to run", spec.name, done,
                    spec.trials)
        return SearchOutcome(study=study, spec=spec, new_trials=0)
    import ray

    from autoprune.executor import run_trials
    from autoprune.warmstart import warm_start

    t0 = time.perf_counter()
    started = False
    if not ray.is_initialized():  # one Ray session for the screen and the main trials
        from autoprune.executor import init_ray

        init_ray(ray_address)
        started = True
    run = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "ray_init_s": time.perf_counter() - t0,
           "screen_run_s": 0.0, "screen_trial_s": 0.0}
    before = {t.number for t in study.get_trials(deepcopy=False)}
    try:
        fingerprint = study.user_attrs.get("model_fingerprint")
        if spec.screening.factor:
            from autoprune.screening import screen_and_promote

            t0 = time.perf_counter()
            screen, screened = screen_and_promote(study, spec, layers, n_new, fingerprint, ray_address)
            run["screen_run_s"] = time.perf_counter() - t0
            run["screen_trial_s"] = _trial_seconds(screen, screened)
        else:
            waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
            warm_start(study, spec, layers, fingerprint, limit=max(0, n_new - waiting))
        logger.info("study %s: running %d new trial(s) (%d completed so far) with Ray Tune", spec.name, n_new, done)
        t0 = time.perf_counter()
        run_trials(study, spec, layers, spec.data, n_new, ray_address=ray_address)
        run["run_s"] = time.perf_counter() - t0
        new = {t.number for t in study.get_trials(deepcopy=False)} - before
        run["trials"] = len(new)
        run["trial_s"] = _trial_seconds(study, new)
        work = run["trial_s"] + run["screen_trial_s"]
        run["overhead_share"] = (run["run_s"] + run["screen_run_s"] - work) / work if work else None
        study.set_user_attr("runs", [*study.user_attrs.get("runs", []), run][-20:])
        if spec.screening.factor:
            from autoprune.screening import record_screening

            record_screening(study, spec)
    finally:
        if started:
            ray.shutdown()
    return SearchOutcome(study=study, spec=spec, new_trials=n_new)
