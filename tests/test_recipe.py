"""The hand recipe's model at a target: its uniform ratio for a latency target (bisection on timed copies) and the
cost of a pruned copy by what a target bounds."""

from __future__ import annotations

import pytest

from autoprune.config.spec import TrialSettings


def test_the_recipes_latency_ratio_is_the_smallest_that_times_under_the_bound(monkeypatch, yolov8n):
    """Fakes the timing only (a copy's latency ratio = the share of channels it keeps, squared, as MACs go): the
    bisection lands on the smallest grid ratio whose copy meets the bound, never below ``low``, and spends a
    handful of timings, not one per grid step."""
    from autoprune.engine import uniform

    timed: list[float] = []

    def fake(candidate, reference, settings):
        kept = sum(p.numel() for p in candidate.parameters()) / sum(p.numel() for p in reference.parameters())
        timed.append(kept)
        return kept

    monkeypatch.setattr(uniform, "_timed_ratio", fake)
    s = TrialSettings(model="yolov8n.yaml", data="d.yaml", imgsz=64)
    r = uniform.uniform_ratio_for_latency(yolov8n, s, 0.5)
    assert 0.2 < r < 0.5 and len(timed) <= 7
    original = uniform.unit_channels(yolov8n)
    from autoprune.model.sampling import target_keep

    def share(ratio):
        return uniform.pruned_share(yolov8n, s, target_keep(original, dict.fromkeys(original, ratio), 1, 1, 8),
                                    "latency_ratio")
    assert share(r) <= 0.5 < share(round(r - 0.02, 2))
    assert uniform.uniform_ratio_for_latency(yolov8n, s, 0.5, low=0.6) == pytest.approx(0.6)  # already under it


def test_a_pruned_copy_keeps_what_is_counted(yolov8n):
    from autoprune.adapters import yolo
    from autoprune.engine import uniform
    from autoprune.model.sampling import target_keep

    s = TrialSettings(model="yolov8n.yaml", data="d.yaml", imgsz=64)
    original = uniform.unit_channels(yolov8n)
    keep = target_keep(original, dict.fromkeys(original, 0.3), 1, 1, 8)
    params = uniform.pruned_share(yolov8n, s, keep, "params")
    macs = uniform.pruned_share(yolov8n, s, keep, "macs")
    assert params == pytest.approx(uniform.pruned_params(yolov8n, s, keep) / yolo.count_params(yolov8n))
    assert 0.3 < macs < 0.7 and 0.3 < params < 0.7 and macs != params


def test_the_smallest_index_meeting_a_monotone_test_is_found_from_any_guess_in_few_calls():
    from autoprune.engine.uniform import smallest_meeting

    for answer in range(1, 41):
        for guess in (None, 1, answer - 1, answer, answer + 1, 20, 39):
            calls: list[int] = []

            def meets(i, answer=answer, calls=calls):
                calls.append(i)
                return i >= answer

            assert smallest_meeting(meets, 0, 40, guess) == answer
            if guess == answer < 40:  # (a guess at the top is no guess: meets(hi) is taken to hold)
                assert len(calls) <= 2  # a right guess: two pruned copies (it and the one below), not six
            elif guess is not None and abs(guess - answer) == 1 and 0 < guess < 40:
                assert len(calls) <= 4
            assert len(calls) <= 12


def test_the_recipes_params_ratio_is_the_smallest_grid_ratio_that_meets_the_target(yolov8n):
    """The guessed, galloping search lands where a scan of the grid does, pruning a handful of copies."""
    from autoprune.adapters import yolo
    from autoprune.engine import uniform
    from autoprune.model.budget import Target

    s = TrialSettings(model="yolov8n.yaml", data="d.yaml", imgsz=64)
    base = yolo.count_params(yolov8n)
    for frac in (0.5, 0.3):
        r, cost = uniform.uniform_ratio_for(yolov8n, s, Target((("params", frac),)))
        assert cost["params"] <= frac * base
        below = uniform._pruned_cost(yolov8n, s, round(r - 0.01, 2), uniform.RECIPE_ROUND_TO)
        assert below["params"] > frac * base


