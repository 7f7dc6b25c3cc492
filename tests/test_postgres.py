"""PostgreSQL storage, with a real server on loopback: 4 concurrent trials, nothing lost or duplicated."""

from __future__ import annotations

import subprocess
import sys

import optuna
import pytest
import sqlalchemy as sa
import yaml
from optuna.trial import TrialState

from autoprune.config.spec import parse_spec
from autoprune.search.storage.study import get_storage, open_study_for


def test_study_round_trip_on_postgres(postgres_url):
    spec = parse_spec({"name": "pg-unit", "model": "m", "data": "d", "storage": postgres_url}, "s.yaml")
    study = open_study_for(spec, get_storage(postgres_url))
    t = study.ask()
    study.tell(t, [0.5, 1e6, 3.0])
    again = optuna.load_study(study_name="pg-unit", storage=postgres_url)
    assert again.best_trials[0].values == [0.5, 1e6, 3.0]
    assert again.metric_names == ["mAP50-95", "params", "latency_ms"]


@pytest.mark.slow
def test_four_concurrent_trials_on_postgres(tmp_path, postgres_url, tiny_data, tiny_model_pt):
    spec = {
        "name": "pg4", "model": str(tiny_model_pt), "data": str(tiny_data), "imgsz": 64, "trials": 4, "seed": 2,
        "space": {"ratio": {"low": 0.1, "high": 0.5}, "criteria": ["l1", "l2"], "iterations": 1, "epochs": 1},
        "finetune": {"batch": 8}, "latency": {"warmup": 1, "runs": 5, "threads": 1},
        "resources": {"cpus": 0.5, "concurrent": 4}, "screening": {"rounds": 1},  # all 4 in one round
    }
    spec_file = tmp_path / "pg4.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    r = subprocess.run([sys.executable, "-m", "autoprune", "search", str(spec_file), "--storage", postgres_url,
                        "--studies-dir", str(tmp_path / "studies")], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    study = optuna.load_study(study_name="pg4", storage=postgres_url)
    trials = study.get_trials()
    assert len(trials) == 4
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE and len(t.values) == 3 for t in trials)
    assert len({t.user_attrs["ray_trial_id"] for t in trials}) == 4
    engine = sa.create_engine(postgres_url)
    with engine.connect() as c:
        n_values = c.execute(sa.text("SELECT COUNT(*) FROM trial_values v JOIN trials t USING (trial_id) "
                                     "JOIN studies s USING (study_id) WHERE s.study_name = 'pg4'")).scalar()
    assert n_values == 12
    starts = sorted(t.datetime_start for t in trials)
    ends = sorted(t.datetime_complete for t in trials)
    assert starts[-1] < ends[0], "the 4 trials should have overlapped in time"
