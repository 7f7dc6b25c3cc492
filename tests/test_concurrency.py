"""Issue 13, items 3 and 9: concurrent drivers sample apart; a result survives a database that is briefly (or
for the rest of the run) unwritable. Real SQLite studies throughout."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from autoprune.config.spec import parse_spec
from autoprune.model import records
from autoprune.search.study import driver_id, driver_rank, get_storage, open_study_for


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_driver_rank_counts_live_drivers_that_opened_the_study_first(tmp_path):
    spec = parse_spec({"name": "c", "model": "m.pt", "data": "d.yaml", "storage": f"sqlite:///{tmp_path}/s.db"},
                      "s.yaml")
    store = get_storage(spec.storage_url)
    study = open_study_for(spec, store)
    assert driver_rank(study) == 0  # alone
    host = socket.gethostname()
    now = 2e9
    records.set_driver_start(study, f"{host}:{_dead_pid()}", now - 5)  # earlier, but its process is gone
    records.set_driver_start(study, f"{host}:{os.getppid()}", now - 3)  # earlier and alive: counts
    records.set_driver_start(study, f"{host}:1", now + 10)  # opened after us: does not count
    records.set_driver_start(study, "elsewhere:7", now - 1000)  # another host, silent for longer than allowed: dead
    assert driver_rank(study, now=now) == 1
    assert records.driver_starts(study)[driver_id()] == now


def test_concurrent_drivers_get_different_sampler_seeds(tmp_path):
    spec = parse_spec({"name": "c", "model": "m.pt", "data": "d.yaml", "storage": f"sqlite:///{tmp_path}/s.db",
                       "sampler": "random"}, "s.yaml")
    store = get_storage(spec.storage_url)
    first = open_study_for(spec, store)
    records.set_driver_start(first, f"{socket.gethostname()}:{os.getppid()}", 0.0)  # a live driver opened it before
    second = open_study_for(spec, store)
    draw = [s.sampler._rng.rng.random() for s in (first, second)]  # the two samplers' streams
    assert draw[0] != draw[1]


@pytest.mark.slow
def test_two_searches_started_at_once_explore_different_policies(tmp_path, tiny_data, tiny_model_pt):
    spec = {"name": "both", "model": str(tiny_model_pt), "data": str(tiny_data), "imgsz": 64, "trials": 1,
            "sampler": "random", "screening": {"factor": 0}, "warm_start": {"uniform": 0, "from_fronts": False},
            "space": {"ratio": {"low": 0.1, "high": 0.5, "step": 0.05}, "iterations": 1, "epochs": 1},
            "finetune": {"batch": 8}, "latency": {"warmup": 0, "runs": 3, "rounds": 1}, "resources": {"cpus": 1}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    cmd = [sys.executable, "-m", "autoprune", "search", "s.yaml", "--trials", "1"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    study = optuna.load_study(study_name="both", storage=f"sqlite:///{tmp_path}/studies/autoprune.db")
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 2
    assert done[0].params != done[1].params  # the same seed and trial count used to give the same policy
