"""Budgets and targets: parsing, the ledger, target-driven promotion and choice, non-overlapping sampler seeds,
the refusal of an unreachable target, and a budgeted search through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from autoprune.config.spec import Overrides, parse_spec
from autoprune.errors import SpecError
from autoprune.model.budget import PHASES, Ledger, Target, format_duration, parse_duration
from autoprune.model.samplers import stream_seed
from autoprune.search.strategy.promotion import target_picks

BASE = {"map50_95": 0.8, "params": 1000.0, "macs": 5000.0}


@pytest.mark.parametrize("text,seconds", [(300, 300.0), ("300", 300.0), ("90s", 90.0), ("5m", 300.0),
                                          ("1.5h", 5400.0), (" 2m ", 120.0)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["5 minutes", "-5m", 0, "0s", True, "1e400", None, "40d"])
def test_bad_durations_are_refused(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_format_duration():
    assert format_duration(299.6) == "5m00s" and format_duration(3725) == "1h02m"


def test_target_meets_and_labels():
    t = Target((("params", 0.5),))
    assert t.label == "params-50" and t.params_cut == pytest.approx(0.5)
    assert t.meets({"params": 500.0}, BASE) and not t.meets({"params": 501.0}, BASE)
    assert not t.meets({"macs": 1.0}, BASE)  # a metric the model lacks does not meet the limit
    both = Target((("params", 0.3), ("latency_ratio", 0.8)))
    assert both.label == "params-70_latency_ratio-20"
    assert both.meets({"params": 300.0, "latency_ratio": 0.79}, BASE)
    assert not both.meets({"params": 300.0, "latency_ratio": 0.81}, BASE)


def test_ledger_phases_add_up_to_the_wall_time():
    ledger = Ledger(budget_s=100.0)
    ledger.charge("prepare", 3.0)
    ledger.charge("trials", 40.0)
    ledger.charge("trials", 10.0)
    ledger.charge("final", 30.0)
    ledger.close(wall_s=90.0)
    d = ledger.to_dict()
    assert set(d["charged_s"]) == set(PHASES)
    assert d["charged_s"]["trials"] == 50.0 and d["charged_s"]["other"] == pytest.approx(7.0)
    assert d["total_s"] == pytest.approx(90.0)
    with pytest.raises(ValueError):
        ledger.charge("coffee", 1.0)


def _spec(**extra):
    return parse_spec({"name": "b", "model": "m.pt", "data": "d.yaml", **extra}, "s.yaml")


def test_spec_budget_and_targets():
    s = _spec(budget="30m", targets=[{"params": 0.5}, {"params": 0.3}])
    assert s.budget.seconds == 1800.0 and s.budget.final_share == 0.5
    assert [t.label for t in s.targets] == ["params-50", "params-70"]
    s = _spec(budget={"seconds": "2h", "final_share": 0.3}, targets={"macs": 0.4})
    assert s.budget.seconds == 7200.0 and s.budget.final_share == 0.3 and s.targets[0].limits == (("macs", 0.4),)
    assert parse_spec({"name": "b", "model": "m.pt", "data": "d.yaml"}, "s.yaml",
                      Overrides(budget="90")).budget.seconds == 90.0
    assert _spec().budget.seconds is None and _spec().targets == ()
    # --budget sets the clock and keeps the spec's other budget knobs
    s = parse_spec({"name": "b", "model": "m.pt", "data": "d.yaml", "targets": {"params": 0.5},
                    "budget": {"seconds": 60, "final_share": 0.3, "direct": True}}, "s.yaml", Overrides(budget="2m"))
    assert (s.budget.seconds, s.budget.final_share, s.budget.direct) == (120.0, 0.3, True)
    assert s.budget.scan_share == 0.25 and _spec(budget={"seconds": 60, "scan_share": None}).budget.scan_share is None
    assert (s.budget.race_share, s.budget.race_lrs, s.budget.final_lr, s.budget.race_lr_low) == (0.3, 1, 0.01, 0.001)
    assert _spec(budget={"seconds": 60, "race_share": 0}).budget.race_share == 0


@pytest.mark.parametrize("extra,field", [
    ({"targets": {"params": 0.5}}, "targets: need a wall-clock budget"),
    ({"budget": "5m", "targets": {"params": 1.5}}, "targets.params"),
    ({"budget": "5m", "targets": {"flops": 0.5}}, "targets.flops: unknown key"),
    ({"budget": "5m", "targets": [{"params": 0.5}, {"params": 0.5}]}, "targets[1]: listed twice"),
    ({"budget": "5m", "targets": []}, "targets: expected"),
    ({"budget": "5m", "targets": [{}]}, "targets[0]: empty"),
    ({"budget": "soon"}, "budget.seconds"),
    ({"budget": {"seconds": 60, "final_share": 1.0}}, "budget.final_share"),
    ({"budget": {"seconds": 60, "scan_share": 0}}, "budget.scan_share"),
    ({"budget": {"seconds": 60, "scan_share": 1.5}}, "budget.scan_share"),
    ({"budget": {"seconds": 60, "fit_lr": True}}, "budget.fit_lr: unknown key"),
    ({"budget": {"seconds": 60, "race_share": 0.95}}, "budget.race_share"),
    ({"budget": {"seconds": 60, "race_lrs": 0}}, "budget.race_lrs"),
    ({"budget": {"seconds": 60, "final_lr": 0.001, "race_lrs": 2}}, "budget.race_lr_low: 0.001 must be below final_lr"),
    ({"budget": {"seconds": 60, "final_lr": 2}}, "budget.final_lr"),
])
def test_bad_budgets_and_targets_name_their_field(extra, field):
    with pytest.raises(SpecError, match=field.replace("[", r"\[").replace("]", r"\]")):
        _spec(**extra)


def test_seed_streams_do_not_overlap():
    # the old seed + n made seed s+1 at n trials equal seed s at n+1: every seed replayed its neighbour shifted by one
    seeds = {stream_seed(s, n) for s in range(8) for n in range(50)}
    assert len(seeds) == 8 * 50
    assert stream_seed(1, 0) != stream_seed(0, 1) and stream_seed(0, 0, 1) != stream_seed(0, 1, 0)
    assert stream_seed(3, 4) == stream_seed(3, 4)  # a stream is reproducible


def test_studies_of_neighbouring_seeds_draw_distinct_policies(tmp_path):
    """Each search run reopens the study (as a benchmark running one trial per run does): the sampler is seeded from
    (seed, trials there); seeds 0-3 over 5 runs each must not share a draw."""
    from autoprune.search.storage.study import StudyOptions, get_storage, open_study

    store = get_storage(f"sqlite:///{tmp_path}/s.db")
    sampler = _spec(sampler="random").sampler
    draws = []
    for seed in range(4):
        for _ in range(5):
            study = open_study(StudyOptions(f"s{seed}", ("map50_95", "params"), sampler, seed), store)
            t = study.ask()
            draws.append(t.suggest_float("r", 0.0, 1.0))
            study.tell(t, [0.5, 1.0])
    assert len(set(draws)) == len(draws)


def test_target_picks_put_each_targets_best_first():
    candidates = [{"map50_95": 0.9, "params": 900.0}, {"map50_95": 0.7, "params": 480.0},
                  {"map50_95": 0.75, "params": 450.0}, {"map50_95": 0.6, "params": 290.0},
                  {"map50_95": 0.5, "params": 200.0}]
    targets = [Target((("params", 0.5),)), Target((("params", 0.3),))]
    assert target_picks(candidates, BASE, targets) == [2, 3]
    assert target_picks(candidates, BASE, targets, taken=[2]) == [1, 3]
    assert target_picks(candidates, BASE, [Target((("params", 0.1),))]) == []


def test_trial_for_target_picks_the_best_feasible_that_meets_it():
    from autoprune.deploy.deliver import trial_for_target
    from autoprune.model import records

    study = optuna.create_study(directions=["maximize", "minimize"])
    records.set_baseline(study, {"map50_95": 0.8, "params": 1000.0})
    for m, p, feasible in ((0.79, 900.0, True), (0.7, 500.0, True), (0.75, 400.0, False), (0.6, 300.0, True)):
        t = study.ask()
        records.write_result(t, {}, {"map50_95": m, "params": p})
        t.set_constraint("map_floor", 0.0 if feasible else 1.0)
        study.tell(t, [m, p])
    assert trial_for_target(study, Target((("params", 0.5),))).number == 1  # 0.75 at 400 is infeasible
    assert trial_for_target(study, Target((("params", 0.3),))).number == 3
    assert trial_for_target(study, Target((("params", 0.2),))) is None
    for m, p in ((0.705, 420.0), (0.69, 480.0)):  # two more that meet -50%: better but smaller, worse but larger
        t = study.ask()
        records.write_result(t, {}, {"map50_95": m, "params": p})
        t.set_constraint("map_floor", 0.0)
        study.tell(t, [m, p])
    half = Target((("params", 0.5),))
    assert trial_for_target(study, half).number == 4  # the best mAP
    assert trial_for_target(study, half, tolerance=0.02).number == 1  # the largest within 2 points of it: 500
    assert trial_for_target(study, half, tolerance=0.003).number == 4  # 0.7 is 0.005 below: outside


def test_each_target_races_the_searchs_own_pick_against_its_own_recipe_model():
    """The search's pick leaves the hand recipe's models out (a recipe model made for a deeper cut also meets a
    shallower one, but it is not the search's); each target's recipe model is its own; none: the pick alone."""
    from autoprune.deploy.deliver import target_entrants
    from autoprune.model import records

    study = optuna.create_study(directions=["maximize", "minimize"])
    records.set_baseline(study, {"map50_95": 0.8, "params": 1000.0})
    for m, p, recipe in ((0.70, 700.0, None), (0.75, 450.0, ("params-50", 0.30)), (0.72, 790.0, ("params-20", 0.1))):
        if recipe:
            study.enqueue_trial({}, user_attrs=records.recipe_attrs(*recipe))
        t = study.ask()
        records.write_result(t, {}, {"map50_95": m, "params": p})
        study.tell(t, [m, p])
    shallow, deep, deeper = (Target((("params", f),)) for f in (0.8, 0.5, 0.3))
    assert [(e.trial.number, e.source) for e in target_entrants(study, shallow)] == [(0, "search"), (2, "recipe")]
    assert [(e.trial.number, e.source) for e in target_entrants(study, deep)] == [(1, "recipe")]
    assert target_entrants(study, deeper) == []


def test_the_searchs_pick_is_no_slower_than_the_recipes_model_beyond_the_races_margin():
    """A pick measured more than 10% slower than the recipe's model at the target does not race it (the recipe's
    model, trained as long, would catch up on mAP and stay faster); with budget.as_fast_as_recipe false it does."""
    from autoprune.deploy.deliver import target_entrants
    from autoprune.model import records

    study = optuna.create_study(directions=["maximize", "minimize"])
    records.set_baseline(study, {"map50_95": 0.8, "params": 1000.0})
    # (mAP, params, latency ratio, recipe?): the best pick is 30% slower; the next is 8% slower; the recipe's model
    for m, p, lat, recipe in ((0.78, 480.0, 0.87, None), (0.74, 470.0, 0.70, None), (0.30, 490.0, 0.645, True)):
        if recipe:
            study.enqueue_trial({}, user_attrs=records.recipe_attrs("params-50", 0.3))
        t = study.ask()
        records.write_result(t, {}, {"map50_95": m, "params": p, "latency_ratio": lat})
        study.tell(t, [m, p])
    half = Target((("params", 0.5),))
    assert [(e.trial.number, e.source) for e in target_entrants(study, half)] == [(1, "search"), (2, "recipe")]
    assert [e.trial.number for e in target_entrants(study, half, as_fast=False)] == [0, 2]


def test_a_target_with_its_recipe_model_is_covered_whatever_that_models_map():
    """The recipe's model is what a target gets at worst, so a target that has one borrows no grace from the final
    fine-tunes, whatever it measured (below the map floor before its fine-tune, or a latency sized by a short timing
    and measured a little over the bound: here its parameters, over the bound)."""
    from autoprune.model import records
    from autoprune.search.strategy.targets import covered

    study = optuna.create_study(directions=["maximize", "minimize"])
    records.set_baseline(study, {"map50_95": 0.8, "params": 1000.0})
    half, third = Target((("params", 0.5),)), Target((("params", 0.3),))
    assert not covered(study, [half])
    study.enqueue_trial({}, user_attrs=records.recipe_attrs("params-50", 0.3))
    t = study.ask()
    records.write_result(t, {}, {"map50_95": 0.01, "params": 520.0})
    study.tell(t, [0.01, 520.0])
    assert covered(study, [half]) and not covered(study, [half, third])


def _write_spec(tmp_path, tiny_data, tiny_model_pt, **extra):
    spec = {"name": "budgeted", "model": str(tiny_model_pt), "data": str(tiny_data), "imgsz": 64, "trials": 4,
            "space": {"ratio": {"low": 0.0, "high": 0.6, "step": 0.05}, "iterations": 1, "epochs": 1,
                      "round_to": [1]},
            "finetune": {"batch": 8, "bn_batches": 1}, "screening": {"factor": 2, "batches": 1},
            "sensitivity": {"probes": 0}, "latency": {"warmup": 0, "runs": 3, "rounds": 1},
            "resources": {"cpus": 1}, "constraints": {"map_floor": 0.0}, **extra}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _cli(tmp_path, *args, timeout=900):
    return subprocess.run([sys.executable, "-m", "autoprune", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=timeout)


def test_an_unreachable_target_is_refused_before_anything_is_written(tmp_path, tiny_data, tiny_model_pt):
    _write_spec(tmp_path, tiny_data, tiny_model_pt, budget="10m", targets={"params": 0.02})
    r = _cli(tmp_path, "search", "s.yaml")
    assert r.returncode == 2, r.stderr[-2000:]
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("autoprune: error: targets: params <= 0.02 x base is out of reach")
    assert "Traceback" not in r.stderr and not (tmp_path / "studies" / "autoprune.db").exists()


def test_a_bad_budget_flag_is_one_line(tmp_path, tiny_data, tiny_model_pt):
    _write_spec(tmp_path, tiny_data, tiny_model_pt)
    r = _cli(tmp_path, "search", "s.yaml", "--budget", "soon")
    assert r.returncode == 2 and r.stderr.strip().startswith("autoprune: error: budget.seconds: expected a duration")
    assert not (tmp_path / "studies").exists()


@pytest.mark.slow
def test_a_budgeted_search_delivers_a_finalized_model_per_target_within_its_budget(tmp_path, tiny_data,
                                                                                   tiny_model_pt):
    budget = 150
    # no recovery probe: the untrained tiny base scores 0, which any pruned model is back at, so it would end the
    # search this test is about
    _write_spec(tmp_path, tiny_data, tiny_model_pt, budget={"seconds": budget, "recovery_probe": False},
                targets=[{"params": 0.8}, {"params": 0.6}])
    r = _cli(tmp_path, "search", "s.yaml")
    assert r.returncode == 0, r.stderr[-3000:]
    study = optuna.load_study(study_name="budgeted", storage=f"sqlite:///{tmp_path}/studies/autoprune.db")
    from autoprune.model import records

    run = records.budget_runs(study)[-1]
    charged = run["charged_s"]
    assert run["budget_s"] == budget and sum(charged.values()) == pytest.approx(run["total_s"], abs=0.01)
    assert charged["prepare"] > 0 and charged["screens"] > 0 and charged["trials"] > 0 and charged["final"] > 0
    walls = [records.trial(t).wall_seconds for t in study.get_trials(deepcopy=False)]
    assert run["total_s"] <= budget + max(walls) + 15  # stops within one step (a trial) of its budget
    deliveries = records.deliveries(study)
    assert set(deliveries) == {"params-20", "params-40"}
    for label, d in deliveries.items():
        assert d["out_dir"], d
        folder = tmp_path / "studies" / "budgeted" / "final" / label
        assert {p.name for p in folder.iterdir()} >= {"policy.yaml", "pruned.pt", "pruned.onnx"}
        doc = yaml.safe_load((folder / "policy.yaml").read_text())
        assert doc["finalize"]["seconds"] > 0 and doc["finalize"]["epochs"] >= 1
        assert d["params_ratio"] <= 1 - int(label.split("-")[1]) / 100 + 1e-9
        assert f"target {label}: trial {d['trial']}" in r.stdout
        marked = study.trials[d["trial"]].user_attrs["delivered"][label]  # on the trial, for the dashboard
        assert marked["out_dir"] == d["out_dir"] and marked["val_map50_95"] == d["after"]["val"]["map50_95"]
    assert "budget 2m30s: spent" in r.stdout
    front = _cli(tmp_path, "front", "--study", "budgeted", "--format", "json")
    rows = json.loads(front.stdout)
    marked = {lab for row in rows for lab in (row.get("target") or "").split(",") if lab}
    assert marked <= set(deliveries) and marked  # the finalized members are marked on the front


@pytest.mark.slow
def test_allocation_only_screens_nothing_but_the_allocations(tmp_path, tiny_data, tiny_model_pt):
    _write_spec(tmp_path, tiny_data, tiny_model_pt, name="alloc", trials=2,
                sensitivity={"probes": 1, "sweep": 2, "candidates": 3},
                screening={"factor": 2, "batches": 1, "proposals": False, "rounds": 2})
    r = _cli(tmp_path, "search", "s.yaml")
    assert r.returncode == 0, r.stderr[-3000:]
    url = f"sqlite:///{tmp_path}/studies/autoprune.db"
    screen = optuna.load_study(study_name="alloc-screen", storage=url)
    sources = [t.user_attrs.get("warm_start", "") for t in screen.trials]
    assert sources and all(s.startswith("allocation (") for s in sources)  # no sampler proposal, no warm start
    main = optuna.load_study(study_name="alloc", storage=url)
    assert len(main.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 2


def test_the_final_time_goes_to_the_targets_that_have_a_winner(monkeypatch):
    import time as _time

    from autoprune.deploy import deliver
    from autoprune.model import records

    study = optuna.create_study(directions=["maximize", "minimize"])
    records.set_baseline(study, {"map50_95": 0.8, "params": 1000.0})
    t = study.ask()
    records.write_result(t, {}, {"map50_95": 0.7, "params": 450.0})
    study.tell(t, [0.7, 450.0])
    spec = _spec(budget="100s", targets=[{"params": 0.3}, {"params": 0.5}])
    given = {}

    def fake_deliver(study, store, spec, target, entrants, seconds, links):  # fakes the race and final fine-tune
        given[target.label] = (entrants[0].trial.number, seconds)
        return deliver.Delivered(target, trial=entrants[0].trial.number, out_dir=None)
    monkeypatch.setattr(deliver, "_deliver", fake_deliver)
    from autoprune.search.strategy.plan import Plan

    outcome = deliver.SearchOutcome(study=study, spec=spec, new_trials=1, store=None)
    plan = Plan(deadline=_time.time(), ledger=Ledger(budget_s=100.0), started=_time.perf_counter() - 40.0)
    out = deliver._finalize_targets(outcome, spec, plan)
    assert [d.reason for d in out] == ["no trial reached it within the budget", None]
    assert given["params-50"][0] == 0 and given["params-50"][1] == pytest.approx(60.0, abs=1.0)  # all of the rest
    assert records.deliveries(study)["params-70"]["reason"].startswith("no trial reached it")


def test_a_round_may_borrow_grace_only_while_a_target_is_uncovered():
    from autoprune.model import records
    from autoprune.search.strategy.plan import Plan

    study = optuna.create_study(directions=["maximize", "minimize"])
    records.set_baseline(study, {"map50_95": 0.8, "params": 1000.0})
    spec = _spec(budget="100s", targets=[{"params": 0.5}])
    clock = Plan(deadline=100.0, ledger=Ledger(), started=0.0, grace=125.0)
    assert clock.round_deadline(study, spec) == 125.0  # nothing meets -50% yet
    t = study.ask()
    records.write_result(t, {}, {"map50_95": 0.7, "params": 900.0})
    study.tell(t, [0.7, 900.0])
    assert clock.round_deadline(study, spec) == 125.0  # still not at the target's size
    t = study.ask()
    records.write_result(t, {}, {"map50_95": 0.6, "params": 480.0})
    study.tell(t, [0.6, 480.0])
    assert clock.round_deadline(study, spec) == 100.0
    assert Plan(deadline=100.0, ledger=Ledger(), started=0.0).round_deadline(study, _spec()) == 100.0


def test_patience_hands_the_search_share_to_the_final_once_no_winner_improves():
    """``budget.patience: 1``: the round plan stops after a round in which no target's winner got better; without
    it (0) the rounds go on. The rounds are driven by hand: each "round" adds a completed trial to the study."""
    import time as _time

    from autoprune.model import records
    from autoprune.search.strategy.plan import Plan
    from autoprune.search.strategy.plan import round_plan as _round_plan

    def add(study, m, p):
        t = study.ask()
        records.write_result(t, {}, {"map50_95": m, "params": p})
        study.tell(t, [m, p])

    def rounds(patience):
        study = optuna.create_study(directions=["maximize", "minimize"])
        records.set_baseline(study, {"map50_95": 0.8, "params": 1000.0})
        spec = _spec(budget={"seconds": 1000, "patience": patience}, targets=[{"params": 0.5}])
        plan = _round_plan(study, spec, 100, Plan(deadline=_time.time() + 1000, ledger=Ledger(), started=0.0))
        sizes = [next(plan)]  # round 1: nothing meets the target yet
        for m, p in ((0.6, 480.0), (0.7, 450.0), (0.65, 400.0), (0.69, 300.0)):  # better, better, worse, worse
            add(study, m, p)
            sizes.append(next(plan, None))
        return sizes

    assert rounds(1) == [2, 2, 2, None, None]  # the round after the first that did not improve the winner stops it
    assert rounds(2) == [2, 2, 2, 2, None]
    assert rounds(0) == [2, 2, 2, 2, 2]


def test_patience_is_read_and_checked():
    assert _spec(budget={"seconds": 60, "patience": 3}).budget.patience == 3
    assert _spec(budget="60s").budget.patience == 0
    with pytest.raises(SpecError, match="budget.patience"):
        _spec(budget={"seconds": 60, "patience": -1})


def test_direct_is_read_and_needs_targets_and_screens():
    s = _spec(budget={"seconds": 60, "direct": True}, targets={"params": 0.5})
    assert s.budget.direct is True and _spec(budget="60s").budget.direct is False
    with pytest.raises(SpecError, match="budget.direct: needs targets"):
        _spec(budget={"seconds": 60, "direct": True})
    with pytest.raises(SpecError, match=r"budget.direct: needs screening \(screening.factor >= 2\)"):
        _spec(budget={"seconds": 60, "direct": True}, targets={"params": 0.5}, screening={"factor": 0})
    with pytest.raises(SpecError, match="budget.direct"):
        _spec(budget={"seconds": 60, "direct": "yes please"}, targets={"params": 0.5})


def test_direct_runs_one_trial_per_target_and_more_only_for_an_uncovered_target():
    """``budget.direct``'s round plan, driven by hand: each "round" adds completed trials to the study."""
    import time as _time

    from autoprune.model import records
    from autoprune.search.strategy.plan import Plan
    from autoprune.search.strategy.plan import direct_plan as _direct_plan

    def add(study, m, p):
        t = study.ask()
        records.write_result(t, {}, {"map50_95": m, "params": p})
        study.tell(t, [m, p])

    def fresh():
        study = optuna.create_study(directions=["maximize", "minimize"])
        records.set_baseline(study, {"map50_95": 0.8, "params": 1000.0})
        return study

    spec = _spec(budget={"seconds": 1000, "direct": True}, targets=[{"params": 0.5}, {"params": 0.3}])
    now = _time.time()
    study = fresh()
    plan = _direct_plan(study, spec, 100, Plan(deadline=now + 1000, ledger=Ledger(), started=0.0))
    assert next(plan) == 2
    add(study, 0.7, 480.0)
    add(study, 0.6, 290.0)
    assert next(plan, None) is None  # both targets met: no second round
    study = fresh()
    plan = _direct_plan(study, spec, 100, Plan(deadline=now + 1000, ledger=Ledger(), started=0.0))
    assert next(plan) == 2
    add(study, 0.7, 480.0)
    add(study, 0.65, 450.0)
    assert next(plan) == 1  # -70% has no trial yet: one more, for it alone
    add(study, 0.6, 290.0)
    assert next(plan, None) is None
    study = fresh()  # past the clock's deadline (and no grace): an uncovered target gets no second round
    plan = _direct_plan(study, spec, 100, Plan(deadline=now - 1, ledger=Ledger(), started=0.0))
    assert next(plan) == 2
    add(study, 0.7, 480.0)
    assert next(plan, None) is None


