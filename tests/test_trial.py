"""One real trial on tiny data: prune in steps, fine-tune, measure."""

from __future__ import annotations

import pytest

from autoprune.adapters import pruning, yolo
from autoprune.config.spec import parse_spec
from autoprune.engine.pipeline import TRACE_IMGSZ, prune_once
from autoprune.engine.trial import run_trial
from autoprune.model import Layer, Policy
from autoprune.model.sampling import target_keep


@pytest.mark.parametrize("criterion,iterations", [("l2", 2), ("taylor", 1)])
def test_trial_prunes_to_policy_and_measures(tmp_path, tiny_data, tiny_model_pt, criterion, iterations):
    spec = parse_spec({"name": "t", "model": str(tiny_model_pt), "data": str(tiny_data), "imgsz": 64,
                       "latency": {"warmup": 1, "runs": 10}, "finetune": {"batch": 8}}, "s.yaml")
    base = yolo.load_model(tiny_model_pt)
    layers = [Layer(p.name, p.channels) for p in pruning.prunable_layers(base, TRACE_IMGSZ)]
    ratios = tuple((lay.name, 0.5 if i % 2 else 0.2) for i, lay in enumerate(layers))
    policy = Policy(ratios=ratios, criterion=criterion, iterations=iterations, lr=0.005, ema=True, epochs=1)
    result = run_trial(spec.trial_settings, policy, layers, tmp_path)
    assert result.ok
    expected = target_keep({lay.name: lay.channels for lay in layers}, dict(ratios), 1, 1)
    assert result.attrs["channels"] == expected
    m = result.metrics
    assert set(m) == {"map50_95", "map50", "params", "macs", "latency_ms", "latency_ratio"}
    lat = result.attrs["latency"]  # interleaved with the unpruned base (A/B/B/A...)
    # 10 rounds per timing; a spread ratio is timed again (at most twice), pooled
    assert lat["rounds"] == 10 * lat["attempts"] and 1 <= lat["attempts"] <= 3 and lat["estimator"] == "min"
    assert lat["reference_median_ms"] > 0 and lat["ratio_cv"] >= 0
    assert m["latency_ratio"] == lat["ratio"] > 0 and lat["ratio_p10"] <= lat["ratio_p90"]
    assert 0.0 <= m["map50_95"] <= m["map50"] <= 1.0
    assert m["params"] < yolo.count_params(base) * 0.8 and m["macs"] > 0 and m["latency_ms"] > 0
    assert lat["runs"] == 10 * lat["attempts"] and lat["p10_ms"] <= m["latency_ms"]
    seconds = result.attrs["seconds"]
    assert {"load", "prune", "finetune", "validate", "latency"} <= set(seconds)
    assert ("gradients" in seconds) == (criterion == "taylor")
    assert yolo.checkpoint_param_count(result.attrs["checkpoint"]) == int(m["params"])
    for step in range(1, iterations + 1):
        assert (tmp_path / f"step{step}" / "weights" / "last.pt").exists()


@pytest.mark.parametrize("keep_best", [True, False])
def test_a_fine_tune_that_makes_the_model_worse_is_not_kept(tmp_path, tiny_data, monkeypatch, keep_best):
    """Fakes ultralytics' fine-tune with one that destroys the model (zeroes every convolution), to show the trial
    keeps the pruned, adaptive-BN-recalibrated model instead when finetune.keep_best is on (the default)."""
    import torch

    from autoprune.demo.baseline import resolve_demo_model

    def destroy(model, cfg, workdir, **kw):
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.Conv2d):
                    m.weight.zero_()
        return yolo.FinetuneStats(epochs=1, batches=1, optimizer_steps=1)

    monkeypatch.setattr(yolo, "finetune", destroy)
    model_pt = resolve_demo_model()
    spec = parse_spec({"name": "t", "model": str(model_pt), "data": str(tiny_data), "imgsz": 64,
                       "latency": {"warmup": 0, "runs": 3, "rounds": 1},
                       "finetune": {"batch": 8, "keep_best": keep_best}}, "s.yaml")
    layers = [Layer(p.name, p.channels) for p in pruning.prunable_layers(yolo.load_model(model_pt), TRACE_IMGSZ)]
    policy = Policy(ratios=tuple((lay.name, 0.2) for lay in layers), criterion="l1", iterations=1, lr=0.01, ema=True,
                    epochs=1)
    result = run_trial(spec.trial_settings, policy, layers, tmp_path)
    assert result.ok
    trained = result.attrs["finetune"]
    if keep_best:
        assert trained["kept"] == "adaptive_bn" and trained["map50_95_before"] > 0.05
        assert result.metrics["map50_95"] == pytest.approx(trained["map50_95_before"], abs=1e-3)
        assert "keep_best" in result.attrs["seconds"]
    else:
        assert "kept" not in trained and result.metrics["map50_95"] < 0.01


