"""Issue 6 pieces: samplers, search-space shapes, channel rounding, warm starts, adaptive-BN
screening, promotion, Kendall tau and interleaved latency (no fakes: real Optuna studies on
SQLite, real torch models)."""

from __future__ import annotations

import math

import optuna
import pytest
import torch
from torch import nn

from autoprune.config.sections import LatencySettings
from autoprune.config.spec import parse_spec
from autoprune.engine.latency import measure_interleaved
from autoprune.engine.screen import recalibrate_bn
from autoprune.errors import SpecError
from autoprune.model import Layer, Policy
from autoprune.model.pareto import kendall_tau, promotion_order
from autoprune.model.sampling import (
    params_for_policy,
    sample_policy,
    target_keep,
    uniform_levels,
    uniform_params,
)
from autoprune.search.storage.study import make_sampler
from autoprune.search.strategy.warmstart import warm_start

LAYERS = [Layer("model.0", 16, "backbone"), Layer("model.2.cv1", 32, "backbone"), Layer("model.12.cv1", 32, "neck"),
          Layer("model.22.cv2.0.0", 64, "head")]


def _spec(**over):
    raw = {"name": "s", "model": "m.pt", "data": "d.yaml", **over}
    return parse_spec(raw, "s.yaml")


@pytest.mark.parametrize("field,value,message", [
    ("sampler", {"name": "cmaes"}, "sampler.name: unknown sampler 'cmaes'"),
    ("sampler", {"seed": -1}, "sampler.seed: must be >= 0"),
    ("space", {"shape": "blocks"}, "space.shape: 'blocks' is not one of block, layer, stage, global"),
    ("space", {"round_to": [0]}, "space.round_to: must be >= 1"),
    ("space", {"round_to": []}, "space.round_to: expected a non-empty list"),
    ("screening", {"factor": 1}, "screening.factor: 1 screens nothing out"),
    ("screening", {"batches": 0}, "screening.batches: must be >= 1"),
    ("warm_start", {"uniform": -2}, "warm_start.uniform: must be >= 0"),
    ("warm_start", {"from_fronts": "yes"}, "warm_start.from_fronts: expected true or false"),
    ("latency", {"interleave": 1}, "latency.interleave: expected true or false"),
])
def test_new_spec_fields_are_validated(field, value, message):
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _spec(**{field: value})


@pytest.mark.parametrize("name,cls", [("tpe", optuna.samplers.TPESampler), ("nsga2", optuna.samplers.NSGAIISampler),
                                      ("gp", optuna.samplers.GPSampler), ("random", optuna.samplers.RandomSampler)])
def test_sampler_registry(name, cls):
    assert isinstance(make_sampler(name, seed=3, startup=4), cls)
    assert _spec(sampler=name).sampler.name == name


def _sample(space_raw, n=1, params=None):
    spec = _spec(space=space_raw)
    study = optuna.create_study(directions=["maximize", "minimize"])
    if params is not None:
        study.enqueue_trial(params)
    out = []
    for _ in range(n):
        t = study.ask()
        out.append((t, sample_policy(t, spec.space, LAYERS)))
    return spec, out


def test_stage_shape_has_one_ratio_per_stage():
    _, [(t, pol)] = _sample({"shape": "stage", "ratio": {"low": 0.1, "high": 0.6}})
    assert {k for k in t.params if k.startswith("ratio/")} == {"ratio/backbone", "ratio/neck", "ratio/head"}
    r = pol.ratio_map
    assert r["model.0"] == r["model.2.cv1"] == t.params["ratio/backbone"]
    assert r["model.12.cv1"] == t.params["ratio/neck"] and r["model.22.cv2.0.0"] == t.params["ratio/head"]


def test_global_shape_multiplies_and_clips():
    _, samples = _sample({"shape": "global", "ratio": {"low": 0.0, "high": 0.5}, "multiplier": {"low": 0.5,
                                                                                                "high": 2.0}}, n=20)
    for t, pol in samples:
        g = t.params["ratio/global"]
        for layer in LAYERS:
            want = min(0.5, max(0.0, g * t.params[f"mult/{layer.name}"]))
            assert pol.ratio_map[layer.name] == pytest.approx(want)


def test_layer_shape_and_round_to_choice():
    _, [(t, pol)] = _sample({"shape": "layer", "round_to": [1, 8, 16]})
    assert len([k for k in t.params if k.startswith("ratio/")]) == len(LAYERS)
    assert pol.round_to in (1, 8, 16) and t.params["round_to"] == pol.round_to


