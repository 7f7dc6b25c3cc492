"""The final phase's race: the delivery rule on mAP50-95 x latency (pure), how a race shrinks to the time it has,
the hand recipe's policy at its exact ratio, and one real small race on the tiny data set."""

from __future__ import annotations

import warnings
from typing import Any

import optuna
import pytest

from autoprune.deploy.race import MIN_RUNG_S, plan_rungs
from autoprune.model.race import DOMINANCE, Arm, lr_grid, survivors, undominated, winner


def _arm(trial: int, score: float, latency: float | None, lr: float = 0.01, source: str = "search") -> Arm:
    return Arm(trial, source, lr, latency, start=0.0, vals=[score])


@pytest.mark.parametrize("a, b, dominates", [
    ((0.80, 0.50), (0.79, 0.50), True),    # a point better, as fast
    ((0.80, 0.54), (0.79, 0.50), True),    # a point better, 7% slower: within the latency margin
    ((0.80, 0.60), (0.79, 0.50), False),   # a point better but 17% slower
    ((0.787, 0.39), (0.79, 0.56), True),   # 30% faster, 0.3 points worse: the uniform model beats the slow pick
    ((0.78, 0.39), (0.79, 0.56), False),   # 30% faster but a point worse
    ((0.792, 0.50), (0.79, 0.50), False),  # 0.2 points better: noise
    ((0.80, None), (0.79, 0.5), True),     # untimed: mAP alone
])
def test_dominance_needs_a_margin_on_one_axis_and_no_loss_beyond_it_on_the_other(a, b, dominates):
    assert DOMINANCE.dominates(_arm(0, *a), _arm(1, *b)) is dominates
    assert not DOMINANCE.dominates(_arm(0, *a), _arm(0, *a))


def test_the_winner_is_the_best_undominated_arm():
    pick, recipe = _arm(1, 0.790, 0.56), _arm(2, 0.787, 0.39, source="recipe")
    assert winner([pick, recipe]) is recipe  # as good within half a point and 30% faster
    better_pick = _arm(1, 0.800, 0.56)
    assert winner([better_pick, recipe]) is better_pick  # neither dominates: the better mAP
    twin = _arm(3, 0.800, 0.40)
    assert winner([better_pick, twin]) is twin  # equal mAP: the faster
    with pytest.raises(ValueError):
        winner([])


def test_survivors_keep_each_candidates_best_lr_and_the_recipe_while_it_is_worth_its_speed():
    arms = [_arm(1, 0.70, 0.56, lr=0.01), _arm(1, 0.72, 0.56, lr=0.001),
            _arm(2, 0.40, 0.39, lr=0.01, source="recipe"), _arm(2, 0.35, 0.39, lr=0.001, source="recipe")]
    kept = survivors(arms)
    assert [(a.trial, a.lr) for a in kept] == [(1, 0.001), (2, 0.01)]  # far behind, but 30% faster: still raced
    slow = [_arm(1, 0.72, 0.56), _arm(4, 0.60, 0.60)]
    assert [a.trial for a in survivors(slow)] == [1]  # worse and slower: out
    circle = [_arm(1, 0.72, 0.5), _arm(2, 0.72, 0.5)]
    assert len(undominated(circle)) == 2


def test_lr_grid_is_log_spaced_from_the_highest():
    assert lr_grid(0.01, 0.001, 2) == pytest.approx([0.01, 0.001])
    assert lr_grid(0.01, 0.0001, 3) == pytest.approx([0.01, 0.001, 0.0001])
    assert lr_grid(0.01, 0.001, 1) == [0.01] and lr_grid(0.01, 0.02, 3) == [0.01]


def test_a_race_shrinks_to_the_time_it_has():
    rungs, lrs, each = plan_rungs(60.0, 2, 2, 0.5)
    assert (rungs, lrs) == (2, 2) and each == pytest.approx(60.0 / 6 - 0.5)  # 4 arms, then one per candidate
    rungs, lrs, each = plan_rungs(30.0, 2, 2, 0.5)
    assert (rungs, lrs) == (1, 2) and each == pytest.approx(30.0 / 4 - 0.5)  # one rung
    assert plan_rungs(14.0, 2, 2, 0.5)[:2] == (1, 1)  # one learning rate: the candidates alone
    assert plan_rungs(14.0, 1, 2, 0.5)[:2] == (1, 2)  # one candidate: its learning rates
    assert plan_rungs(8.0, 2, 2, 0.5) == (0, 1, 0.0)  # no training race fits
    assert plan_rungs(1000.0, 1, 1, 0.5) == (0, 1, 0.0)  # one arm: nothing to choose
    assert plan_rungs(60.0, 2, 2, 4.0)[2] >= 3 * 4.0 and plan_rungs(60.0, 2, 2, 0.1)[2] >= MIN_RUNG_S


def test_the_recipe_policy_holds_its_exact_ratio_off_the_spaces_grid():
    """The hand recipe's ratio (0.33) is not on the space's 0.05 grid: a trial enqueued with its parameters samples
    exactly 0.33 for every layer, and the recipe's knobs (l2, round_to 8, one step, no sparse base)."""
    from autoprune.model.sampling import sample_policy
    from autoprune.model.space import FloatRange, IntRange, Layer, Space
    from autoprune.search.strategy.recipe import recipe_policy_params

    layers = [Layer("model.0", 16, "backbone"), Layer("model.1", 32, "backbone"), Layer("model.12", 64, "neck")]
    for shape in ("block", "layer", "stage", "global"):
        space = Space(ratio=FloatRange(0.0, 0.3, step=0.05), shape=shape).replace(
            criteria=("l1", "l2", "taylor"), round_to=(1, 8), iterations=IntRange(1, 3), sparsity=(1e-4, 0.0))
        study = optuna.create_study()
        study.enqueue_trial(recipe_policy_params(space, layers, 0.33))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            policy = sample_policy(study.ask(), space, layers)
        assert set(policy.ratio_map.values()) == {0.33}, shape
        assert (policy.criterion, policy.round_to, policy.iterations, policy.sparsity) == ("l2", 8, 1, 0.0)