def test_the_lr_schedule_knobs_reach_each_prune_steps_fine_tune(tmp_path, tiny_data, tiny_model_pt, monkeypatch):
    """Fakes ultralytics' fine-tune with one that only records its configuration (no training), to show what each
    prune step's fine-tune is asked to do: lr * lr_step ** (k - 1), the searched lrf and warm-up."""
    import optuna

    from autoprune.model.sampling import finetune_knobs, sample_policy, screen_space

    seen = []

    def record(model, cfg, workdir, **kw):
        seen.append(cfg)
        return yolo.FinetuneStats(epochs=cfg.epochs, batches=1, optimizer_steps=1)

    monkeypatch.setattr(yolo, "finetune", record)
    spec = parse_spec({"name": "t", "model": str(tiny_model_pt), "data": str(tiny_data), "imgsz": 64,
                       "latency": {"warmup": 0, "runs": 3, "rounds": 1}, "finetune": {"batch": 8, "keep_best": False},
                       "space": {"lrf": {"low": 0.01, "high": 0.2, "log": True}, "warmup": [0, 2],
                                 "lr_step": {"low": 0.2, "high": 1.0}}}, "s.yaml")
    layers = [Layer(p.name, p.channels) for p in pruning.prunable_layers(yolo.load_model(tiny_model_pt), TRACE_IMGSZ)]
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    sampled = sample_policy(trial, spec.space, layers)
    assert {"lrf", "warmup", "lr_step"} <= set(trial.params) & set(finetune_knobs())
    assert 0.01 <= sampled.lrf <= 0.2 and 0 <= sampled.warmup <= 2 and 0.2 <= sampled.lr_step <= 1.0
    assert screen_space(spec.space).lrf is None  # the screen cannot see the schedule
    policy = Policy(ratios=tuple((lay.name, 0.3) for lay in layers), criterion="l1", iterations=2, lr=0.01, ema=True,
                    epochs=1, lrf=0.05, warmup=0.5, lr_step=0.25)
    assert run_trial(spec.trial_settings, policy, layers, tmp_path).ok
    assert [c.lr for c in seen] == pytest.approx([0.01, 0.0025])
    assert {c.lrf for c in seen} == {0.05} and {c.warmup_epochs for c in seen} == {0.5}
    assert Policy.from_dict(policy.to_dict()) == policy


def test_a_sparse_policy_prunes_the_sparse_trained_base(tmp_path, tiny_data, tiny_model_pt):
    spec = parse_spec({"name": "t", "model": str(tiny_model_pt), "data": str(tiny_data), "imgsz": 64,
                       "latency": {"warmup": 0, "runs": 3, "rounds": 1},
                       "finetune": {"batch": 8, "sparse_epochs": 1, "sparse_lr": 0.05}}, "s.yaml")
    layers = [Layer(p.name, p.channels) for p in pruning.prunable_layers(yolo.load_model(tiny_model_pt), TRACE_IMGSZ)]
    policy = Policy(ratios=tuple((lay.name, 0.3) for lay in layers), criterion="bn_scale", iterations=1, lr=0.005,
                    ema=True, epochs=1, sparsity=3.0)
    result = run_trial(spec.trial_settings, policy, layers, tmp_path)
    assert result.ok and result.attrs["sparse"]["l1"] == 3.0
    assert result.attrs["sparse"]["after"]["mean"] < result.attrs["sparse"]["before"]["mean"]
    assert result.attrs["policy"]["sparsity"] == 3.0


