"""Tests generated from every registry (criteria, objectives, samplers, search-space shapes), the generic
registry itself, the typed study records and the Pareto maths (checked against Optuna's own)."""

from __future__ import annotations

import math
import random

import optuna
import pytest

from autoprune.config.spec import parse_spec
from autoprune.errors import SpecError
from autoprune.model import criteria, objectives, pareto, records, samplers, sampling
from autoprune.model.space import Layer
from autoprune.registry import Registry, UnknownName

LAYERS = [Layer("model.0", 16, "backbone"), Layer("model.2.cv1", 32, "backbone"), Layer("model.12.cv1", 32, "neck"),
          Layer("model.22.cv2.0.0", 64, "head")]
BASE = {"name": "s", "model": "m.pt", "data": "d.yaml"}


@pytest.mark.parametrize("name", criteria.names())
def test_every_criterion_builds_its_torch_pruning_importance_and_is_accepted_by_specs(name):
    from autoprune.adapters import pruning

    crit = criteria.get(name)
    imp = pruning.importance(crit)
    assert type(imp).__name__ == crit.importance and crit.importance in pruning.IMPORTANCE_CLASSES
    assert parse_spec({**BASE, "space": {"criteria": [name]}}, "s.yaml").space.criteria == (name,)


@pytest.mark.parametrize("name", objectives.names())
def test_every_objective_has_a_direction_and_is_accepted_by_specs(name):
    obj = objectives.get(name)
    assert obj.direction in ("maximize", "minimize") and obj.sign == (-1.0 if obj.direction == "maximize" else 1.0)
    assert obj.format(1234.5)
    other = "params" if name != "params" else "map50_95"
    int8: dict[str, object] = {"latency": {"runtime": "onnxruntime", "precision": "int8"}}
    needs: dict[str, object] = {"latency_lut_ms": {"latency": {"lut": True}}, "deployed_map50_95": int8,
             "deployed_map50": int8}.get(name, {})  # what the objective needs measured
    assert parse_spec({**BASE, **needs, "objectives": [name, other]}, "s.yaml").objectives == (name, other)


@pytest.mark.parametrize("name", samplers.names())
def test_every_sampler_builds_the_optuna_class_it_names(name):
    from autoprune.search.storage.study import make_sampler

    s = make_sampler(name, seed=1, startup=5)
    assert type(s).__name__ == samplers.get(name).optuna_class
    assert parse_spec({**BASE, "sampler": name}, "s.yaml").sampler.name == name


@pytest.mark.parametrize("name", sampling.names())
def test_every_shape_projects_its_own_samples_back_to_the_same_parameters(name):
    spec = parse_spec({**BASE, "space": {"shape": name, "ratio": {"low": 0.0, "high": 0.6, "step": 0.05},
                                         "multiplier": {"low": 0.5, "high": 1.5, "step": 0.25}}}, "s.yaml")
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        t = study.ask()
        policy = sampling.sample_policy(t, spec.space, LAYERS)
        assert set(policy.ratio_map) == {layer.name for layer in LAYERS}
        assert all(0.0 <= r <= 0.6 for r in policy.ratio_map.values())
        if name != "global":  # global's projection is a fit of the mean; layer and stage are exact
            projected = sampling.params_for_policy(spec.space, LAYERS, policy.to_dict())
            assert projected == pytest.approx(dict(t.params))


def test_registry_rejects_duplicates_and_unknown_names():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Item:
        name: str

    reg: Registry[Item] = Registry("widget")
    reg.register(Item("a"))
    with pytest.raises(ValueError, match="widget 'a' is registered already"):
        reg.register(Item("a"))
    with pytest.raises(KeyError) as e:
        reg.get("b")
    assert isinstance(e.value, UnknownName) and str(e.value) == "unknown widget 'b' (choose from a)"
    assert "a" in reg and [i.name for i in reg] == ["a"]


