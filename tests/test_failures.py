"""Failed trials end FAILED with a reason and never stay RUNNING.

The searcher tests feed StudySearcher hand-made Ray Tune results (they fake Ray's
result dicts, nothing else: the Optuna study and its SQLite storage are real).
"""

from __future__ import annotations

import json
import math

import optuna
import pytest
from optuna.trial import TrialState

from autoprune.config.spec import parse_spec
from autoprune.model import Layer, Policy
from autoprune.search.execution.executor import PAYLOAD_KEY, StudySearcher
from autoprune.search.storage.study import fail_stale_trials, get_storage, open_study_for

LAYERS = [Layer("model.0", 16), Layer("model.1", 32)]
GOOD = {"map50_95": 0.5, "map50": 0.8, "params": 1e6, "macs": 1e8, "latency_ms": 9.0}


@pytest.fixture()
def study_and_spec(tmp_path):
    spec = parse_spec({"name": "t", "model": "m.pt", "data": "d.yaml", "storage": f"sqlite:///{tmp_path}/s.db"},
                      "s.yaml", studies_dir=tmp_path)
    return open_study_for(spec, get_storage(spec.storage_url)), spec


def _store(study_and_spec):
    return get_storage(study_and_spec[1].storage_url)


def _job(spec):
    from autoprune.search.run import main_job

    return main_job(spec, LAYERS)


def _payload(ok=True, metrics=None, reason=""):
    return {PAYLOAD_KEY: json.dumps({"ok": ok, "metrics": metrics if metrics is not None else GOOD,
                                     "attrs": {"seconds": {"prune": 0.1}}, "reason": reason})}


def test_searcher_records_every_outcome(study_and_spec):
    study, spec = study_and_spec
    s = StudySearcher(study, get_storage(spec.storage_url), _job(spec), n_trials=7)
    configs = {tid: s.suggest(tid) for tid in "abcdefg"}
    assert s.suggest("h") == StudySearcher.FINISHED
    assert set(configs["a"]["policy"]["ratios"]) == {"model.0", "model.1"}
    Policy.from_dict(configs["a"]["policy"])  # round-trips
    s.on_trial_complete("a", _payload())
    s.on_trial_complete("b", _payload(metrics={**GOOD, "latency_ms": math.nan}))
    s.on_trial_complete("c", _payload(ok=False, reason="TrialError: layer x was pruned to nothing"))
    s.on_trial_complete("d", None, error=True)
    s.on_trial_complete("e", _payload(metrics={"map50_95": 0.4}))
    s.on_trial_complete("f", {"other": 1})
    s.abandon_all("interrupted")  # "g" never reported
    trials = {t.number: t for t in study.get_trials()}
    states = [trials[configs[t]["number"]].state for t in "abcdefg"]
    assert states == [TrialState.COMPLETE] + [TrialState.FAIL] * 6
    a = trials[configs["a"]["number"]]
    assert a.values == [0.5, 1e6, 9.0] and a.user_attrs["metrics"]["map50"] == 0.8
    reasons = [trials[configs[t]["number"]].user_attrs.get("fail_reason", "") for t in "bcdefg"]
    assert "latency_ms is not finite" in reasons[0]
    assert reasons[1] == "TrialError: layer x was pruned to nothing"
    assert "Ray trial errored" in reasons[2]
    assert "metric params missing" in reasons[3]
    assert "reported no result" in reasons[4]
    assert reasons[5] == "interrupted"
    assert not study.get_trials(states=(TrialState.RUNNING,))


def test_stale_running_trials_of_dead_driver_fail(study_and_spec):
    study, _ = study_and_spec
    dead = study.ask()
    dead.set_user_attr("driver", f"{__import__('socket').gethostname()}:999999")
    alive = study.ask()
    alive.set_user_attr("driver", f"{__import__('socket').gethostname()}:{__import__('os').getpid()}")
    assert fail_stale_trials(study, _store(study_and_spec)) == [dead.number]
    t = study.get_trials()[dead.number]
    assert t.state == TrialState.FAIL and "no longer running" in t.user_attrs["fail_reason"]
    assert study.get_trials()[alive.number].state == TrialState.RUNNING


def test_existing_study_with_other_objectives_is_refused(tmp_path):
    from autoprune.errors import SpecError

    url = f"sqlite:///{tmp_path}/s.db"
    a = parse_spec({"name": "t", "model": "m", "data": "d", "storage": url}, "s.yaml")
    open_study_for(a, get_storage(url))
    b = parse_spec({"name": "t", "model": "m", "data": "d", "storage": url, "objectives": ["map50", "macs"]}, "s.yaml")
    with pytest.raises(SpecError, match="name: study 't' exists with objectives"):
        open_study_for(b, get_storage(url))


