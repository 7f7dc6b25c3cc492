"""Progressive delivery (autoprune.deploy.chain): the order of the targets, the time split, and a recipe model
continued from an earlier delivery by real channel removal on the tiny model."""

from __future__ import annotations

import optuna
import pytest
import torch

from autoprune.adapters import yolo
from autoprune.config.sections import TrialSettings
from autoprune.deploy import chain
from autoprune.engine.uniform import uniform_prune, unit_channels
from autoprune.model import records
from autoprune.model.budget import Target

P50, P70, L50 = Target((("params", 0.5),)), Target((("params", 0.3),)), Target((("latency_ratio", 0.5),))


def test_the_chain_runs_from_the_largest_model_to_the_smallest_and_keeps_the_specs_order_on_ties():
    sizes = {P70: 300.0, P50: 500.0, L50: 300.0}
    assert chain.chain_order([P70, L50, P50], sizes) == [P50, P70, L50]
    assert chain.chain_order([L50, P70, P50], sizes) == [P50, L50, P70]


@pytest.mark.parametrize(("left", "pending", "share", "chained", "want"), [
    (120.0, 3, None, True, 40.0),  # by default every target an equal part, the chain's first too
    (120.0, 3, 0.5, True, 60.0),   # with a first share: the chain's first gets that share of what is left
    (120.0, 3, 0.5, False, 40.0),  # a later target, or no chain: equal parts
    (60.0, 2, 0.5, False, 30.0),
    (90.0, 1, 0.5, True, 90.0),    # the last (or only) target gets all that is left
])
def test_each_target_gets_an_equal_part_unless_the_chains_first_has_a_share(left, pending, share, chained, want):
    assert chain.first_seconds(left, pending, share, chained) == pytest.approx(want)


@pytest.mark.parametrize(("left", "pending", "chained", "floor", "want"), [
    (120.0, 3, True, 55.0, 55.0),   # the chain's first gets its floor (the recipe's part) over its equal part
    (120.0, 3, True, 30.0, 40.0),   # a floor under the equal part changes nothing
    (120.0, 3, True, 100.0, 80.0),  # at most what leaves each later target half its equal part (20 of 40 s)
    (120.0, 3, False, 55.0, 40.0),  # a later target: equal parts whatever the floor
    (90.0, 1, True, 200.0, 90.0),   # the last target: all that is left
])
def test_the_chains_first_gets_at_least_its_floor_where_later_targets_keep_half_their_part(left, pending, chained,
                                                                                           floor, want):
    assert chain.first_seconds(left, pending, None, chained, floor=floor) == pytest.approx(want)


def _recipe_trial(channels, params, depth=0):
    """A finished study trial recording a recipe model's channels, parameters and policy (what the run's recipe
    trial records; the model itself is made by the test)."""
    study = optuna.create_study()
    t = study.ask()
    records.write_result(t, {"channels": channels, "policy": {"criterion": "l2", "depth": depth}},
                         {"map50_95": 0.1, "params": float(params)})
    study.tell(t, 0.1)
    return study.trials[0]


@pytest.fixture()
def settings(tiny_data, tiny_model_pt):
    return TrialSettings(model=str(tiny_model_pt), data=str(tiny_data), imgsz=64)


def _delivered(model, tmp_path):
    """``model`` given "trained" weights (the continued model must carry them, not the base's), saved as a
    delivery's checkpoint."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    return yolo.save_checkpoint(model, tmp_path / "delivered.pt")


def _recipe_at(ratio, settings, tiny_model_pt):
    """The recipe's model at ``ratio``: the model, its channels and its study trial."""
    recipe = yolo.load_model(tiny_model_pt)
    keep = uniform_prune(recipe, settings, ratio)
    return recipe, keep, _recipe_trial(keep, yolo.count_params(recipe))