@pytest.mark.parametrize("direct", [True, False])
def test_a_direct_round_measures_its_picks_even_past_the_deadline(monkeypatch, direct):
    """Fakes the screens and the trial runner (they record the deadline and job they are given; no model runs): on a
    clock whose deadline and grace have passed, a direct round's picks (adaptive BN, seconds) are still measured,
    since the screens that chose them were paid for, and only they (no sampled policy); a full search's fine-tuned
    trials keep the deadline."""
    import time as _time

    from autoprune.model import records
    from autoprune.search import run as run_mod
    from autoprune.search.strategy import promotion
    from autoprune.search.strategy.context import RunContext

    study = optuna.create_study(directions=["maximize", "minimize"])
    records.set_baseline(study, {"map50_95": 0.8, "params": 1000.0})
    spec = _spec(budget={"seconds": 100, "direct": direct}, targets=[{"params": 0.5}], sensitivity={"probes": 0})
    given: list[tuple[str, float | None]] = []

    def screen(ctx, size, **kw):
        given.append(("screens", kw["deadline"]))
        return study, set()
    monkeypatch.setattr(promotion, "screen_and_promote", screen)
    jobs = []

    def trials(study, store, job, n, **kw):
        jobs.append(job)
        given.append(("trials", kw["deadline"]))
    monkeypatch.setattr(run_mod, "run_trials", trials)
    now = _time.time()
    grace = now - 5 if direct else now + 60  # a full search starts no round past it: its clock still runs
    clock = run_mod.Plan(deadline=grace - 5, ledger=Ledger(budget_s=100), started=_time.perf_counter() - 50,
                          grace=grace)
    run_mod._screened_rounds(RunContext(study, None, spec), records.RunTimings(started="", ray_init_s=0.0), [], 1,
                             None, lambda text: None, clock)
    assert given[:2] == [("screens", grace), ("trials", None if direct else grace)]
    assert jobs[0].queued_only is direct  # a direct round runs its screened picks only, never a fresh draw