def test_round_to_rounds_kept_channels():
    original = {"a": 64, "b": 5, "c": 16, "d": 48}
    ratios = {"a": 0.3, "b": 0.5, "c": 0.95, "d": 0.1}
    assert target_keep(original, ratios, 1, 1) == {"a": 45, "b": 3, "c": 1, "d": 44}
    assert target_keep(original, ratios, 1, 1, round_to=8) == {"a": 48, "b": 3, "c": 8, "d": 48}
    assert target_keep(original, ratios, 1, 1, round_to=16) == {"a": 48, "b": 3, "c": 16, "d": 48}


@pytest.mark.parametrize("shape", ["layer", "stage", "global"])
def test_uniform_params_reproduce_a_uniform_policy(shape):
    space_raw = {"shape": shape, "ratio": {"low": 0.0, "high": 0.7, "step": 0.05}, "round_to": [8, 1],
                 "criteria": ["l2", "l1"], "iterations": {"low": 1, "high": 3}}
    spec = _spec(space=space_raw)
    params = uniform_params(spec.space, LAYERS, 0.3)
    _, [(t, pol)] = _sample(space_raw, params=params)
    assert list(pol.ratio_map.values()) == pytest.approx([0.3] * len(LAYERS))
    assert (pol.criterion, pol.iterations, pol.round_to) == ("l2", 1, 8)


def test_params_for_policy_projects_onto_another_shape():
    spec = _spec(space={"shape": "stage", "ratio": {"low": 0.0, "high": 0.6}})
    policy = {"ratios": {"model.0": 0.1, "model.2.cv1": 0.3, "model.12.cv1": 0.9, "model.22.cv2.0.0": 0.2},
              "criterion": "taylor", "lr": 0.003}
    params = params_for_policy(spec.space, LAYERS, policy)
    assert params["ratio/backbone"] == pytest.approx(0.2) and params["ratio/neck"] == 0.6  # clipped to the range
    assert params["criterion"] == "taylor" and params["lr"] == pytest.approx(0.003)


def test_uniform_levels():
    assert uniform_levels(0.0, 0.8, 4) == pytest.approx([0.1, 0.3, 0.5, 0.7])
    assert uniform_levels(0.2, 0.2, 1) == [0.2]


def test_warm_start_enqueues_uniform_policies_and_earlier_fronts(tmp_path):
    from autoprune.search.storage.study import get_storage, open_study_for

    url = f"sqlite:///{tmp_path}/w.db"
    storage = get_storage(url)
    old_spec = _spec(name="old", storage=url, space={"shape": "layer", "ratio": {"low": 0.0, "high": 0.6}})
    old = open_study_for(old_spec, storage)
    old.set_user_attr("model_fingerprint", "sha256:same")
    for i in range(6):
        t = old.ask()
        pol = sample_policy(t, old_spec.space, LAYERS)
        t.set_user_attr("policy", pol.to_dict())
        old.tell(t, [0.5 + 0.05 * i, 1e6 * (1 + i), 10.0 - i])  # all non-dominated
    other = open_study_for(_spec(name="other", storage=url), storage)
    other.set_user_attr("model_fingerprint", "sha256:different")

    spec = _spec(name="new", storage=url, space={"shape": "stage", "ratio": {"low": 0.0, "high": 0.6}},
                 warm_start={"uniform": 3, "from_fronts": True})
    new = open_study_for(spec, storage)
    assert warm_start(new, storage, spec.space, spec.warm_start, LAYERS, "sha256:same") == 3 + len(old.best_trials)
    waiting = new.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == 3 + 6
    sources = [t.user_attrs["warm_start"] for t in waiting]
    assert sum(s.startswith("uniform") for s in sources) == 3 and sum("front of study old" in s for s in sources) == 6
    assert warm_start(new, storage, spec.space, spec.warm_start, LAYERS, "sha256:same") == 0  # once per study
    t = new.ask()
    pol = sample_policy(t, spec.space, LAYERS)
    # first uniform level: bin centres over the lighter half [0, 0.3] of the range, with the recipe's knobs
    assert list(pol.ratio_map.values()) == pytest.approx([0.05] * len(LAYERS))


def test_kendall_tau():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert kendall_tau([1, 2, 3, 4, 5], [1, 3, 2, 5, 4]) == pytest.approx(0.6)
    assert math.isnan(kendall_tau([1, 1], [2, 2]))