def test_metric_names_are_set(study_and_spec):
    study, _ = study_and_spec
    assert optuna.load_study(study_name="t", storage=_store(study_and_spec).rdb).metric_names == ["mAP50-95", "params",
                                                                                       "latency_ms"]


def test_real_trial_failure_is_a_result_not_an_exception(tmp_path, tiny_data):
    from autoprune.engine.trial import run_trial_safely

    spec = parse_spec({"name": "t", "model": str(tmp_path / "gone.pt"), "data": str(tiny_data), "imgsz": 64},
                      "s.yaml")
    policy = Policy(ratios=(("model.0", 0.5),), criterion="l1", iterations=1, lr=0.01, ema=True, epochs=1)
    result = run_trial_safely(spec.trial_settings, policy, LAYERS, tmp_path / "w")
    assert not result.ok and "gone.pt" in result.reason and "\n" not in result.reason
    assert result.attrs["policy"]["criterion"] == "l1"


def _fake_trial(config, job):
    """Fakes the trial body only (no pruning); Ray Tune, the worker processes and the study are real."""
    import os

    from ray import tune

    number, attempt = config["number"], config["attempt"]
    good = {"ok": True, "metrics": GOOD, "attrs": {}, "reason": ""}
    if number in (1, 5) and attempt == 0:
        os._exit(3)  # the worker process dies
    if number == 2:
        raise RuntimeError("boom outside the trial guard")
    if number == 3:
        good = {**good, "metrics": {**GOOD, "map50_95": float("nan")}}
    if number == 4:
        good = {**good, "metrics": {"params": 1.0}}
    tune.report({PAYLOAD_KEY: json.dumps(good)})


@pytest.mark.slow
def test_real_ray_worker_death_raise_nan_missing_each_fail_and_study_goes_on(study_and_spec):
    import sys

    import ray.cloudpickle

    from autoprune.search.execution.session import run_trials

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    study, spec = study_and_spec
    spec = spec.replace(resources=spec.resources.__class__(cpus=1, gpus=0, concurrent=1))
    run_trials(study, _store(study_and_spec), _job(spec), n_trials=5, trial_fn=_fake_trial)
    by_number = {t.number: t for t in study.get_trials()}
    assert [by_number[n].state for n in range(5)] == [TrialState.COMPLETE] + [TrialState.FAIL] * 4
    reasons = [by_number[n].user_attrs["fail_reason"] for n in range(1, 5)]
    assert "Ray trial errored" in reasons[0] and "Ray trial errored" in reasons[1]
    assert "not finite" in reasons[2] and "missing" in reasons[3]

    # with retries: the trial whose worker died (#5) is re-run once with the same policy (#6), then #7 runs
    run_trials(study, _store(study_and_spec), _job(spec.replace(retries=1)), n_trials=2, trial_fn=_fake_trial)
    by_number = {t.number: t for t in study.get_trials()}
    assert len(by_number) == 8
    assert by_number[5].state == TrialState.FAIL
    assert by_number[6].user_attrs["retry_of"] == 5 and by_number[6].params == by_number[5].params
    assert by_number[6].state == by_number[7].state == TrialState.COMPLETE
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))


def test_out_of_memory_becomes_a_failed_trial(tmp_path, monkeypatch, tiny_data):
    """Fakes the OOM itself (run_trial raises torch.OutOfMemoryError); the guard is real."""
    import torch

    from autoprune.engine import trial as trial_mod

    def oom(*_a, **_k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    monkeypatch.setattr(trial_mod, "run_trial", oom)
    spec = parse_spec({"name": "t", "model": "m.pt", "data": str(tiny_data)}, "s.yaml")
    policy = Policy(ratios=(("model.0", 0.5),), criterion="l1", iterations=1, lr=0.01, ema=True, epochs=1)
    result = trial_mod.run_trial_safely(spec.trial_settings, policy, LAYERS, tmp_path)
    assert not result.ok and result.reason == "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"


def test_stale_trials_of_other_hosts_follow_their_heartbeat(study_and_spec):
    import time

    from autoprune.model.records import HEARTBEAT_PREFIX
    from autoprune.search.storage.study import STALE_AFTER_S

    study, _ = study_and_spec
    gone, alive = study.ask(), study.ask()
    gone.set_user_attr("driver", "elsewhere-a:1")
    alive.set_user_attr("driver", "elsewhere-b:1")
    study.set_user_attr(f"{HEARTBEAT_PREFIX}elsewhere-a:1", time.time() - STALE_AFTER_S - 5)
    study.set_user_attr(f"{HEARTBEAT_PREFIX}elsewhere-b:1", time.time())
    assert fail_stale_trials(study, _store(study_and_spec)) == [gone.number]
    assert study.get_trials()[alive.number].state == TrialState.RUNNING