@pytest.mark.slow
def test_a_direct_budgeted_search_finalizes_each_targets_screened_pick_untrained(tmp_path, tiny_data, tiny_model_pt):
    # scan_share 4% (4.8 s from the scan's start): less than the calibration probes take, so the scan stops at its
    # deadline: no block probed, no allocation; 120 s: on a slow machine the screens of a 90-s run could start only
    # past the grace
    budget = 120
    _write_spec(tmp_path, tiny_data, tiny_model_pt, name="direct",
                budget={"seconds": budget, "direct": True, "scan_share": 0.04, "recovery_probe": False},  # (above)
                sensitivity={"probes": 2, "sweep": 2, "candidates": 3}, targets=[{"params": 0.8}, {"params": 0.6}])
    r = _cli(tmp_path, "search", "s.yaml")
    assert r.returncode == 0, r.stderr[-3000:]
    url = f"sqlite:///{tmp_path}/studies/autoprune.db"
    study = optuna.load_study(study_name="direct", storage=url)
    from autoprune.model import records

    every = study.get_trials(deepcopy=False)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in every)
    # the final phase may add a capped continuation (the earlier delivery pruned on to the narrower of it and a
    # candidate): a trial of its own, never a search pick
    continued = {t.number: records.trial(t).continued for t in every if records.trial(t).continued}
    every = [t for t in every if t.number not in continued]
    assert len(every) == 4 and len(continued) <= 2
    for t in every:  # pruned and BN-recalibrated: no gradient step before the final fine-tune
        trained = t.user_attrs["finetune"]
        assert trained["optimizer_steps"] == 0 and trained["kept"] == "adaptive_bn" and trained["finetuned"] is False
    trials = [t for t in every if records.trial(t).recipe is None]  # the screened picks, one per target
    assert len(trials) == 2 and all(records.trial(t).screen is not None for t in trials)
    recipes = {records.trial(t).recipe["target"]: t for t in every if records.trial(t).recipe}
    assert set(recipes) == {"params-20", "params-40"}  # the hand recipe's model at each target, measured alike
    for label, t in recipes.items():
        ratios = set(records.trial(t).policy["ratios"].values())
        assert ratios == {records.trial(t).recipe["ratio"]}  # uniform, at its exact ratio (off the space's grid)
        kept = records.trial(t).metrics["params"] / records.baseline_metrics(study)["params"]
        assert kept <= 1 - int(label.split("-")[1]) / 100 + 1e-9
    run = records.budget_runs(study)[-1]
    assert sum(run["charged_s"].values()) == pytest.approx(run["total_s"], abs=0.01)
    assert run["charged_s"]["final"] > 0 and run["charged_s"]["recipe"] > 0  # the recipe's models, made first
    assert run["scan_size"] == {"levels": 0, "allocations": 0} and run["charged_s"]["scan"] > 0
    scan = optuna.load_study(study_name=next(s for s in optuna.get_all_study_names(url)
                                             if s.startswith("sensitivity-")), storage=url)
    started = [t for t in scan.trials if t.state != optuna.trial.TrialState.WAITING]
    assert {(records.probe(t) or ("?",))[0] for t in scan.trials} <= {"-", "*"}  # calibration only: no block probe
    first = min(t.datetime_start.timestamp() for t in started)  # the scan's share counts from its start
    assert all(t.datetime_start.timestamp() <= first + 4.8 + 5 for t in started)  # none past the share (+ a write)
    sources = [t.user_attrs.get("warm_start", "") for t in optuna.load_study(study_name="direct-screen",
                                                                              storage=url).trials]
    assert not any(s.startswith("allocation (") for s in sources)  # nothing to allocate from
    deliveries = records.deliveries(study)
    assert set(deliveries) == {"params-20", "params-40"}
    for label, d in deliveries.items():  # the race chose between the target's screened pick and its recipe model
        doc = yaml.safe_load((tmp_path / "studies" / "direct" / "final" / label / "policy.yaml").read_text())
        assert doc["finalize"]["epochs"] >= 1 and d["params_ratio"] <= 1 - int(label.split("-")[1]) / 100 + 1e-9
        if d["trial"] not in continued:  # `apply --finetune` repeats the trial: adaptive BN, no training
            assert doc["source"]["finetuned"] is False
        race = doc["finalize"]["race"]
        # the pick races only where it is timed no more than the race's margin slower than the recipe's model (a
        # timing under load can leave it out): the entrants are what the study's measurements say
        from autoprune.deploy.deliver import target_entrants

        target = next(t for t in _spec(budget=budget, targets=[{"params": 0.8}, {"params": 0.6}]).targets
                      if t.label == label)
        entrants = {e.trial.number for e in target_entrants(study, target)}
        assert recipes[label].number in entrants and entrants <= {recipes[label].number} | {t.number for t in trials}
        if len(entrants) == 2 or "arms" in race:
            raced = {a["trial"] for a in race["arms"]}
            assert entrants <= raced <= entrants | set(continued) and d["trial"] in raced
            assert race["winner"]["trial"] == d["trial"] and doc["finalize"]["lr"] == race["winner"]["lr"]
        else:  # the recipe's model alone: nothing to race
            assert race["why"].startswith("one candidate") and d["trial"] == recipes[label].number
        source = continued.get(d["trial"], {}).get("candidate", d["trial"])  # a continuation: its candidate's
        assert d["source"] == ("recipe" if source == recipes[label].number else "search")
        assert source in {recipes[label].number} | {t.number for t in trials}  # its own recipe or a search pick


