"""Issue 12: latency on the deployment runtime (ONNX Runtime here; CUDA graphs and TensorRT need a GPU)."""

from __future__ import annotations

import pytest
import torch

from autoprune.adapters import yolo
from autoprune.config.sections import RUNTIMES, LatencySettings
from autoprune.config.spec import parse_spec
from autoprune.engine import runtimes
from autoprune.engine.latency import measure_interleaved
from autoprune.engine.measure import measure_model
from autoprune.errors import InputError, SpecError

BASE = {"name": "r", "model": "m.pt", "data": "d.yaml"}


def test_the_spec_offers_exactly_the_registered_runtimes():
    assert tuple(runtimes.names()) == RUNTIMES


@pytest.mark.parametrize("latency,device,message", [
    ({"runtime": "cuda-graph"}, "cpu", "latency.runtime: cuda-graph needs device: cuda"),
    ({"runtime": "tensorrt"}, "cpu", "latency.runtime: tensorrt needs device: cuda"),
    ({"half": True}, "cpu", "latency.precision: fp16 timing needs device: cuda"),  # half: the older spelling
    ({"precision": "fp16"}, "cpu", "latency.precision: fp16 timing needs device: cuda"),
    ({"precision": "int8"}, "cpu", "latency.precision: int8 needs runtime: onnxruntime or openvino"),
    ({"precision": "int8", "runtime": "onnxruntime", "lut": True}, "cpu", "latency.lut:"),
    ({"half": True, "precision": "int8"}, "cuda", "latency.half: true contradicts"),
    ({"precision": "int4"}, "cpu", "latency.precision"),
    ({"runtime": "tvm"}, "cpu", "latency.runtime"),
    ({"batch": 0}, "cpu", "latency.batch: must be >= 1"),
])
def test_runtimes_a_spec_cannot_use_are_refused_naming_the_field(latency, device, message):
    with pytest.raises(SpecError, match=message):
        parse_spec({**BASE, "device": device, "latency": latency}, "s.yaml")


def test_runtime_availability_is_checked_before_a_search_starts():
    runtimes.check_runtime("onnxruntime", "cpu")  # installed with autoprune
    runtimes.check_runtime("onnxruntime", "cpu", "int8")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="latency.runtime: cuda-graph needs a CUDA GPU"):
            runtimes.check_runtime("cuda-graph", "cuda")
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        with pytest.raises(InputError, match="latency.runtime: tensorrt needs the tensorrt package"):
            runtimes.check_runtime("tensorrt", "cuda")


def test_onnxruntime_times_the_exported_model_interleaved_with_the_base(yolov8n):
    base = yolo.deploy_copy(yolov8n)
    il = measure_interleaved(base, yolo.deploy_copy(yolov8n), imgsz=64,
                             timing=LatencySettings(warmup=1, runs=6, rounds=3, threads=1, runtime="onnxruntime",
                                                    batch=2, retries=0))
    assert il.candidate.runtime == il.reference.runtime == "onnxruntime"
    assert il.candidate.batch == 2 and il.candidate.precision == "fp32" and il.candidate.median_ms > 0
    assert 0.3 < il.ratio < 3.0  # the same model against itself


def test_a_trial_records_runtime_batch_precision_and_deployment_size(tiny_data, tiny_model_pt):
    spec = parse_spec({"name": "t", "model": str(tiny_model_pt), "data": str(tiny_data), "imgsz": 64,
                       "finetune": {"batch": 8},
                       "latency": {"runtime": "onnxruntime", "batch": 2, "imgsz": 96, "warmup": 1, "runs": 3,
                                   "rounds": 1}}, "s.yaml")
    m = measure_model(yolo.load_model(tiny_model_pt), spec.trial_settings)
    lat = m.latency
    assert (lat["runtime"], lat["batch"], lat["precision"], lat["imgsz"]) == ("onnxruntime", 2, "fp32", 96)
    assert lat["reference_median_ms"] > 0 and m.latency_ratio is not None
