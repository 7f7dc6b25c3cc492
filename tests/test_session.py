"""One Ray Tune run per search: batches of several studies share a warm worker; an interrupted phase ends cleanly.

Real Ray Tune, real Optuna studies in SQLite; the trial function is a fake that reports fixed metrics together
with the worker's pid and how many jobs that worker had started (the warm-up included).
"""

from __future__ import annotations

import json
import os
import sys

import optuna
import pytest
from optuna.trial import TrialState

from autoprune.config.spec import Resources, parse_spec
from autoprune.model import Layer
from autoprune.search.execution.executor import PAYLOAD_KEY, StudySearcher
from autoprune.search.execution.session import JOB_KEY, WARM_KEY, Dispatcher, SessionClosed, TuneSession
from autoprune.search.storage.study import get_storage, open_study_for

LAYERS = [Layer("model.0", 16), Layer("model.1", 32)]
GOOD = {"map50_95": 0.5, "map50": 0.8, "params": 1e6, "macs": 1e8, "latency_ms": 9.0}


def _spec(tmp_path, name):
    return parse_spec({"name": name, "model": "m.pt", "data": "d.yaml", "storage": f"sqlite:///{tmp_path}/s.db",
                       "resources": {"cpus": 1, "concurrent": 1}}, "s.yaml", studies_dir=tmp_path)


def _study_job(tmp_path, name):
    from autoprune.search.run import main_job

    spec = _spec(tmp_path, name)
    store = get_storage(spec.storage_url)
    return open_study_for(spec, store), store, main_job(spec, LAYERS)


def _fake_trial(config, job):
    from ray import tune

    attrs = {"ray_worker": {"pid": os.getpid()}, "kind": job.kind}  # the driver's session counts the jobs
    tune.report({PAYLOAD_KEY: json.dumps({"ok": True, "metrics": GOOD, "attrs": attrs, "reason": ""})})


@pytest.fixture()
def local_ray():
    import ray
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_batches_of_two_studies_run_in_one_warm_worker(tmp_path, local_ray):
    a, store, job_a = _study_job(tmp_path, "a")
    b, _, job_b = _study_job(tmp_path, "b")
    session = TuneSession("s-ray", tmp_path / "ray", job_a.resources, trial_fn=_fake_trial, warm=True)
    order = []

    def phases():
        session.wait_warm()
        order.append("warm")
        session.run(a, store, job_a, 2)
        session.run(b, store, job_b, 1)  # between the batches the driver works; the worker waits
        session.run(a, store, job_a, 1)
        return "done"

    assert session.drive(phases) == "done"
    assert order == ["warm"]
    done_a = a.get_trials(states=(TrialState.COMPLETE,))
    done_b = b.get_trials(states=(TrialState.COMPLETE,))
    assert len(done_a) == 3 and len(done_b) == 1 and len(a.trials) == 3 and len(b.trials) == 1
    workers = [t.user_attrs["ray_worker"] for t in sorted(done_a + done_b, key=lambda t: t.datetime_start)]
    assert len({w["pid"] for w in workers}) == 1  # one worker process for every batch
    assert [w["jobs"] for w in workers] == [2, 3, 4, 5]  # job 1 was the warm-up: the first trial found it warm


@pytest.mark.slow
def test_a_phase_that_fails_ends_the_run_and_leaves_nothing_running(tmp_path, local_ray):
    a, store, job_a = _study_job(tmp_path, "a")
    session = TuneSession("s-ray", tmp_path / "ray", job_a.resources, trial_fn=_fake_trial)

    def phases():
        session.run(a, store, job_a, 1)
        raise ValueError("promotion broke")

    with pytest.raises(ValueError, match="promotion broke"):
        session.drive(phases)
    assert [t.state for t in a.trials] == [TrialState.COMPLETE]
    with pytest.raises(SessionClosed):  # the run is over: no more batches
        session.run(a, store, job_a, 1)


def test_dispatcher_hands_out_the_warm_up_then_the_batch_and_waits_between_batches(tmp_path):
    a, store, job_a = _study_job(tmp_path, "a")
    d = Dispatcher(warm=True)
    assert d.suggest("w") == {WARM_KEY: True}
    assert d.suggest("x") is None  # no batch yet: Tune waits
    d.on_trial_complete("w", {WARM_KEY: 1})
    assert d.warmed.is_set()
    batch = d.submit(StudySearcher(a, store, job_a, 1), job_a)
    config = d.suggest("t1")
    assert config[JOB_KEY] is job_a and config["number"] == 0
    assert d.suggest("t2") is None and not batch.done.is_set()  # budget handed out, trial still running
    d.on_trial_complete("t1", {PAYLOAD_KEY: json.dumps({"ok": True, "metrics": GOOD, "attrs": {}, "reason": ""})})
    assert batch.done.is_set() and batch.finished
    assert d.suggest("t3") is None  # between batches
    d.close()
    assert d.suggest("t4") == "FINISHED"
    assert d.__getstate__() == {"_closed": True}  # Tune persists nothing of the studies