@pytest.mark.slow
def test_macs_and_latency_targets_get_allocations_and_recipe_models_sized_on_what_they_bound(tmp_path, tiny_data,
                                                                                          tiny_model_pt):
    """A MACs target's allocations are sized on counted MACs, a latency target's on pruned copies timed against the
    base; each has the hand recipe's model (the latency one's ratio found by timing copies); both are raced and
    delivered or say why not."""
    _write_spec(tmp_path, tiny_data, tiny_model_pt, name="speed",  # the scan at full size: one ratio per block
                budget={"seconds": 180, "direct": True, "scan_share": None, "recovery_probe": False},
                latency={"warmup": 1, "runs": 6, "rounds": 3},
                sensitivity={"probes": 1, "sweep": 2, "candidates": 0},
                targets=[{"macs": 0.6}, {"latency_ratio": 0.9}])
    r = _cli(tmp_path, "search", "s.yaml")
    assert r.returncode == 0, r.stderr[-3000:]
    url = f"sqlite:///{tmp_path}/studies/autoprune.db"
    from autoprune.model import records

    sources = [t.user_attrs.get("warm_start", "") for t in optuna.load_study(study_name="speed-screen",
                                                                              storage=url).trials]
    assert any(": MACs -40%" in s for s in sources) and any(": latency -10%" in s for s in sources), sources
    assert "(pruned and counted)" in r.stderr and "(pruned and timed)" in r.stderr
    study = optuna.load_study(study_name="speed", storage=url)
    recipes = {records.trial(t).recipe["target"]: records.trial(t) for t in study.get_trials(deepcopy=False)
               if records.trial(t).recipe}
    assert set(recipes) == {"macs-40", "latency_ratio-10"}
    base = records.baseline_metrics(study)
    assert recipes["macs-40"].metrics["macs"] <= 0.6 * base["macs"] and recipes["latency_ratio-10"].recipe["ratio"] > 0
    deliveries = records.deliveries(study)
    assert set(deliveries) == {"macs-40", "latency_ratio-10"}
    assert all(d["out_dir"] or d["reason"] for d in deliveries.values())
    assert deliveries["macs-40"]["out_dir"]  # MACs are counted: its allocations and recipe model meet it