@pytest.mark.parametrize("field,value,message", [
    ("space", {"criteria": ["nope"]}, "space.criteria: unknown criterion 'nope'"),
    ("objectives", ["map50_95", "nope"], "objectives: unknown objective 'nope'"),
    ("sampler", {"name": "nope"}, "sampler.name: unknown sampler 'nope'"),
    ("space", {"shape": "nope"}, "space.shape: 'nope' is not one of block, layer, stage, global"),
    ("objectives", ["map50_95", "latency_ratio"], None),
])
def test_registry_misses_become_spec_errors_naming_the_field(field, value, message):
    if message is None:
        assert parse_spec({**BASE, field: value}, "s.yaml").objectives == ("map50_95", "latency_ratio")
        with pytest.raises(SpecError, match="latency_ratio needs latency.interleave: true"):
            parse_spec({**BASE, field: value, "latency": {"interleave": False}}, "s.yaml")
        return
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        parse_spec({**BASE, field: value}, "s.yaml")


def test_parsing_checks_no_hardware():
    spec = parse_spec({**BASE, "device": "cuda:3", "resources": {"gpus": 0.5}}, "s.yaml")
    assert spec.device == "cuda:3" and spec.resources.gpus == 0.5
    with pytest.raises(SpecError, match="device: 'tpu' is not"):
        parse_spec({**BASE, "device": "tpu"}, "s.yaml")


class _Attrs:
    def __init__(self) -> None:
        self.user_attrs: dict = {}

    def set_user_attr(self, k, v) -> None:
        self.user_attrs[k] = v


def test_records_round_trip():
    s = _Attrs()
    records.set_objectives(s, ["map50_95", "params"])
    records.set_layers(s, LAYERS)
    records.set_identity(s, "sha256:x", "yolov8n.yaml")
    records.set_baseline(s, {"map50_95": 0.9, "params": 3.0e6, "latency": {"median_ms": 1.0}, "model": "m.pt"})
    records.append_run(s, s, records.RunTimings(started="t", ray_init_s=1.0, trials=2))
    assert records.study_objectives(s) == ["map50_95", "params"]
    assert records.layers(s) == LAYERS and records.fingerprint(s) == "sha256:x"
    assert records.baseline_metrics(s) == {"map50_95": 0.9, "params": 3.0e6}
    assert records.runs(s)[0]["trials"] == 2 and records.runs(s)[0]["overhead_share"] is None
    assert records.study_objectives(_Attrs()) == list(objectives.DEFAULT)
    t = _Attrs()
    records.start_trial(t, "host:1", "ray-a")
    records.set_screen_score(t, records.ScreenScore(3, 0.5, 0.7, 2.0))
    rec = records.trial(t)
    assert rec.driver == "host:1" and rec.screen == records.ScreenScore(3, 0.5, 0.7, 2.0) and rec.retry == 0
    side = _Attrs()
    records.set_role(side, "screen")
    assert records.is_side_study("anything", side) and not records.is_side_study("x", _Attrs())
    assert records.is_side_study("legacy-screen", _Attrs())  # made before the role record existed


def test_hypervolume_equals_optunas():
    import numpy as np
    from optuna._hypervolume import compute_hypervolume  # private, used here only as the reference

    rng = random.Random(0)
    for d in (2, 3, 4):
        pts = [[rng.uniform(0, 1) for _ in range(d)] for _ in range(25)]
        ref = [1.05] * d
        assert pareto.hypervolume(pts, ref) == pytest.approx(float(compute_hypervolume(np.array(pts),
                                                                                        np.array(ref))))
    assert pareto.hypervolume([[2.0, 0.5]], [1.0, 1.0]) == 0.0
    assert pareto.hypervolume([[math.nan, 0.5]], [1.0, 1.0]) == 0.0


def test_nondominated_ranks_and_knee():
    pts = [[1, 5], [2, 2], [5, 1], [3, 3], [4, 4]]
    assert pareto.nondominated_ranks(pts) == [0, 0, 0, 1, 2]
    assert pareto.knee_index([[0.9, 10.0], [0.8, 5.0], [0.1, 1.0]], ["map50_95", "params"]) == 1