@pytest.mark.slow
def test_a_real_race_trains_each_arm_and_hands_over_the_winners_weights(tmp_path, tiny_data, tiny_model_pt):
    """Two pruned copies of the tiny model (a 'search' pick and a 'recipe' model) at two learning rates, on the
    tiny data set with ultralytics' trainer and validator: every arm of the first rung trains and is validated, the
    record holds what raced, and the winner's weights load into its own trial's model."""
    from autoprune.adapters import yolo
    from autoprune.config.spec import TrialSettings
    from autoprune.deploy.race import Entrant, RaceSettings, run_race
    from autoprune.engine.uniform import uniform_prune
    from autoprune.model import records

    settings = TrialSettings(model=str(tiny_model_pt), data=str(tiny_data), imgsz=64)
    study = optuna.create_study(directions=["maximize", "minimize"])
    entrants = []
    for ratio, latency, source in ((0.2, 0.9, "search"), (0.5, 0.6, "recipe")):
        model = yolo.load_model(tiny_model_pt)
        uniform_prune(model, settings, ratio)
        path = yolo.save_checkpoint(model, tmp_path / f"r{ratio}.pt")
        t = study.ask()
        params = float(yolo.count_params(model))
        records.write_result(t, {"checkpoint": str(path)}, {"map50_95": 0.0, "params": params,
                                                            "latency_ratio": latency})
        study.tell(t, [0.0, params])
        entrants.append(Entrant(study.trials[-1], source))
    s = RaceSettings(data=str(tiny_data), imgsz=64, seconds=60.0, lrs=(0.01, 0.001))
    out = run_race(study, None, entrants, s, scratch=tmp_path)  # no storage: the checkpoints are on disk
    rec = out.record
    rungs, n_lrs, each = plan_rungs(s.seconds - rec["val_s"] * 2, 2, 2, rec["val_s"])  # what the race could afford
    assert rec["rungs"] >= 1 and len(rec["lrs"]) >= 1 and len(rec["arms"]) == 2 * len(rec["lrs"]), rec
    assert rec["lrs"] == [0.01, 0.001][: len(rec["lrs"])] and len(rec["lrs"]) >= n_lrs
    assert all(len(a["val_map50_95"]) >= 1 and a["train_s"][0] > 0 for a in rec["arms"])
    assert rec["winner"] == {"trial": out.trial.number, "source": out.source, "lr": out.lr}
    assert rec["spent_s"] <= s.seconds + 20
    if out.state is not None:
        model = yolo.load_model(records.trial(out.trial).checkpoint)
        model.load_state_dict(out.state)  # the raced weights are the winner trial's architecture
    assert not list(tmp_path.glob("autoprune-race-*"))  # its scratch folder is gone


def test_with_no_time_left_the_start_is_delivered_untrained(monkeypatch):
    """The clock ran out before a target's final fine-tune: its candidates are judged on their starts (a race of
    no seconds) and the winner is exported untrained (epochs 0), not left undelivered. Fakes: the race's
    training-free judgement and the finalize/export (which records the settings it got); the final fine-tune's
    no-training path runs for real with a faked validator."""
    from types import SimpleNamespace

    import torch

    from autoprune.config.spec import parse_spec
    from autoprune.deploy import deliver, finalize
    from autoprune.model import records
    from autoprune.model.budget import Target

    study = optuna.create_study(directions=["maximize", "minimize"])
    records.set_baseline(study, {"map50_95": 0.8, "params": 1000.0})
    t = study.ask()
    records.write_result(t, {}, {"map50_95": 0.7, "params": 450.0})
    study.tell(t, [0.7, 450.0])
    entrant = deliver.Entrant(study.trials[0], "search")
    got: dict[str, Any] = {}
    monkeypatch.setattr(deliver, "_race", lambda *a: (got.setdefault("race_s", a[-1]),
                                                       deliver.RaceOutcome(entrant.trial, "search", 0.01, None,
                                                                           {"why": "starts"}))[1])

    def fake_finalize(study, store, t, out, settings, **kw):
        got["settings"] = settings
        return SimpleNamespace(policy=None, out_dir=out, checkpoint=None)
    monkeypatch.setattr(deliver, "finalize_trial", fake_finalize)
    monkeypatch.setattr("autoprune.model.document.load_policy_file", lambda p: SimpleNamespace(finalize={}))
    spec = parse_spec({"name": "b", "model": "m.pt", "data": "d.yaml", "budget": 60, "targets": {"params": 0.5}},
                      "s.yaml")
    d = deliver._deliver(study, None, spec, Target((("params", 0.5),)), [entrant], -5.0)
    assert d.reason is None and d.trial == 0 and got["race_s"] == 0.0
    assert got["settings"].epochs == 0 and got["settings"].seconds is None
    monkeypatch.setattr(finalize, "_split_metrics", lambda *a, **k: {"val": {"map50_95": 0.7, "map50": 0.9}})
    rec = finalize.final_finetune(torch.nn.Linear(2, 2), "d.yaml", 64, got["settings"], lr=0.01, seed=0)
    assert rec["epochs"] == 0 and rec["kept"] == "start" and rec["after"] == rec["before"]
