"""The Pareto front table, `autoprune front`, and the report's data functions.

Studies here are real Optuna studies in SQLite whose trial results are made up (no
pruning runs): they fake the trial outcomes only.
"""

from __future__ import annotations

import csv
import io
import json

import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from autoprune import cli
from autoprune.model.pareto import baseline_hypervolume as hypervolume
from autoprune.search.storage.front import read_front, sync_front
from autoprune.search.storage.study import get_storage
from autoprune.views import (
    bn_scale_histograms,
    build_figures,
    hypervolume_history,
    knob_rows,
    pareto_data,
    ratio_profiles,
)
from conftest import BASE, make_study  # noqa: E402


def test_front_table_always_equals_best_trials(tmp_path):
    study, url = make_study(tmp_path, n=60)
    assert len(study.best_trials) >= 3
    assert any(t.state == TrialState.FAIL for t in study.trials)
    # another tool, one SQL query
    with sa.create_engine(url).connect() as c:
        got = c.execute(sa.text("SELECT trial_number, map50_95, params, latency_ms FROM autoprune_front "
                                "WHERE study_name = 'fake' ORDER BY map50_95 DESC")).all()
    best = sorted(study.best_trials, key=lambda t: -t.values[0])
    assert [g[0] for g in got] == [t.number for t in best]
    assert [tuple(g[1:]) for g in got] == [tuple(t.values) for t in best]


def test_joined_at_is_kept_while_a_trial_stays_on_the_front(tmp_path):
    study, url = make_study(tmp_path, n=10)
    store = get_storage(url)
    before = {r["trial_number"]: r["joined_at"] for r in read_front(store.engine, "fake")}
    sync_front(study, store)
    after = {r["trial_number"]: r["joined_at"] for r in read_front(store.engine, "fake")}
    assert before == after


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_front_command_formats(tmp_path, capsys, fmt):
    study, url = make_study(tmp_path, n=25)
    rc = cli.main(["front", "--storage", url, "--study", "fake", "--format", fmt])
    out = capsys.readouterr().out
    assert rc == 0
    n_front = len(study.best_trials)
    if fmt == "json":
        recs = json.loads(out)
        assert recs[0]["trial"] == "baseline" and len(recs) == n_front + 1
        r = recs[1]
        assert r["params_change"] == pytest.approx((r["params"] - 3.0e6) / 3.0e6)
        assert [x["map50_95"] for x in recs[1:]] == sorted((x["map50_95"] for x in recs[1:]), reverse=True)
    elif fmt == "csv":
        recs = list(csv.DictReader(io.StringIO(out)))
        assert len(recs) == n_front + 1 and recs[0]["trial"] == "baseline"
        assert set(recs[0]) >= {"map50_95", "map50_95_change", "params", "latency_ms_change", "criterion"}
    else:
        lines = out.strip().splitlines()
        assert lines[0].startswith("Pareto front of fake") and "baseline" in lines[2]
        assert len(lines) == 3 + n_front and "%)" in lines[3]


def test_front_command_errors(tmp_path, capsys):
    assert cli.main(["front", "--storage", f"sqlite:///{tmp_path}/none.db"]) == 2
    assert "no study database" in capsys.readouterr().err
    _, url = make_study(tmp_path, n=2)
    assert cli.main(["front", "--storage", url, "--study", "other"]) == 2
    assert "no study named 'other'" in capsys.readouterr().err


def test_report_data_functions(tmp_path):
    study, _ = make_study(tmp_path, n=30)
    data = pareto_data(study)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(data.points) == len(complete)
    assert {p.number for p in data.points if p.on_front} == {t.number for t in study.best_trials}
    assert data.baseline == (0.9, 3.0e6, 10.0) and data.pairs() == [(0, 1), (0, 2), (1, 2)]
    assert "criterion" in data.points[0].hover
    profiles = ratio_profiles(study)
    assert len(profiles) == len(study.best_trials)
    assert all(p.layers == ("model.0", "model.1", "model.2.cv1") for p in profiles)
    rows = knob_rows(study)
    assert len(rows) == len(complete) and {r.knob("criterion") for r in rows} <= {"l1", "l2", "taylor"}
    history = hypervolume_history(study)
    hv = [h.hypervolume for h in history]
    assert len(hv) == len(complete) and all(b >= a for a, b in zip(hv, hv[1:])) and hv[-1] > 0


