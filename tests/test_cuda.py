"""Issue 12: trials on CUDA (skipped without a GPU; the CPU-checkable invariant is in tests/test_pruning.py)."""

from __future__ import annotations

import pytest
import torch

from autoprune.adapters import pruning, yolo
from autoprune.config.spec import parse_spec
from autoprune.engine.pipeline import TRACE_IMGSZ
from autoprune.engine.trial import run_trial
from autoprune.model import Layer, Policy, criteria

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("criterion", criteria.DEFAULT)
def test_two_iteration_trial_on_cuda(tmp_path, tiny_data, tiny_model_pt, criterion):
    spec = parse_spec({"name": "g", "model": str(tiny_model_pt), "data": str(tiny_data), "imgsz": 64,
                       "device": "cuda:0", "latency": {"warmup": 1, "runs": 3, "rounds": 1},
                       "finetune": {"batch": 8}}, "s.yaml")
    layers = [Layer(p.name, p.channels) for p in pruning.prunable_layers(yolo.load_model(tiny_model_pt), TRACE_IMGSZ)]
    policy = Policy(ratios=tuple((lay.name, 0.3) for lay in layers), criterion=criterion, iterations=2, lr=0.005,
                    ema=True, epochs=1)
    result = run_trial(spec.trial_settings, policy, layers, tmp_path)
    assert result.ok and result.metrics["params"] < yolo.count_params(yolo.load_model(tiny_model_pt))
    assert result.attrs["finetune"]["epochs"] == 2


def _cli(args, cwd):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "autoprune", *map(str, args)], capture_output=True, text=True,
                       cwd=cwd, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def test_fractional_gpu_trials_then_export_and_apply_finetune_on_cuda(tmp_path, tiny_data, tiny_model_pt):
    """Four trials at 0.25 GPU each run at once on one GPU, none fails; a trial's policy re-applied with
    ``apply --finetune --device cuda:0`` gives the trial's channels."""
    import optuna
    import yaml
    from optuna.trial import TrialState

    spec = {"name": "frac", "model": str(tiny_model_pt), "data": str(tiny_data), "imgsz": 64, "trials": 4,
            "device": "cuda:0", "space": {"ratio": {"low": 0.1, "high": 0.4}, "criteria": ["l2", "taylor"],
                                          "iterations": {"low": 1, "high": 2}, "epochs": 1},
            "finetune": {"batch": 8}, "latency": {"warmup": 1, "runs": 3, "rounds": 1},
            "resources": {"cpus": 1, "gpus": 0.25, "concurrent": 4},
            "sensitivity": {"probes": 0}, "screening": {"factor": 0}}
    (tmp_path / "frac.yaml").write_text(yaml.safe_dump(spec))
    _cli(["search", "frac.yaml"], tmp_path)
    study = optuna.load_study(study_name="frac", storage=f"sqlite:///{tmp_path / 'studies' / 'autoprune.db'}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    windows = sorted((t.datetime_start, t.datetime_complete) for t in study.trials)
    assert any(b[0] < a[1] for a, b in zip(windows, windows[1:]))  # trials overlapped on the one GPU
    _cli(["export", "--study", "frac", "--trial", "0", "--no-onnx", "--out", "exp"], tmp_path)
    _cli(["apply", "exp/policy.yaml", "--model", tiny_model_pt, "--data", tiny_data, "--finetune",
          "--device", "cuda:0", "--out", "again.pt"], tmp_path)
    again = yolo.load_model(tmp_path / "again.pt")
    assert yolo.count_params(again) == int(study.trials[0].user_attrs["metrics"]["params"])


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_round_to_auto_on_cuda_times_a_cuda_graph_in_the_deployed_precision(monkeypatch, tmp_path, precision):
    from autoprune.engine import rounding

    monkeypatch.setenv("AUTOPRUNE_HOME", str(tmp_path))
    k, m = rounding.choose_round_to("cuda:0", "cuda-graph", 2, precision)
    assert m["graph"] is True and m["dtype"] == ("float16" if precision == "fp16" else "float32")
    assert m["counts"] == 14 and m["ratio"] > 0 and k == (8 if m["ratio"] > 1 + rounding.TOLERANCE else 1)
    eager = rounding.measure_alignment("cuda:0", 2, precision=precision, graph=False)
    assert eager["graph"] is False and eager["counts"] == 14
    print(f"{precision}: graph ratio {m['ratio']:.3f} (max {m['max_ratio']:.3f}) -> round_to {k}; "
          f"eager ratio {eager['ratio']:.3f} (max {eager['max_ratio']:.3f})")
