"""Issue 11: fine-tuning that recovers, hard constraints, promotion by hypervolume contribution with the feedback
of fine-tuned results, screen-visible knobs, recipe knobs, rounds.

Studies here are real Optuna studies in SQLite; the searcher tests fake only Ray Tune's result dicts (the
payload a worker would report), as tests/test_failures.py does.
"""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.trial import TrialState

from autoprune.config.spec import parse_spec
from autoprune.errors import InputError, SpecError
from autoprune.model import Layer
from autoprune.model.constraints import constraint_values, feasible
from autoprune.model.sampling import recipe_params, sample_policy, screen_space, screen_visible
from autoprune.search.execution.executor import PAYLOAD_KEY, StudySearcher
from autoprune.search.run import main_job
from autoprune.search.storage.front import read_front, sync_front
from autoprune.search.storage.study import get_storage, open_study_for
from autoprune.search.strategy.plan import round_sizes
from autoprune.search.strategy.promotion import promotion_choice, recovery_gain

LAYERS = [Layer("model.0", 16, "backbone"), Layer("model.12.cv1", 32, "neck")]
BASE = {"map50_95": 0.8, "map50": 0.95, "params": 3.0e6, "macs": 2.0e8, "latency_ms": 10.0}


def _spec(tmp_path, **over):
    raw = {"name": "c", "model": "m.pt", "data": "d.yaml", "storage": f"sqlite:///{tmp_path}/s.db", **over}
    return parse_spec(raw, "s.yaml", studies_dir=tmp_path)


def _payload(map50_95, params):
    m = {**BASE, "map50_95": map50_95, "params": params}
    return {PAYLOAD_KEY: json.dumps({"ok": True, "metrics": m, "attrs": {}, "reason": ""})}


def test_constraint_values_and_feasibility():
    v = constraint_values({"map50_95": 0.3, "params": 2e6}, BASE, 0.5, {"params": 1.5e6})
    assert v == pytest.approx({"map_floor": 0.1, "params": 0.5e6}) and not feasible(v)
    assert feasible(constraint_values({"map50_95": 0.5, "params": 1e6}, BASE, 0.5, {"params": 1.5e6}))
    assert constraint_values({"map50_95": 0.0}, BASE, 0.0, {}) == {}  # floor 0: no constraint
    assert constraint_values({}, BASE, 0.0, {"macs": 1.0})["macs"] == float("inf")  # a missing metric violates


@pytest.mark.parametrize("raw,message", [
    ({"map_floor": 1.5}, "constraints.map_floor: 1.5 is a fraction"),
    ({"map_floor": -0.1}, "constraints.map_floor: must be >= 0"),
    ({"params": 0}, "constraints.params: must be > 0"),
    ({"fps": 3}, "constraints.fps: unknown key"),
])
def test_bad_constraints_name_the_field(tmp_path, raw, message):
    with pytest.raises(SpecError, match=message):
        _spec(tmp_path, constraints=raw)


def test_infeasible_trials_stay_in_the_study_but_off_the_front_and_exports(tmp_path):
    from autoprune.deploy.export import knee_trial, select_trial

    spec = _spec(tmp_path, constraints={"map_floor": 0.5, "params": 2.5e6})
    store = get_storage(spec.storage_url)
    study = open_study_for(spec, store)
    study.set_user_attr("baseline", BASE)
    s = StudySearcher(study, store, main_job(spec, LAYERS), n_trials=4)
    cfg = {tid: s.suggest(tid) for tid in "abcd"}
    s.on_trial_complete("a", _payload(0.7, 2.0e6))  # feasible
    s.on_trial_complete("b", _payload(0.05, 0.2e6))  # collapsed: below 0.5 x 0.8, but smallest
    s.on_trial_complete("c", _payload(0.79, 2.9e6))  # over the params budget, best mAP
    s.on_trial_complete("d", _payload(0.6, 1.0e6))  # feasible
    trials = {t.number: t for t in study.get_trials()}
    num = {k: cfg[k]["number"] for k in cfg}
    assert all(trials[num[k]].state == TrialState.COMPLETE for k in "abcd")  # kept, marked
    assert not feasible(trials[num["b"]].constraints) and not feasible(trials[num["c"]].constraints)
    front = {t.number for t in study.best_trials}
    assert front == {num["a"], num["d"]}
    sync_front(study, store)
    assert {r["trial_number"] for r in read_front(store.engine, "c")} == front
    assert select_trial(study, best="map50_95").number == num["a"]  # c has a higher mAP but is infeasible
    assert select_trial(study, best="params").number == num["d"]  # b is smaller but collapsed
    assert knee_trial(study).number in front
    with pytest.raises(InputError, match="no completed trial matches"):
        select_trial(study, best="map50_95", where=["params<=5e5"])