def test_closing_the_run_fails_what_is_in_flight_and_wakes_the_phase(tmp_path):
    a, store, job_a = _study_job(tmp_path, "a")
    d = Dispatcher()
    batch = d.submit(StudySearcher(a, store, job_a, 2), job_a)
    d.suggest("t1")
    d.close()
    d.abandon_all("interrupted: test")
    assert batch.done.is_set() and not batch.finished  # the phase wakes and sees its batch did not finish
    assert [t.state for t in a.trials] == [TrialState.FAIL]
    assert a.trials[0].user_attrs["fail_reason"] == "interrupted: test"
    with pytest.raises(SessionClosed):
        d.submit(StudySearcher(a, store, job_a, 1), job_a)


def test_a_batch_must_share_the_sessions_resources(tmp_path, monkeypatch):
    import dataclasses

    from autoprune.search.execution import session as session_mod

    a, store, job_a = _study_job(tmp_path, "a")
    active = TuneSession("s-ray", tmp_path / "ray", Resources(cpus=2))
    with pytest.raises(RuntimeError, match="resources"):  # as a phase of the search passes its session
        session_mod.run_trials(a, store, dataclasses.replace(job_a, resources=Resources(cpus=1)), 1, session=active)
    assert isinstance(a, optuna.Study) and not a.trials


def test_a_phase_left_running_after_its_session_closed_starts_no_trial(tmp_path, monkeypatch):
    """Ctrl-C while the phases thread times the baseline: the Tune run ends and closes its dispatcher; when the
    phase then asks for trials it finds its closed session (not a fresh Tune run of its own) and starts none."""
    from autoprune.search.execution import session as session_mod

    a, store, job_a = _study_job(tmp_path, "a")
    closed = TuneSession("s-ray", tmp_path / "ray", job_a.resources)
    closed.dispatcher.close()
    with pytest.raises(SessionClosed):
        session_mod.run_trials(a, store, job_a, 2, session=closed)
    assert not a.trials


def test_a_queued_only_batch_runs_the_queue_and_never_a_sampled_trial(tmp_path, monkeypatch):
    """Two drivers on one scan: each runs only queued probes. An empty queue ends the batch; a driver whose ask
    lost the last queued trial to the other driver (between its check and its ask) fails the sampled trial it got
    and ends, instead of screening a random policy."""
    import dataclasses

    a, store, job = _study_job(tmp_path, "a")
    job = dataclasses.replace(job, queued_only=True)
    params = {f"ratio/{lay.name}": 0.1 for lay in LAYERS}
    a.enqueue_trial(params, user_attrs={"probe": {"block": "x", "ratio": 0.1}})
    mine = StudySearcher(a, store, job, 5)
    assert mine.suggest("t1") is not None and not mine.exhausted
    assert mine.suggest("t2") == "FINISHED" and mine.exhausted  # nothing queued now
    assert len(a.trials) == 1

    a.enqueue_trial(params)
    other = StudySearcher(a, store, job, 5)
    real_ask = a.ask

    def raced():  # the other driver pops the queued trial first
        real_ask()
        return real_ask()

    monkeypatch.setattr(a, "ask", raced)
    assert other.suggest("t3") == "FINISHED" and other.exhausted
    states = [t.state for t in optuna.load_study(study_name="a", storage=store.rdb).trials]
    assert states[-1] == TrialState.FAIL and len(states) == 3
    assert "another driver took it" in a.trials[-1].user_attrs["fail_reason"]


def test_the_log_names_probes_screens_and_trials_for_what_they_are(tmp_path, caplog):
    """Issue 39: every job was logged as `trial N done ... latency` (a probe's latency means nothing)."""
    import dataclasses
    import logging

    from autoprune.model import records
    from autoprune.search.execution.executor import log_trial

    _, _, job = _study_job(tmp_path, "a")
    m = {"map50_95": 0.7, "map50": 0.9, "params": 1000.0, "latency_ms": 3.0}

    def made(**attrs):
        return optuna.trial.create_trial(values=[0.7, 1000.0, 3.0], user_attrs={"metrics": m, **attrs})
    with caplog.at_level(logging.INFO):
        log_trial(made(**records.probe_attrs("model.4", 0.35)), dataclasses.replace(job, kind="screen"))
        log_trial(made(), dataclasses.replace(job, kind="screen"))
        log_trial(made(**records.recipe_attrs("params-50", 0.33)), dataclasses.replace(job, finetune=False))
        log_trial(made(), dataclasses.replace(job, finetune=False))
        log_trial(made(), job)
    lines = [r.getMessage() for r in caplog.records if r.name == "autoprune.search.execution.executor"]
    assert lines[0].startswith("probe -1 (model.4 at 0.35) done") and "latency" not in lines[0]
    assert lines[1].startswith("screen -1 done") and "latency 3.00 ms" in lines[1]
    assert lines[2].startswith("trial -1 (the hand recipe's model at params-50) done")
    assert lines[3].startswith("trial -1 (adaptive BN, no fine-tune) done") and lines[4].startswith("trial -1 done")