def test_the_deliveries_table_says_which_target_was_delivered_how():
    """One line per target with a delivery record, in the targets' order: an undone fine-tune says so, a target
    with no model says why, one with no record is left out."""
    from autoprune.views.text import render_deliveries

    split = {"val": {"map50_95": 0.8}, "test": {"map50_95": 0.7}}
    deliveries: dict[str, dict[str, Any]] = {
        "params-50": {"out_dir": "f/params-50", "trial": 3, "params_ratio": 0.5, "epochs": 22,
                      "before": split, "after": split, "kept": "start"},
        "params-70": {"out_dir": "f/params-70", "trial": 5, "params_ratio": 0.3, "epochs": 25,
                      "before": split, "after": {"val": {"map50_95": 0.81}, "test": {"map50_95": 0.72}},
                      "kept": "fine-tuned", "continued_from": {"target": "params-50", "trial": 3}},
        "params-90": {"out_dir": None, "reason": "no trial reached it within the budget"}}
    lines = render_deliveries(deliveries, ["params-90", "params-50", "params-70", "params-95"])
    assert lines[0] == "target params-90: not delivered: no trial reached it within the budget"
    assert lines[1].startswith("target params-50: trial 3 params -50%, 22 final epochs (undone: it lowered val);")
    assert "val mAP50-95 0.8000 -> 0.8000" in lines[1]
    assert "undone" not in lines[2] and "test mAP50-95 0.7000 -> 0.7200" in lines[2] and len(lines) == 3
    assert "25 final epochs (continued from the params-50 delivery);" in lines[2]
    late = render_deliveries({"params-50": {**deliveries["params-50"], "epochs": 0}}, ["params-50"])
    assert "0 final epochs (no time left for it: delivered as measured)" in late[0]