def test_a_recipe_model_continues_from_a_larger_delivery_with_the_recipes_architecture(tmp_path, settings,
                                                                                      tiny_model_pt):
    torch.manual_seed(0)
    earlier = yolo.load_model(tiny_model_pt)
    uniform_prune(earlier, settings, 0.25)
    ckpt = _delivered(earlier, tmp_path)
    recipe, keep, trial = _recipe_at(0.5, settings, tiny_model_pt)
    link = chain.Earlier("params-75", 4, ckpt, unit_channels(earlier), 0)

    got = chain.inherit([link], trial, settings)

    assert got is not None and got.record["target"] == "params-75" and got.record["trial"] == 4
    assert got.record["params"] == yolo.count_params(recipe) < yolo.count_params(earlier)
    want = recipe.state_dict()
    assert set(got.state) == set(want)
    assert all(got.state[k].shape == want[k].shape for k in want)
    recipe.load_state_dict(dict(got.state))  # loads into the recipe trial's own model
    kept = got.state["model.0.conv.weight"]  # the first conv's surviving filters are the earlier delivery's
    first = earlier.state_dict()["model.0.conv.weight"]
    assert any(torch.equal(kept[0], first[i]) for i in range(first.shape[0]))


def test_no_continuation_from_a_delivery_with_other_blocks_and_none_from_a_narrower_one_uncapped(tmp_path, settings,
                                                                                                tiny_model_pt):
    small = yolo.load_model(tiny_model_pt)
    uniform_prune(small, settings, 0.6)
    ckpt = yolo.save_checkpoint(small, tmp_path / "delivered.pt")
    recipe = yolo.load_model(tiny_model_pt)
    keep = uniform_prune(recipe, settings, 0.3)
    trial = _recipe_trial(keep, yolo.count_params(recipe))
    narrower = chain.Earlier("params-30", 1, ckpt, unit_channels(small), 0)
    assert chain.inherit([narrower], trial, settings, capped=False) is None
    other_blocks = chain.Earlier("params-30", 1, ckpt, unit_channels(small), 1)
    assert chain.inherit([other_blocks], trial, settings) is None