def test_a_trial_without_fine_tune_gets_adaptive_bn_and_no_gradient_step(tmp_path, tiny_data, tiny_model_pt,
                                                                          monkeypatch):
    """``finetune=False`` (``budget.direct``): ultralytics' fine-tune is replaced by one that fails the test if it is
    called; the trial prunes, re-estimates BatchNorm statistics, measures and saves a checkpoint that round-trips."""
    import torch

    def never(*a, **kw):
        raise AssertionError("a trial without fine-tune trained")

    monkeypatch.setattr(yolo, "finetune", never)
    spec = parse_spec({"name": "t", "model": str(tiny_model_pt), "data": str(tiny_data), "imgsz": 64,
                       "latency": {"warmup": 0, "runs": 3, "rounds": 1}, "finetune": {"batch": 8, "bn_batches": 2}},
                      "s.yaml")
    base = yolo.load_model(tiny_model_pt)
    layers = [Layer(p.name, p.channels) for p in pruning.prunable_layers(base, TRACE_IMGSZ)]
    policy = Policy(ratios=tuple((lay.name, 0.3) for lay in layers), criterion="l2", iterations=1, lr=0.01, ema=True,
                    epochs=2)
    result = run_trial(spec.trial_settings, policy, layers, tmp_path / "trials" / "00000", finetune=False)
    assert result.ok and result.attrs["finetune"] == {"epochs": 0, "batches": 0, "optimizer_steps": 0,
                                                      "kept": "adaptive_bn", "finetuned": False}
    assert "adaptive_bn" in result.attrs["seconds"] and "finetune" not in result.attrs["seconds"]
    assert not (tmp_path / "trials" / "00000" / "step1").exists()
    pruned = yolo.load_model(result.attrs["checkpoint"])
    assert yolo.count_params(pruned) == int(result.metrics["params"]) < yolo.count_params(base)
    # the BN statistics were re-estimated: they differ from those of the same prune without adaptive BN
    keep = target_keep({lay.name: lay.channels for lay in layers}, policy.ratio_map, 1, 1)
    prune_once(base, spec.trial_settings, "l2", keep)
    bn_new = [m for m in pruned.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    bn_old = [m for m in base.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert [a.running_mean.shape for a in bn_new] == [b.running_mean.shape for b in bn_old]
    assert not all(torch.allclose(a.running_mean, b.running_mean) for a, b in zip(bn_new, bn_old))


def test_true_saving_is_what_a_screen_of_the_allocation_measures(tiny_data, tiny_model_pt):
    """The search sizes an allocation at a target cut by pruning a copy; the screen later prunes it for real."""
    import optuna

    from autoprune.engine.screen import screen_policy
    from autoprune.model.sampling import params_for_policy, sample_policy
    from autoprune.model.space import blocks
    from autoprune.search.strategy.sensitivity import true_saving

    spec = parse_spec({"name": "t", "model": str(tiny_model_pt), "data": str(tiny_data), "imgsz": 64,
                       "latency": {"warmup": 0, "runs": 3, "interleave": False}, "finetune": {"batch": 8}}, "s.yaml")
    base = yolo.load_model(tiny_model_pt)
    layers = [Layer(p.name, p.channels, yolo.layer_stage(base, p.name))
              for p in pruning.prunable_layers(base, TRACE_IMGSZ)]
    names = list(blocks(layers))
    block_ratios = {b: (0.6 if i % 3 == 0 else 0.15) for i, b in enumerate(names)}  # lopsided, off the grid's ends
    saving = true_saving(spec, layers, "l2", 8)
    share = saving(block_ratios)
    assert 0.05 < share < 0.9
    ratios = {layer.name: block_ratios[b] for b, members in blocks(layers).items() for layer in members}
    policy = sample_policy(optuna.trial.FixedTrial(params_for_policy(
        spec.space, layers, {"ratios": ratios, "criterion": "l2", "round_to": 8})), spec.space, layers)
    screened = screen_policy(spec.trial_settings, policy, layers, batches=1)
    assert screened.metrics["params"] == pytest.approx((1 - share) * yolo.count_params(base), abs=0.5)


def test_uniform_prune_in_rounds_ends_at_the_one_shot_size(tiny_data, tiny_model_pt):
    """The hand recipe iterated (Torch-Pruning's linear schedule): each round shrinks every unit, and the last one
    leaves exactly the channels the one-shot prune at the same ratio leaves."""
    from autoprune.engine.uniform import uniform_prune, unit_channels

    spec = parse_spec({"name": "t", "model": str(tiny_model_pt), "data": str(tiny_data), "imgsz": 64}, "s.yaml")
    one_shot, rounds = yolo.load_model(tiny_model_pt), yolo.load_model(tiny_model_pt)
    original = unit_channels(one_shot)
    final = uniform_prune(one_shot, spec.trial_settings, 0.5, round_to=1)
    sizes = []
    for step in (1, 2, 3):
        uniform_prune(rounds, spec.trial_settings, 0.5, round_to=1, step=step, steps=3, original=original)
        sizes.append(unit_channels(rounds))
    assert all(sizes[0][n] < original[n] for n in original if original[n] > 3)
    assert all(sizes[1][n] <= sizes[0][n] and sizes[2][n] <= sizes[1][n] for n in original)
    assert sizes[2] == {n: final[n] for n in sizes[2]}
    assert yolo.count_params(rounds) == yolo.count_params(one_shot)