def _study_with_recipe_models(wall_s: float, n: int = 2):
    """A study whose only completed trials are the hand recipe's models, each measured in ``wall_s`` seconds."""
    from autoprune.model import records

    study = optuna.create_study(directions=["maximize", "minimize"])
    records.set_baseline(study, {"map50_95": 0.8, "params": 1000.0})
    for i in range(n):
        study.enqueue_trial({}, user_attrs=records.recipe_attrs(f"params-{50 + i}", 0.3))
        t = study.ask()
        records.write_result(t, {"wall_seconds": wall_s}, {"map50_95": 0.5, "params": 480.0})
        study.tell(t, [0.5, 480.0])
    return study


def test_the_smallest_search_is_one_round_of_screens_and_trials_at_a_measurement_each():
    from autoprune.search.strategy.plan import measurement_s, smallest_search_s

    assert smallest_search_s(_spec(), 3.0) == 3.0 * (2 * 2 + 2)  # factor 2 x 2 screens, then 2 trials
    spec = _spec(resources={"concurrent": 4, "cpus": 0.5}, screening={"factor": 3})
    assert smallest_search_s(spec, 2.0) == 2.0 * (3 + 1)  # 12 screens and 4 trials, 4 at a time
    assert measurement_s(_study_with_recipe_models(7.5)) == 7.5
    assert measurement_s(optuna.create_study()) is None