def test_hypervolume_against_the_baseline_reference():
    names = ["map50_95", "params", "latency_ms"]
    # mAP as the baseline, half its params and latency: box of 1 x (1.1-0.5) x (1.1-0.5)
    assert hypervolume([(0.9, 1.5e6, 5.0)], names, BASE) == pytest.approx(0.36)
    assert hypervolume([(0.9, 3.5e6, 5.0)], names, BASE) == 0.0  # larger than 1.1x baseline: outside
    assert hypervolume([(0.9, 1.5e6, 5.0), (0.45, 1.5e6, 5.0)], names, BASE) == pytest.approx(0.36)


def test_the_report_shows_the_bn_scale_histogram_of_each_sparse_base(tmp_path):
    """The summaries are computed by the real bn_scale_summary on a small BN model, before and after its scales
    are shrunk as sparse training would; the trials they are attached to are made up."""
    import torch
    from torch import nn

    from autoprune.engine.sparse import bn_scale_summary
    from autoprune.views import write_report

    study, _ = make_study(tmp_path, n=12)
    assert bn_scale_histograms(study) == [] and "Sparse training" not in dict(build_figures(study))
    model = nn.Sequential(nn.Conv2d(3, 64, 3), nn.BatchNorm2d(64), nn.Conv2d(64, 64, 3), nn.BatchNorm2d(64))
    before = bn_scale_summary(model)
    with torch.no_grad():
        model[1].weight[:40] = 0.0  # most of the first BN's channels driven to 0
    after = bn_scale_summary(model)
    import optuna

    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    for k, t in enumerate(complete[:4]):  # the same results again, from a sparse base (trials cannot be edited)
        summary = {"l1": 1e-3 if k < 3 else 1e-2, "epochs": 5, "lr": 0.01, "before": before, "after": after}
        study.add_trial(optuna.trial.create_trial(values=t.values, user_attrs={**t.user_attrs, "sparse": summary}))
    hists = bn_scale_histograms(study)
    assert [(h.l1, len(h.trials)) for h in hists] == [(1e-3, 3), (1e-2, 1)]
    assert min(hists[0].trials) >= len(study.trials) - 4
    h = hists[0]
    assert sum(h.before) == sum(h.after) == 128 and h.after[0] == 40 and h.before[0] == 0
    assert h.below_after == pytest.approx(40 / 128) and h.below_before == 0.0
    assert "Sparse training: BN-scale distribution" in dict(build_figures(study))
    page = write_report(study, tmp_path / "r.html").read_text()
    assert "Sparse training: BN-scale distribution" in page and "below 0.01 0% before, 31% after" in page