def test_promotion_order_puts_the_front_first():
    recs = [{"map50_95": 0.5, "params": 5.0}, {"map50_95": 0.9, "params": 9.0}, {"map50_95": 0.4, "params": 6.0},
            {"map50_95": 0.7, "params": 4.0}]
    order = promotion_order(recs, ["map50_95", "params"])
    assert order[:2] == [1, 3]  # the non-dominated pair, by mAP
    assert order[2:] == [0, 2]


def test_adaptive_bn_recalibrates_statistics_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4))
    weights = [p.detach().clone() for p in model.parameters()]
    batches = [{"img": torch.randn(8, 3, 5, 5) * 3 + 2} for _ in range(4)]
    assert recalibrate_bn(model.eval(), batches) == 4
    feats = torch.cat([model[0](b["img"]) for b in batches])
    bn = model[1]
    assert torch.allclose(bn.running_mean, feats.mean(dim=(0, 2, 3)), atol=1e-4)
    assert bn.momentum == 0.1 and not model.training and int(bn.num_batches_tracked) == 4
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))


def test_interleaved_latency_reports_ratio_and_spread():
    a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    b = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    once = {"threads": 1, "retries": 0}  # one timing, however spread
    res = measure_interleaved(a, b, imgsz=32, timing=LatencySettings(warmup=1, runs=12, rounds=4, **once))
    assert res.rounds == 4 and res.candidate.runs == 12 and res.reference.runs == 12
    assert res.ratio > 0 and res.ratio_cv >= 0 and res.ratio_p10 <= res.ratio_p90
    few = measure_interleaved(a, b, imgsz=32, timing=LatencySettings(warmup=0, runs=3, rounds=10, **once))
    assert few.rounds == 3 and few.candidate.runs == 3


def test_policy_from_old_dict_defaults_round_to():
    d = Policy(ratios=(("a", 0.1),), criterion="l1", iterations=1, lr=0.01, ema=True, epochs=1).to_dict()
    d.pop("round_to")
    assert Policy.from_dict(d).round_to == 1


def test_round_to_auto_is_the_default_and_is_measured_once_per_device(monkeypatch, tmp_path):
    from autoprune.config.spec import AUTO_ROUND_TO
    from autoprune.engine import rounding

    assert parse_spec({"name": "r", "model": "m.pt", "data": "d.yaml"}, "s.yaml").space.round_to == AUTO_ROUND_TO
    assert _spec(space={"round_to": "auto"}).space.round_to == AUTO_ROUND_TO
    assert _spec(space={"round_to": [1, 8]}).space.round_to == (1, 8)
    monkeypatch.setenv("AUTOPRUNE_HOME", str(tmp_path))
    k, m = rounding.choose_round_to("cpu", "torch", 1)
    assert k in (1, 8) and k == (8 if m["ratio"] > 1 + rounding.TOLERANCE else 1) and m["counts"] == 14
    assert m["graph"] is False and m["dtype"] == "float32"  # a CUDA graph and half precision only on a GPU
    calls: list[tuple] = []

    def measure(*a, **kw):  # fakes the timing: says counts off a multiple run as fast
        calls.append(a)
        return {"ratio": 1.0}

    monkeypatch.setattr(rounding, "measure_alignment", measure)
    assert rounding.choose_round_to("cpu", "torch", 1) == (k, m | {"round_to": k})  # cached: not measured again
    assert calls == []
    rounding.choose_round_to("cpu", "torch", 1, "int8")  # another deployed precision is measured on its own
    assert len(calls) == 1


def test_the_screening_line_says_when_a_screens_cost_was_not_measured(tmp_path, caplog):
    """Issue 40: with nothing screened the log said "a screen costs 1/n/a of a trial"."""
    import logging

    from autoprune.search.storage.study import get_storage, open_study_for
    from autoprune.search.strategy.promotion import record_screening

    url = f"sqlite:///{tmp_path}/s.db"
    store = get_storage(url)
    spec = _spec(name="s", storage=url)
    study = open_study_for(spec, store)
    with caplog.at_level(logging.INFO, logger="autoprune"):
        summary = record_screening(study, store, spec)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("screening:"))
    assert summary["compute_saved_x"] is None and "1/n/a" not in line
    assert line == ("screening: Kendall tau n/a over 0 promoted trials; a screen's cost against a trial's was not "
                    "measured")
