"""The per-device latency lookup table: shapes traced from the model, entries timed once and cached, the
estimate in trials and screens, promotion by it."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from autoprune.adapters import pruning, yolo
from autoprune.config.spec import parse_spec
from autoprune.engine.latency_table import ConvShape, LatencyTable, conv_shapes
from autoprune.engine.measure import measure_model
from autoprune.engine.pipeline import TRACE_IMGSZ
from autoprune.errors import SpecError
from autoprune.model import criteria
from autoprune.model.sampling import target_keep
from autoprune.search.strategy.promotion import promotion_choice, promotion_objectives


class _ConvAct(nn.Module):
    """Shaped like ultralytics' Conv (a ``conv`` and an ``act``): not a fake of it, the pattern the table reads."""

    def __init__(self, cin: int, cout: int, k: int, s: int) -> None:
        super().__init__()
        self.conv, self.act = nn.Conv2d(cin, cout, k, s, k // 2), nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


def test_conv_shapes_follow_the_feature_maps_and_the_activations():
    model = nn.Sequential(_ConvAct(3, 8, 3, 2), _ConvAct(8, 16, 3, 2), nn.Conv2d(16, 4, 1))
    shapes = conv_shapes(model, 64)
    assert [(s.cin, s.cout, s.stride, s.height, s.act) for s in shapes] == [
        (3, 8, (2, 2), 64, "SiLU"), (8, 16, (2, 2), 32, "SiLU"), (16, 4, (1, 1), 16, "")]
    assert len({s.key for s in shapes}) == 3 and shapes[0].key == "3-8 g1 k3x3 s2x2 p1x1 d1x1 64x64 SiLU"
    layer = shapes[0].layer()
    assert isinstance(layer, nn.Sequential) and isinstance(layer[1], nn.SiLU)
    assert layer(torch.rand(1, 3, 64, 64)).shape == (1, 8, 32, 32)
    assert isinstance(shapes[2].layer(), nn.Conv2d)  # no activation after the head's plain convolution


def test_an_entry_is_timed_once_and_cached_across_tables(tmp_path):
    shape = ConvShape(8, 16, 1, (3, 3), (1, 1), (1, 1), (1, 1), 32, 32, "SiLU")
    table = LatencyTable("torch", "cpu", threads=1, runs=3, warmup=1, folder=tmp_path)
    values, timed = table.lookup([shape, shape])
    assert timed == 1 and values[0] == values[1] > 0
    assert table.lookup([shape]) == (values[:1], 0)  # known now: nothing timed
    again = LatencyTable("torch", "cpu", threads=1, runs=3, warmup=1, folder=tmp_path)
    assert again.path == table.path and again.lookup([shape]) == (values[:1], 0)  # read from the file
    stored = json.loads(table.path.read_text())
    assert stored["context"]["runtime"] == "torch" and stored["context"]["threads"] == 1
    assert list(stored["entries"]) == [shape.key]
    other = LatencyTable("torch", "cpu", threads=2, runs=3, warmup=1, folder=tmp_path)
    assert other.path != table.path and other.lookup([shape])[1] == 1  # another thread count: its own table


def test_a_pruned_yolo_costs_less_in_the_table_and_the_estimate_is_repeatable(tmp_path, yolov8n):
    table = LatencyTable("torch", "cpu", threads=1, runs=3, warmup=1, folder=tmp_path)
    base = yolo.deploy_copy(yolov8n)
    convs = sum(isinstance(m, nn.Conv2d) for m in base.modules())
    first = table.estimate(base, 64)
    assert first.layers == convs and first.timed_now > 0 and first.ms > 0
    second = table.estimate(base, 64)
    assert second.ms == first.ms and second.timed_now == 0  # deterministic once cached
    original = pruning.channel_counts(yolov8n, TRACE_IMGSZ)
    pruning.prune_step(yolov8n, target_keep(original, dict.fromkeys(original, 0.5), 1, 1, 8),
                  pruning.importance(criteria.get("l2")), TRACE_IMGSZ)
    pruned = table.estimate(yolo.deploy_copy(yolov8n), 64)
    assert pruned.layers == convs and pruned.ms < first.ms


def test_onnxruntime_times_layers_in_its_own_table(tmp_path):
    shape = ConvShape(16, 16, 16, (3, 3), (2, 2), (1, 1), (1, 1), 40, 40, "SiLU")  # depthwise, strided
    ort = LatencyTable("onnxruntime", "cpu", threads=1, runs=3, warmup=1, folder=tmp_path)
    values, timed = ort.lookup([shape])
    assert timed == 1 and values[0] > 0
    assert "onnxruntime" in ort.context["versions"] and ort.path != LatencyTable(
        "torch", "cpu", threads=1, folder=tmp_path).path


def test_measured_models_carry_the_estimate_when_the_spec_asks(tiny_data, tiny_model_pt):
    raw = {"name": "t", "model": str(tiny_model_pt), "data": str(tiny_data), "imgsz": 64, "finetune": {"batch": 8},
           "latency": {"warmup": 1, "runs": 3, "rounds": 1, "lut": True, "threads": 1}}
    m = measure_model(yolo.load_model(tiny_model_pt), parse_spec(raw, "s.yaml").trial_settings)
    assert m.metrics()["latency_lut_ms"] == m.latency_lut_ms > 0
    assert m.latency["lut"]["layers"] > 50 and m.latency["lut"]["table"].endswith(".json")
    off = measure_model(yolo.load_model(tiny_model_pt), parse_spec({**raw, "latency": {"runs": 3, "rounds": 1}},
                                                                    "s.yaml").trial_settings)
    assert "latency_lut_ms" not in off.metrics() and "lut" not in off.latency


def test_the_estimate_as_an_objective_needs_the_table(tiny_data, tiny_model_pt):
    raw = {"name": "t", "model": str(tiny_model_pt), "data": str(tiny_data),
           "objectives": ["map50_95", "latency_lut_ms"]}
    with pytest.raises(SpecError, match="objectives: latency_lut_ms needs latency.lut: true"):
        parse_spec(raw, "s.yaml")
    assert parse_spec({**raw, "latency": {"lut": True}}, "s.yaml").objectives == ("map50_95", "latency_lut_ms")


BASE = {"map50_95": 0.8, "params": 2e6, "macs": 1.5e8, "latency_lut_ms": 10.0}


def test_promotion_ranks_by_the_table_in_place_of_macs():
    # same mAP and params; 0 has fewer MACs, 1 a lower estimated latency
    cands = [{"map50_95": 0.7, "params": 1e6, "macs": 0.5e8, "latency_lut_ms": 9.0},
             {"map50_95": 0.7, "params": 1e6, "macs": 0.9e8, "latency_lut_ms": 6.0}]
    assert promotion_objectives(cands, BASE) == ["map50_95", "params", "latency_lut_ms"]
    assert promotion_choice(cands, [], BASE, map_floor=0.5, gain=0.0, n=1) == [1]
    no_lut = [{k: v for k, v in c.items() if k != "latency_lut_ms"} for c in cands]
    assert promotion_objectives(no_lut, BASE) == ["map50_95", "params", "macs"]
    assert promotion_choice(no_lut, [], BASE, map_floor=0.5, gain=0.0, n=1) == [0]
    base_without = {k: v for k, v in BASE.items() if k != "latency_lut_ms"}  # a study measured before the table
    assert promotion_objectives(cands, base_without) == ["map50_95", "params", "macs"]