def test_targets_delivered_are_marked_in_the_front_and_the_report(tmp_path, capsys):
    from autoprune.model import records

    study, url = make_study(tmp_path, n=12)
    member = study.best_trials[0].number
    records.set_delivery(study, study, "params-50", {"trial": member, "out_dir": str(tmp_path / "final"),
                                                     "before": {"val": {"map50_95": 0.5}},
                                                     "after": {"val": {"map50_95": 0.6}}})
    records.set_delivery(study, study, "params-90", {"trial": None, "out_dir": None,
                                                     "reason": "no trial reached it within the budget"})
    marked = [p for p in pareto_data(study).points if p.targets]
    assert [(p.number, p.targets) for p in marked] == [(member, ("params-50",))]
    assert "finalized for target params-50" in marked[0].hover
    # the report shows what was delivered: the same model at its finalized val mAP50-95, the proxy beside it
    names = records.study_objectives(study)
    m = names.index("map50_95")
    assert marked[0].finalized is not None and marked[0].finalized[m] == 0.6 and marked[0].finalized_test is None
    assert [v for k, v in enumerate(marked[0].finalized) if k != m] == [v for k, v in enumerate(marked[0].values)
                                                                          if k != m]
    assert "delivered (after its final fine-tune): val mAP50-95 0.6000" in marked[0].hover
    assert all(p.finalized is None for p in pareto_data(study).points if not p.targets)
    from autoprune.views import write_report

    page = write_report(study, tmp_path / "d.html").read_text()
    assert "delivered (after its final fine-tune)" in page
    assert cli.main(["front", "--storage", url, "--study", study.study_name, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["trial"]: r["target"] for r in rows if r["target"]} == {member: "params-50"}
    assert cli.main(["front", "--storage", url, "--study", study.study_name]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[-6:] == ["target", "delivered", "mAP50-95", "val", "/", "test"]
    assert any(line.split()[-4:] == ["params-50", "0.6000", "/", "-"] for line in table)


def test_the_front_shows_what_was_delivered_even_off_the_front(tmp_path, capsys):
    """A delivered model's finalized val and test mAP50-95 stand beside the search's proxy, in the table, JSON and
    CSV; a delivered trial the proxy kept off the front (the hand recipe's model before its fine-tune) is listed
    too, marked so."""
    from autoprune.model import records

    study, url = make_study(tmp_path, n=12)
    on = study.best_trials[0].number
    off = next(t.number for t in study.get_trials(states=(TrialState.COMPLETE,))
               if t.number not in {b.number for b in study.best_trials})
    after = {"val": {"map50_95": 0.7912}, "test": {"map50_95": 0.8004}}
    records.set_delivery(study, study, "params-50", {"trial": on, "out_dir": "f/params-50", "after": after})
    records.set_delivery(study, study, "params-70", {"trial": off, "out_dir": "f/params-70",
                                                     "after": {"val": {"map50_95": 0.65}}})
    assert cli.main(["front", "--storage", url, "--study", study.study_name, "--format", "json"]) == 0
    rows = {r["trial"]: r for r in json.loads(capsys.readouterr().out)}
    assert (rows[on]["delivered_val_map50_95"], rows[on]["delivered_test_map50_95"]) == (0.7912, 0.8004)
    assert rows[on]["map50_95"] != 0.7912  # the search's proxy stays beside it
    assert rows[off]["delivered_val_map50_95"] == 0.65 and rows[off]["delivered_test_map50_95"] is None
    assert rows[off]["joined_at"] == "(delivered, off the front)" and rows[off]["target"] == "params-70"
    assert cli.main(["front", "--storage", url, "--study", study.study_name, "--format", "csv"]) == 0
    by_trial = {r["trial"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert by_trial[str(on)]["delivered_test_map50_95"] == "0.8004"
    assert cli.main(["front", "--storage", url, "--study", study.study_name]) == 0
    table = capsys.readouterr().out
    assert "0.7912 / 0.8004" in table and "0.6500 / -" in table and "delivered: the target's finalized model" in table


def test_a_delivery_is_marked_on_its_trial_for_the_dashboard(tmp_path):
    """optuna-dashboard shows a trial's user attributes: a delivered trial gets ``delivered`` (val and test
    mAP50-95 after its final fine-tune, its folder) per target, its values left as the search measured them."""
    import optuna

    from autoprune.model import records

    study, url = make_study(tmp_path, n=6)
    store = get_storage(url)
    t = study.best_trials[0]
    after = {"val": {"map50_95": 0.61}, "test": {"map50_95": 0.58}}
    store.mark(study, t.number, records.delivered_attrs(t, "params-50", {"out_dir": "f/p50", "after": after,
                                                                           "epochs": 12}))
    again = optuna.load_study(study_name=study.study_name, storage=url).trials[t.number]
    store.mark(study, t.number, records.delivered_attrs(again, "params-70", {"out_dir": "f/p70", "after": after}))
    final = optuna.load_study(study_name=study.study_name, storage=url).trials[t.number]
    assert final.user_attrs["delivered"]["params-50"] == {"out_dir": "f/p50", "epochs": 12, "val_map50_95": 0.61,
                                                          "test_map50_95": 0.58}
    assert set(final.user_attrs["delivered"]) == {"params-50", "params-70"} and final.values == t.values


def test_a_trial_delivered_for_two_targets_keeps_both_marks_when_the_study_is_cached(tmp_path):
    """The study object a run holds caches its finished trials, and a mark written to the database does not show in
    it: the run hands its own earlier marks on, so the second target's mark does not drop the first one's."""
    import optuna

    from autoprune.model import records

    study, url = make_study(tmp_path, n=6)
    store = get_storage(url)
    t = study.best_trials[0]
    first = records.delivered_attrs(t, "params-50", {"out_dir": "f/p50"})
    store.mark(study, t.number, first)
    stale = study.trials[t.number]  # as the run sees it: the mark is in the database, not in this copy
    second = records.delivered_attrs(stale, "params-70", {"out_dir": "f/p70"}, earlier=first["delivered"])
    store.mark(study, t.number, second)
    final = optuna.load_study(study_name=study.study_name, storage=url).trials[t.number]
    assert set(final.user_attrs["delivered"]) == {"params-50", "params-70"}
    assert records.delivered_attrs(stale, "params-70", {"out_dir": "x"})["delivered"].keys() == {"params-70"}
