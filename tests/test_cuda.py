"""Issue 12: trials on CUDA (skipped without a GPU; the CPU-checkable invariant is in tests/test_pruning.py)."""

from __future__ import annotations

import pytest
import torch

from autoprune.adapters import tp, ultra
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
    layers = [Layer(p.name, p.channels) for p in tp.prunable_layers(ultra.load_model(tiny_model_pt), TRACE_IMGSZ)]
    policy = Policy(ratios=tuple((lay.name, 0.3) for lay in layers), criterion=criterion, iterations=2, lr=0.005,
                    ema=True, epochs=1)
    result = run_trial(spec.trial_settings, policy, layers, tmp_path)
    assert result.ok and result.metrics["params"] < ultra.count_params(ultra.load_model(tiny_model_pt))
    assert result.attrs["finetune"]["epochs"] == 2