def test_a_narrower_delivery_is_pruned_on_to_the_narrower_of_the_two_in_every_layer(tmp_path, settings,
                                                                                   tiny_model_pt):
    """The search's pick delivered first can be narrower than a later target's recipe model in some layers and wider
    in others: the later target's start is that delivery with no layer wider than either (so no more parameters than
    the recipe's model), carrying the delivery's trained filters."""
    torch.manual_seed(0)
    earlier = yolo.load_model(tiny_model_pt)
    channels = unit_channels(earlier)
    names = list(channels)
    keep_earlier = {n: (max(1, c // 4) if i < len(names) // 2 else c) for i, (n, c) in enumerate(channels.items())}
    from autoprune.engine.pipeline import prune_once

    prune_once(earlier, settings, "l2", keep_earlier, regularize=False)
    ckpt = _delivered(earlier, tmp_path)
    recipe, keep, trial = _recipe_at(0.5, settings, tiny_model_pt)
    link = chain.Earlier("params-50", 3, ckpt, unit_channels(earlier), 0)

    got = chain.inherit([link], trial, settings)

    assert got is not None and got.state is None and got.model is not None
    want = {n: min(keep[n], keep_earlier[n]) for n in keep}
    assert dict(got.channels) == want != keep
    assert unit_channels(got.model) == want
    assert got.record["capped_layers"] == sum(1 for n in keep if keep_earlier[n] < keep[n]) > 0
    assert got.record["params"] == yolo.count_params(got.model) < yolo.count_params(recipe)
    kept = got.model.state_dict()["model.0.conv.weight"]  # the earlier delivery's (trained) filters survive
    first = earlier.state_dict()["model.0.conv.weight"]
    assert all(any(torch.equal(kept[j], first[i]) for i in range(first.shape[0])) for j in range(kept.shape[0]))


def test_the_latest_fitting_delivery_is_continued_from(tmp_path, settings, tiny_model_pt):
    links = []
    for i, ratio in enumerate((0.2, 0.6)):  # the latest is too narrow for the recipe model at 0.4
        m = yolo.load_model(tiny_model_pt)
        uniform_prune(m, settings, ratio)
        links.append(chain.Earlier(f"t{i}", i, yolo.save_checkpoint(m, tmp_path / f"d{i}.pt"), unit_channels(m), 0))
    recipe = yolo.load_model(tiny_model_pt)
    keep = uniform_prune(recipe, settings, 0.4)
    got = chain.inherit(links, _recipe_trial(keep, yolo.count_params(recipe)), settings)
    assert got is not None and got.record["target"] == "t0"


def test_a_capped_continuation_becomes_a_measured_trial_that_is_not_the_searchs_pick(tmp_path, tiny_data,
                                                                                      tiny_model_pt):
    """continued_trial on a real SQLite study and the tiny model: the capped model is saved, validated, counted and
    timed against the base, recorded with its own channels and the candidate's policy, and left out of the search's
    picks (it is neither the search's nor the recipe's)."""
    from autoprune.config.spec import parse_spec
    from autoprune.search.storage.study import get_storage, open_study_for
    from autoprune.search.strategy.plan import searched
    from autoprune.search.strategy.targets import trial_for_target

    url = f"sqlite:///{tmp_path}/studies/autoprune.db"
    spec = parse_spec({"name": "capped", "model": str(tiny_model_pt), "data": str(tiny_data), "imgsz": 64,
                       "storage": url, "latency": {"runs": 6, "rounds": 2, "warmup": 1, "retries": 0}}, "s.yaml",
                      studies_dir=tmp_path / "studies")
    study = open_study_for(spec, get_storage(url))
    base = yolo.load_model(tiny_model_pt)
    original = unit_channels(base)
    study.set_user_attr("baseline", {"model": str(tiny_model_pt), "data": str(tiny_data), "imgsz": 64,
                                     "map50_95": 0.5, "params": float(yolo.count_params(base))})
    study.set_user_attr("layers", [[n, c, "backbone"] for n, c in original.items()])
    recipe = yolo.load_model(tiny_model_pt)
    keep = uniform_prune(recipe, spec.trial_settings, 0.3)
    t = study.ask()
    records.write_result(t, {"channels": keep, "policy": {"ratios": dict.fromkeys(keep, 0.3), "criterion": "l2"}},
                         {"map50_95": 0.1, "params": float(yolo.count_params(recipe))})
    study.tell(t, [0.1, float(yolo.count_params(recipe)), 0.7])
    candidate = study.trials[0]
    small = yolo.load_model(tiny_model_pt)
    uniform_prune(small, spec.trial_settings, 0.6)
    link = chain.Earlier("params-40", 0, yolo.save_checkpoint(small, tmp_path / "d.pt"), unit_channels(small), 0)
    got = chain.inherit([link], candidate, spec.trial_settings)
    assert got is not None and got.model is not None

    made = chain.continued_trial(study, spec, candidate, got)

    rec = records.trial(made)
    assert made.number == 1 and made.state.name == "COMPLETE" and len(made.values) == 3
    assert rec.continued == {**got.record, "candidate": 0} and rec.recipe is None
    assert rec.channels == dict(got.channels) == unit_channels(small)
    assert rec.metrics["params"] == yolo.count_params(small) == made.values[1]
    assert 0 <= rec.metrics["map50_95"] <= 1 and rec.metrics["latency_ratio"] > 0
    assert yolo.count_params(yolo.load_model(rec.checkpoint)) == yolo.count_params(small)
    assert rec.policy["criterion"] == "l2"
    assert all(abs(rec.policy["ratios"][n] - (1 - c / original[n])) < 1e-6 for n, c in rec.channels.items())
    assert searched(study.get_trials()) == [study.trials[0]]  # the candidate (no recipe record here), not the copy
    assert trial_for_target(study, Target((("params", 0.99),)), searched_only=True).number == 0