def test_the_recipes_models_are_measured_in_process_without_ray_when_no_search_follows(tmp_path, tiny_data,
                                                                                     tiny_model_pt):
    """A real recipe trial run in this process (no Ray): pruned at the recipe's ratio, adaptive BN, validated and
    timed shortly, recorded through the study's searcher as a completed trial with its checkpoint."""
    import ray
    from optuna.trial import TrialState

    from autoprune.config.spec import parse_spec
    from autoprune.model import records
    from autoprune.search import run as run_mod
    from autoprune.search.storage.study import get_storage, open_study_for
    from autoprune.search.strategy.context import RunContext
    from autoprune.search.strategy.recipe import add_recipe_trials

    spec = parse_spec({"name": "lean", "model": str(tiny_model_pt), "data": str(tiny_data), "imgsz": 64,
                       "finetune": {"batch": 8, "bn_batches": 1}, "targets": [{"params": 0.6}], "budget": 60,
                       "latency": {"warmup": 2, "runs": 30, "rounds": 6, "retries": 3}}, "s.yaml",
                      studies_dir=tmp_path / "studies")
    store = get_storage(spec.storage_url)
    study = open_study_for(spec, store)
    layers = run_mod._ensure_baseline(study, spec)
    assert records.baseline(study)["measure_s"] > 0  # the floor a run judges its search's size by
    ctx = RunContext(study, store, spec, layers=tuple(layers))
    made = add_recipe_trials(ctx, run_mod.main_job(spec, layers), [(spec.targets[0], 0.3)], in_process=True)
    assert not ray.is_initialized()
    (t,) = study.get_trials(deepcopy=False)
    assert made == [t.number] and t.state == TrialState.COMPLETE and len(t.values) == len(spec.objectives)
    rec = records.trial(t)
    assert rec.recipe["target"] == "params-40" and set(rec.policy["ratios"].values()) == {0.3}
    assert rec.metrics["params"] < records.baseline_metrics(study)["params"]
    assert rec.latency["rounds"] <= 4 and rec.latency["attempts"] == 1  # the short timing: no re-timing
    assert (tmp_path / "studies" / "lean" / "trials" / f"{t.number:05d}" / "pruned.pt").exists()
    assert t.user_attrs["finetune"]["optimizer_steps"] == 0


@pytest.mark.parametrize(("after", "recovered"), [(0.796, True), (0.8, True), (0.794, False)])
def test_a_recipe_model_is_recovered_when_back_within_the_dominance_margin_of_the_base(after, recovered):
    from autoprune.search.strategy.recovery import Recovery

    r = Recovery("params-50", 0, 30.0, 31.0, 0.01, 0.1, after, 0.8, "x.pt")
    assert r.recovered is recovered and r.to_dict()["recovered"] is recovered
    if recovered:
        assert r.recovery_s == 31.0  # measured: the probe's own time


def test_a_recipe_models_recovery_time_is_extrapolated_at_the_rate_the_probe_closed_its_gap():
    import math

    from autoprune.search.strategy.recovery import Recovery

    # the gap to the base fell from 0.64 to 0.04 (16x) in 30 s; below the 0.005 margin takes 128x: 30 s x 7/4
    r = Recovery("params-50", 0, 30.0, 30.0, 0.01, 0.16, 0.76, 0.8, "x.pt")
    assert r.recovery_s == pytest.approx(30.0 * math.log(128) / math.log(16)) and r.to_dict()["recovery_s"] == 52.5
    stuck = Recovery("params-50", 0, 30.0, 30.0, 0.01, 0.3, 0.25, 0.8, "x.pt")  # the probe lost ground
    assert stuck.recovery_s == math.inf and stuck.to_dict()["recovery_s"] is None


def test_the_recovery_probe_trains_the_largest_recipe_model_and_its_weights_start_that_target(tmp_path, tiny_data,
                                                                                              tiny_model_pt):
    """A real probe on a real study: the recipe's model with the most parameters is fine-tuned for the seconds
    asked, validated, saved and recorded on its trial; the final phase's entrant for it starts from those weights."""
    import torch

    from autoprune.config.spec import parse_spec
    from autoprune.deploy import deliver
    from autoprune.deploy.race import Entrant
    from autoprune.model import records
    from autoprune.search import run as run_mod
    from autoprune.search.storage.study import get_storage, open_study_for
    from autoprune.search.strategy.context import RunContext
    from autoprune.search.strategy.recipe import add_recipe_trials
    from autoprune.search.strategy.recovery import probe_recovery

    spec = parse_spec({"name": "probe", "model": str(tiny_model_pt), "data": str(tiny_data), "imgsz": 64,
                       "budget": 60, "finetune": {"batch": 8, "bn_batches": 1},
                       "targets": [{"params": 0.6}, {"params": 0.4}], "latency": {"runs": 3, "rounds": 1}}, "s.yaml",
                      studies_dir=tmp_path / "studies")
    store = get_storage(spec.storage_url)
    study = open_study_for(spec, store)
    layers = run_mod._ensure_baseline(study, spec)
    ctx = RunContext(study, store, spec, layers=tuple(layers))
    add_recipe_trials(ctx, run_mod.main_job(spec, layers), [(spec.targets[0], 0.3), (spec.targets[1], 0.5)],
                      in_process=True)
    rec = probe_recovery(study, spec, seconds=3.0)
    assert rec is not None and rec.target == "params-40" and rec.train_s > 0  # the larger model: 0.3 removed
    assert rec.base_val == records.baseline_metrics(study)["map50_95"] and 0.0 <= rec.val_after <= 1.0
    (trial,) = [t for t in study.get_trials(deepcopy=False) if t.number == rec.trial]
    assert records.recovery_probe(study, rec.trial)["checkpoint"] == rec.checkpoint
    entrant = deliver._probed(study, Entrant(trial, "recipe"))
    assert entrant.probe["trial"] == rec.trial and entrant.state is not None
    probed = torch.load(rec.checkpoint, weights_only=False)["model"].float().state_dict()
    assert all(torch.equal(entrant.state[k], probed[k]) for k in probed)
    other = next(t for t in study.get_trials(deepcopy=False) if t.number != rec.trial)
    assert deliver._probed(study, Entrant(other, "recipe")).state is None  # no probe: its own checkpoint