def test_promotion_by_hypervolume_contribution_leaves_collapsed_candidates_last():
    cands = [{"map50_95": 0.02, "params": 0.3e6, "macs": 0.2e8},  # collapsed, smallest
             {"map50_95": 0.70, "params": 1.5e6, "macs": 1.0e8},
             {"map50_95": 0.60, "params": 1.0e6, "macs": 0.7e8},
             {"map50_95": 0.69, "params": 1.6e6, "macs": 1.1e8}]  # dominated by #1
    order = promotion_choice(cands, [], BASE, map_floor=0.5, gain=0.0, n=4)
    assert set(order[:2]) == {1, 2} and order[-1] in (0, 3) and 0 not in order[:2]
    # the old rule (non-dominated rank first) would promote the collapsed candidate among the first
    from autoprune.model.pareto import promotion_order

    assert 0 in promotion_order(cands, ["map50_95", "params", "macs"])[:3]


def test_fine_tuned_results_feed_promotion():
    """A candidate whose screen mAP is under the floor contributes once fine-tuning has shown it recovers."""
    low = [{"map50_95": 0.35, "params": 0.5e6, "macs": 0.4e8}, {"map50_95": 0.30, "params": 0.6e6, "macs": 0.5e8}]
    assert promotion_choice(low, [], BASE, 0.5, gain=0.0, n=1) == [0]  # only by rank: nothing contributes
    front = [{"map50_95": 0.75, "params": 1.2e6, "macs": 1.0e8}]
    assert promotion_choice(low, front, BASE, 0.5, gain=0.2, n=2) == [0, 1]
    study = optuna.create_study(directions=["maximize", "minimize"])
    for screen, final in ((0.3, 0.6), (0.5, 0.6), (0.2, 0.7)):
        t = study.ask()
        t.set_user_attr("screen", {"trial": 0, "map50_95": screen, "map50": 0.9})
        t.set_user_attr("metrics", {"map50_95": final})
        study.tell(t, [final, 1.0])
    assert recovery_gain(study.trials) == pytest.approx(0.3)
    assert recovery_gain([]) == 0.0


def test_screens_fix_only_channel_choices_and_recipe_knobs_are_the_recipes(tmp_path):
    spec = _spec(tmp_path, space={"criteria": ["l1", "l2"], "lr": {"low": 1e-3, "high": 0.05, "log": True},
                                  "iterations": {"low": 1, "high": 3}, "epochs": {"low": 1, "high": 3},
                                  "ema": [False, True], "schedule": ["linear", "cosine"],
                                  "round_to": [1, 8]})
    ss = screen_space(spec.space)
    study = optuna.create_study(directions=["maximize", "minimize"])
    t = study.ask()
    sample_policy(t, ss, LAYERS)
    assert set(t.params) <= {"ratio/model.0", "ratio/model.12", "criterion", "round_to"}  # no fine-tune knob
    visible = screen_visible({**t.params, "lr": 0.1, "ema": False})
    assert "lr" not in visible and "ema" not in visible and "criterion" in visible
    assert recipe_params(spec.space) == {"lr": 0.01, "ema": True, "iterations": 1, "epochs": 3, "schedule": "cosine"}
    assert recipe_params(spec.space, ("criterion", "round_to")) == {"criterion": "l2", "round_to": 8}


def test_round_sizes():
    assert round_sizes(16, 2) == [8, 8] and round_sizes(5, 2) == [3, 2] and round_sizes(1, 3) == [1]
    assert sum(round_sizes(7, 3)) == 7