def test_the_first_round_waits_for_no_measured_trial_when_a_measurement_says_it_cannot_fit():
    """Before any trial of the search, a round is sized on what the recipe's models took to measure (a floor under
    each screen and trial): with 10 s left and 7.5 s a measurement not even one trial and its screens fit."""
    import time as _time

    from autoprune.search.strategy.plan import Plan, round_plan

    spec = _spec(budget="100s", targets=[{"params": 0.5}])
    plan = round_plan(_study_with_recipe_models(7.5), spec, 100, Plan(deadline=_time.time() + 10, ledger=Ledger(),
                                                                        started=0.0))
    assert next(plan, None) is None
    plan = round_plan(_study_with_recipe_models(1.0), spec, 100, Plan(deadline=_time.time() + 10, ledger=Ledger(),
                                                                        started=0.0))
    assert next(plan) == 2  # 2 trials and their 4 screens: 6 s of 10


def test_a_search_that_cannot_fit_is_skipped_in_one_line_and_recorded(caplog):
    import logging
    import time as _time

    from autoprune.search import run as run_mod
    from autoprune.search.strategy.context import RunContext
    from autoprune.search.strategy.plan import Plan

    spec = _spec(budget="100s", targets=[{"params": 0.5}])
    ledger = Ledger(budget_s=100.0)
    ctx = RunContext(_study_with_recipe_models(7.5), None, spec)
    with caplog.at_level(logging.WARNING):
        assert not run_mod._search_fits(ctx, Plan(deadline=_time.time() + 30, ledger=ledger, started=0.0))
    assert ledger.search_skipped.startswith("the search's 30 s hold less than its smallest useful size (~45 s at 7.5")
    assert ledger.to_dict()["search_skipped"] == ledger.search_skipped
    assert [r.getMessage() for r in caplog.records if "no search" in r.getMessage()]
    assert run_mod._search_fits(ctx, Plan(deadline=_time.time() + 60, ledger=Ledger(), started=0.0))
    assert run_mod._search_fits(RunContext(optuna.create_study(), None, spec),  # nothing measured: no judgement
                                Plan(deadline=_time.time(), ledger=Ledger(), started=0.0))


def test_before_the_recipes_models_are_measured_the_baselines_measurement_judges_whether_a_search_fits(caplog):
    """Nothing measured yet but the baseline (validated and timed in 5 s, a floor under every measurement): the
    recipe's 2 models to measure first and the smallest search (4 screens, 2 trials) need 40 s; 30 s left do not
    hold it, 60 s do."""
    import time as _time

    from autoprune.model import records
    from autoprune.search import run as run_mod
    from autoprune.search.strategy.context import RunContext
    from autoprune.search.strategy.plan import Plan

    spec = _spec(budget="100s", targets=[{"params": 0.5}, {"params": 0.3}])
    study = optuna.create_study()
    records.set_baseline(study, {"map50_95": 0.8, "params": 1000.0, "measure_s": 5.0})
    ctx = RunContext(study, None, spec)
    ledger = Ledger(budget_s=100.0)
    assert not run_mod._search_fits(ctx, Plan(deadline=_time.time() + 30, ledger=ledger, started=0.0), pending=2)
    assert ledger.search_skipped.startswith("the search's 30 s hold less than its smallest useful size (~40 s, the "
                                            "recipe's 2 model(s) first at 5.0 s a measurement (the baseline's")
    assert run_mod._search_fits(ctx, Plan(deadline=_time.time() + 60, ledger=Ledger(), started=0.0), pending=2)
    assert run_mod._search_fits(ctx, Plan(deadline=_time.time() + 35, ledger=Ledger(), started=0.0))  # 30 s


def test_a_search_fits_only_where_the_recovery_probe_before_it_fits_too():
    """The probe runs as long as the smallest search (30 s at 5 s a measurement), out of the search's share: with it
    the two need 60 s; 45 s left hold the search alone, not both, and the skip names the probe."""
    import time as _time

    from autoprune.model import records
    from autoprune.search import run as run_mod
    from autoprune.search.strategy.context import RunContext
    from autoprune.search.strategy.plan import Plan

    spec = _spec(budget="100s", targets=[{"params": 0.5}])
    study = optuna.create_study()
    records.set_baseline(study, {"map50_95": 0.8, "params": 1000.0, "measure_s": 5.0})
    ctx = RunContext(study, None, spec)
    assert run_mod._search_fits(ctx, Plan(deadline=_time.time() + 45, ledger=Ledger(), started=0.0))
    ledger = Ledger(budget_s=100.0)
    assert not run_mod._search_fits(ctx, Plan(deadline=_time.time() + 45, ledger=ledger, started=0.0), probe=True)
    assert "(~60 s, the recovery probe's 30 s first at 5.0 s" in ledger.search_skipped
    assert run_mod._search_fits(ctx, Plan(deadline=_time.time() + 65, ledger=Ledger(), started=0.0), probe=True)


