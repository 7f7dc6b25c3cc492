"""A real 2-trial study (Ray Tune + Optuna + SQLite) on tiny data, continued by a second run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
import yaml
from optuna.trial import TrialState

from autoprune.model import knobs
from autoprune.model.document import load_policy_file
from autoprune.model.sampling import screen_visible
from autoprune.model.space import Layer, block_of


def _run(args, cwd):
    r = subprocess.run([sys.executable, "-m", "autoprune", *args], capture_output=True, text=True, cwd=cwd,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


@pytest.mark.slow
def test_two_trial_study_writes_sqlite_and_continues(tmp_path, tiny_data, tiny_model_pt):
    spec = {
        "name": "tiny", "model": str(tiny_model_pt), "data": str(tiny_data), "imgsz": 64, "trials": 2, "seed": 1,
        "space": {"ratio": {"low": 0.1, "high": 0.5}, "criteria": ["l1", "random"], "iterations": 1,
                  "epochs": 1},
        "finetune": {"batch": 8}, "latency": {"warmup": 1, "runs": 5}, "resources": {"cpus": 1},
        "sensitivity": {"probes": 0},  # the scan has its own test below
    }
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    db = tmp_path / "studies" / "autoprune.db"
    url = f"sqlite:///{db}"

    first = _run(["search", str(spec_file)], tmp_path)
    assert "Pareto front" in first.stdout and "base" in first.stdout
    engine = sa.create_engine(url)
    with engine.connect() as c:
        per_trial = c.execute(sa.text(
            "SELECT t.number, COUNT(v.trial_value_id) FROM trials t JOIN trial_values v USING (trial_id) "
            "JOIN studies s USING (study_id) WHERE s.study_name = 'tiny' GROUP BY t.number ORDER BY t.number")).all()
    assert per_trial == [(0, 3), (1, 3)]

    study = optuna.load_study(study_name="tiny", storage=url)
    assert study.metric_names == ["mAP50-95", "params", "latency_ms"]
    base = study.user_attrs["baseline"]
    assert base["params"] > 3_000_000 and "latency" in base
    assert study.trials[0].user_attrs["baseline"]["params"] == base["params"]
    for t in study.trials:
        assert t.state == TrialState.COMPLETE
        assert set(t.user_attrs["policy"]) == {"ratios", *knobs.names()}  # one key per knob of the knob table
        assert len(t.user_attrs["policy"]["ratios"]) == len(study.user_attrs["layers"])
        assert t.values[1] < base["params"]  # pruned
        assert {"prune", "finetune", "validate", "latency"} <= set(t.user_attrs["seconds"])
        lat = t.user_attrs["latency"]  # 5 runs a timing; a spread ratio is timed again (at most twice) and pooled
        assert lat["runs"] == 5 * lat["attempts"] and 1 <= lat["attempts"] <= 3

    _run(["search", str(spec_file), "--trials", "1"], tmp_path)  # continues the same study
    study = optuna.load_study(study_name="tiny", storage=url)
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert all(t.state == TrialState.COMPLETE and len(t.values) == 3 for t in study.trials)
    assert study.user_attrs["baseline"] == base  # measured once

    with engine.connect() as c:  # the front table follows the study
        front = c.execute(sa.text("SELECT trial_number FROM autoprune_front WHERE study_name = 'tiny'")).scalars()
        assert sorted(front) == sorted(t.number for t in study.best_trials)
    from optuna.artifacts import get_all_artifact_meta

    for t in study.trials:  # policy file and checkpoint downloadable from the dashboard
        assert sorted(a.filename for a in get_all_artifact_meta(t, storage=study._storage)) == ["policy.yaml",
                                                                                              "pruned.pt"]
        assert load_policy_file(Path(t.user_attrs["artifact_dir"]) / "policy.yaml").channels == t.user_attrs["channels"]
        assert t.user_attrs["roundtrip"]["params"] == t.values[1]
    out = _run(["front", str(spec_file), "--format", "json"], tmp_path)
    assert len(__import__("json").loads(out.stdout)) == len(study.best_trials) + 1

    third = _run(["search", str(spec_file)], tmp_path)  # budget of 2 completed trials is reached
    assert len(optuna.load_study(study_name="tiny", storage=url).trials) == 3
    assert "Pareto front" in third.stdout


@pytest.mark.slow
def test_screened_warm_started_search(tmp_path, tiny_data, tiny_model_pt):
    """Adaptive-BN screening in a side study, promotion of the best, warm start, stage shape, round_to, NSGA-II,
    the latency lookup table."""
    spec = {
        "name": "mf", "model": str(tiny_model_pt), "data": str(tiny_data), "imgsz": 64, "trials": 2, "seed": 2,
        "objectives": ["map50_95", "params", "latency_ratio"], "sampler": {"name": "nsga2"},
        "space": {"ratio": {"low": 0.1, "high": 0.5}, "shape": "stage", "round_to": [8], "criteria": ["l1", "l2"],
                  "iterations": 1, "epochs": 1},
        "warm_start": {"uniform": 1}, "screening": {"factor": 2, "batches": 2}, "sensitivity": {"probes": 0},
        "finetune": {"batch": 8}, "latency": {"warmup": 1, "runs": 6, "rounds": 3, "lut": True},
        "resources": {"cpus": 1},
    }
    (tmp_path / "mf.yaml").write_text(yaml.safe_dump(spec))
    out = _run(["search", "mf.yaml"], tmp_path)
    assert "latency ratio" in out.stdout
    url = f"sqlite:///{tmp_path}/studies/autoprune.db"
    screen = optuna.load_study(study_name="mf-screen", storage=url)
    assert [t.state for t in screen.trials] == [TrialState.COMPLETE] * 4
    assert all(t.user_attrs["metrics"]["latency_lut_ms"] > 0 for t in screen.trials)  # what promotion ranked by
    assert screen.trials[0].user_attrs["warm_start"] == "uniform ratio 0.200"  # centre of the lighter half
    assert {k for k in screen.trials[1].params if k.startswith("ratio/")} == {"ratio/backbone", "ratio/neck",
                                                                              "ratio/head"}
    study = optuna.load_study(study_name="mf", storage=url)
    layers = {name: c for name, c, _ in study.user_attrs["layers"]}
    assert len(study.trials) == 2
    for t in study.trials:
        assert t.state == TrialState.COMPLETE
        src = screen.trials[t.user_attrs["screen"]["trial"]]
        assert screen_visible(t.params) == src.params  # promoted with the screened channel choice; the fine-tune
        assert set(t.params) - set(src.params) <= {"schedule", "lr", "ema", "iterations", "epochs"}  # knobs: main's
        assert t.user_attrs["policy"]["round_to"] == 8
        for name, c in t.user_attrs["channels"].items():
            assert c % 8 == 0 or layers[name] < 8
        assert t.user_attrs["metrics"]["latency_ratio"] > 0 and "ratio_cv" in t.user_attrs["latency"]
        lut = t.user_attrs["latency"]["lut"]
        assert 0 < t.user_attrs["metrics"]["latency_lut_ms"] == lut["ms"]
        entries = json.loads(Path(lut["table"]).read_text())["entries"].values()  # a sum of one table entry per
        assert lut["layers"] * min(entries) * 0.999 <= lut["ms"] <= lut["layers"] * max(entries) * 1.001  # conv
        assert lut["timed_now"] == 0  # its screen had the same convolutions timed in the same table
    summary = study.user_attrs["screening"]
    assert summary["pairs"] == 2 and summary["screened"] == 4 and summary["kendall_tau"] in (-1.0, 1.0, None)
    assert study.user_attrs["baseline"]["latency_ratio"] == 1.0


@pytest.mark.slow
def test_sensitivity_scan_is_cached_per_base_model_and_seeds_the_first_round(tmp_path, tiny_data, tiny_model_pt):
    """The default search: a per-block scan (a side study keyed by the base model), allocated candidates screened
    first; a second study on the same base model and data screens no probe again."""
    spec = {
        "model": str(tiny_model_pt), "data": str(tiny_data), "imgsz": 64, "trials": 2, "seed": 3,
        "space": {"ratio": {"low": 0.0, "high": 0.5, "step": 0.05}, "iterations": 1, "epochs": 1,
                  "criteria": ["l1", "l2"]},
        "screening": {"factor": 2, "batches": 2, "rounds": 1}, "sensitivity": {"probes": 1, "sweep": 2},
        "finetune": {"batch": 8}, "latency": {"warmup": 1, "runs": 3, "rounds": 1}, "resources": {"cpus": 1},
    }
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({**spec, "name": "a"}))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({**spec, "name": "b", "seed": 4}))
    _run(["search", "a.yaml"], tmp_path)
    url = f"sqlite:///{tmp_path}/studies/autoprune.db"
    names = [s.study_name for s in optuna.get_all_study_summaries(url)]
    scans = [n for n in names if n.startswith("sensitivity-")]
    assert len(scans) == 1 and set(names) == {"a", "a-screen", scans[0]}
    scan = optuna.load_study(study_name=scans[0], storage=url)
    assert scan.user_attrs["autoprune_role"] == "sensitivity"
    a = optuna.load_study(study_name="a", storage=url)
    block_names = {block_of(Layer(n, c, s)) for n, c, s in a.user_attrs["layers"]}
    n_blocks = len(block_names)
    probes = [t.user_attrs["probe"] for t in scan.trials]
    assert len(probes) == 1 + n_blocks + 2 and all(t.state == TrialState.COMPLETE for t in scan.trials)
    assert {p["ratio"] for p in probes if p["block"] not in "*-"} == {0.5}  # probes: the top of the range
    assert sorted(p["ratio"] for p in probes if p["block"] == "*") == [0.25, 0.5]  # the uniform sweep
    screen = optuna.load_study(study_name="a-screen", storage=url)
    sources = [t.user_attrs.get("warm_start", "") for t in screen.trials]
    assert sources[0].startswith("allocation (loss ~ ratio^")  # allocated candidates are screened first
    ratio_params = {k for k in screen.trials[0].params if k.startswith("ratio/")}
    assert ratio_params == {f"ratio/{b}" for b in block_names}  # the block shape is the default
    front = _run(["front", "--storage", url], tmp_path)  # side studies are not user studies: no --study needed
    assert "Pareto front" in front.stdout

    second = _run(["-v", "search", "b.yaml"], tmp_path)
    assert len(optuna.load_study(study_name=scans[0], storage=url).trials) == len(probes)  # nothing re-screened
    assert f"all {len(probes)} probes cached" in second.stderr


@pytest.mark.slow
def test_a_search_with_every_training_side_technique_at_once(tmp_path, tiny_data, tiny_model_pt):
    """Sparse training, distillation, layer pruning and the lr schedule searched together: the trial completes
    with each of them in its policy, prunes the sparse base, and its checkpoint has fewer bottlenecks and loads
    in plain ultralytics."""
    spec = {
        "name": "tech", "model": str(tiny_model_pt), "data": str(tiny_data), "imgsz": 64, "trials": 1, "seed": 0,
        "space": {"ratio": {"low": 0.2, "high": 0.3}, "criteria": ["bn_scale"], "iterations": 2, "epochs": 1,
                  "schedule": ["linear"], "lrf": {"low": 0.05, "high": 0.1}, "warmup": {"low": 0, "high": 0},
                  "lr_step": {"low": 0.5, "high": 0.6}, "distill": [True], "sparsity": [1.0],
                  "depth": {"low": 0.5, "high": 0.5}, "round_to": [1]},
        "finetune": {"batch": 8, "sparse_epochs": 1}, "latency": {"warmup": 1, "runs": 5},
        "resources": {"cpus": 1}, "sensitivity": {"probes": 0}, "screening": {"factor": 0},
        "warm_start": {"uniform": 0, "from_fronts": False},
    }
    spec_file = tmp_path / "tech.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    _run(["search", str(spec_file)], tmp_path)
    study = optuna.load_study(study_name="tech", storage=f"sqlite:///{tmp_path / 'studies' / 'autoprune.db'}")
    (t,) = study.trials
    assert t.state == TrialState.COMPLETE, t.user_attrs.get("fail_reason")
    pol = t.user_attrs["policy"]
    assert pol["distill"] is True and pol["sparsity"] == 1.0 and pol["depth"] == 0.5 and pol["iterations"] == 2
    assert pol["schedule"] == "linear" and 0.05 <= pol["lrf"] <= 0.1 and 0.5 <= pol["lr_step"] <= 0.6
    assert t.user_attrs["sparse"]["l1"] == 1.0  # pruned the sparse-trained base
    code = ("import sys; sys.modules['autoprune'] = None\n"
            "from ultralytics import YOLO\n"
            "from ultralytics.nn.modules import Bottleneck\n"
            f"m = YOLO({t.user_attrs['checkpoint']!r}).model\n"
            f"b = YOLO({str(tiny_model_pt)!r}).model\n"
            "n = lambda model: sum(isinstance(x, Bottleneck) for x in model.modules())\n"
            "print(n(m), n(b))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    pruned, base = map(int, r.stdout.split()[-2:])
    assert pruned < base