@pytest.mark.parametrize(("left", "calls", "fits"), [
    (10.0, [(3, True)], False),               # the baseline's floor (1 s a measurement) already rules a search out
    (60.0, [(1, False), (2, True)], False),   # the floor lets it; the first model (8 s) does not: the rest in-process
    (200.0, [(1, False), (2, False)], True),  # a search fits even at the measured 8 s: every model under Ray
])
def test_the_first_recipe_model_measured_judges_again_whether_the_others_go_to_ray(monkeypatch, left, calls, fits):
    """Fakes the recipe's sizing (three ratios) and its measurement (each model recorded as a recipe trial measured in
    8 s, under Ray or in this process as asked): the baseline, measured in 1 s, is a floor under a trial's cost."""
    import time as _time

    from autoprune.model import records
    from autoprune.search import run as run_mod
    from autoprune.search.strategy import recipe
    from autoprune.search.strategy.context import RunContext
    from autoprune.search.strategy.plan import Plan

    spec = _spec(budget="600s", targets=[{"params": 0.5}, {"params": 0.3}, {"params": 0.2}])
    study = optuna.create_study(directions=["maximize", "minimize"])
    records.set_baseline(study, {"map50_95": 0.8, "params": 1000.0, "measure_s": 1.0})
    made: list[tuple[int, bool]] = []

    def measured(ctx, job, wanted, in_process=False):
        made.append((len(wanted), in_process))
        for target, ratio in wanted:
            study.enqueue_trial({}, user_attrs=records.recipe_attrs(target.label, ratio))
            t = study.ask()
            records.write_result(t, {"wall_seconds": 8.0}, {"map50_95": 0.5, "params": 480.0})
            study.tell(t, [0.5, 480.0])
        return []

    monkeypatch.setattr(recipe, "recipe_ratios", lambda ctx: [(t, 0.3) for t in spec.targets])
    monkeypatch.setattr(recipe, "add_recipe_trials", measured)
    plan = Plan(deadline=_time.time() + left, ledger=Ledger(budget_s=600.0), started=0.0)
    assert run_mod._recipe_models(RunContext(study, None, spec), None, plan, lambda _: None) is fits
    assert made == calls and len(study.trials) == 3
    assert bool(plan.ledger.search_skipped) is not fits


def test_where_no_search_ran_the_chains_first_target_is_owed_the_recipes_part_less_the_probes_training():
    """300 s for 3 targets: the recipe has 100 s for each; the probe trained the first for 40 s: it is owed 60 s
    more, and the export's reserve, which a finalize keeps from its training and the recipe's part does not hold.
    Where a search ran, nothing beyond the equal part."""
    from autoprune.deploy.deliver import _recipe_part
    from autoprune.deploy.finalize import EXPORT_RESERVE_S
    from autoprune.search.strategy.plan import Plan

    assert EXPORT_RESERVE_S > 0
    spec = _spec(budget="300s", targets=[{"params": 0.5}, {"params": 0.3}, {"latency_ratio": 0.5}])
    ledger = Ledger(budget_s=300.0, search_skipped="no search", recovery={"train_s": 40.0})
    assert _recipe_part(spec, Plan(deadline=0.0, ledger=ledger, started=0.0)) == pytest.approx(60.0 + EXPORT_RESERVE_S)
    no_probe = Ledger(budget_s=300.0, search_skipped="no search")
    assert _recipe_part(spec, Plan(deadline=0.0, ledger=no_probe, started=0.0)) == pytest.approx(
        100.0 + EXPORT_RESERVE_S)
    searched = Ledger(budget_s=300.0, recovery={"train_s": 40.0})
    assert _recipe_part(spec, Plan(deadline=0.0, ledger=searched, started=0.0)) == 0.0


@pytest.mark.slow
def test_a_budget_too_small_for_a_search_delivers_the_recipes_models_and_ends_on_time(tmp_path, tiny_data,
                                                                                         tiny_model_pt):
    """screening.factor 100 makes the smallest search (200 screens and 2 trials) far larger than a 60-s budget's
    search share on any machine: the run makes the recipe's models, says in one line that it runs no search,
    delivers each target from its recipe model and ends within 10% + 20 s of its budget."""
    budget = 60
    _write_spec(tmp_path, tiny_data, tiny_model_pt, name="small", budget=budget, screening={"factor": 100},
                targets=[{"params": 0.8}, {"params": 0.6}])
    t0 = time.perf_counter()
    r = _cli(tmp_path, "search", "s.yaml")
    wall = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    from autoprune.model import records

    study = optuna.load_study(study_name="small", storage=f"sqlite:///{tmp_path}/studies/autoprune.db")
    run = records.budget_runs(study)[-1]
    assert run["search_skipped"] and "no search" in r.stderr and "no search:" in r.stdout
    # decided before the recipe's models were measured (from the baseline's measurement): measured in this process
    assert "the baseline's validation and timing" in run["search_skipped"] and "in this process" in r.stderr
    assert run["charged_s"]["scan"] == run["charged_s"]["screens"] == run["charged_s"]["trials"] == 0
    assert run["total_s"] <= 1.1 * budget + 20 and wall <= 1.1 * budget + 20 + 15  # + the interpreter's start
    assert all(records.trial(t).recipe for t in study.get_trials(deepcopy=False))
    deliveries = records.deliveries(study)
    assert set(deliveries) == {"params-20", "params-40"}
    for d in deliveries.values():
        assert d["out_dir"] and d["source"] == "recipe", d
    # progressive delivery: the smaller target's recipe model continues from the larger one's delivery, with the
    # recipe's architecture (its trial's parameter count)
    assert deliveries["params-20"]["continued_from"] is None
    cont = deliveries["params-40"]["continued_from"]
    assert cont["target"] == "params-20" and cont["trial"] == deliveries["params-20"]["trial"], cont
    recipe40 = records.trial(study.trials[deliveries["params-40"]["trial"]])
    assert cont["params"] == recipe40.metrics["params"]
    from autoprune.adapters import yolo

    assert yolo.checkpoint_param_count(Path(deliveries["params-40"]["out_dir"]) / "pruned.pt") == cont["params"]
    doc = yaml.safe_load((Path(deliveries["params-40"]["out_dir"]) / "policy.yaml").read_text())
    assert doc["finalize"]["continued_from"]["target"] == "params-20"
