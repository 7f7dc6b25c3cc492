"""The search's progress display: what it summarises (a real SQLite study with made-up trial results, as in
tests/test_front.py) and what the bar shows."""

from __future__ import annotations

from autoprune.views.progress import ProgressBar, summary
from conftest import BASE, make_study


def test_summary_counts_trials_and_the_best_feasible_map(tmp_path):
    study, _ = make_study(tmp_path, n=14)
    s = summary(study)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert s.completed == len(complete) and s.failed == 14 - len(complete)
    assert s.front_size == len(study.best_trials) >= 1
    assert s.best_map50_95 == max(t.user_attrs["metrics"]["map50_95"] for t in complete)
    assert s.base_map50_95 == BASE["map50_95"]
    assert s.postfix().startswith(f"front {s.front_size}, best feasible mAP50-95 {s.best_map50_95:.3f} (base 0.900)")


def test_bar_shows_phase_trials_and_postfix(tmp_path, capsys):
    study, _ = make_study(tmp_path, n=4)
    bar = ProgressBar(enabled=True)
    bar.start(study, total=3)
    bar.phase("round 1: fine-tuning")
    bar.trial_done(study, study.trials[-1])
    bar.close()
    err = capsys.readouterr().err
    assert "round 1: fine-tuning" in err and "1/3" in err and "best feasible mAP50-95" in err
    quiet = ProgressBar(enabled=False)
    quiet.start(study, total=3)
    quiet.trial_done(study, study.trials[-1])
    quiet.close()
    assert capsys.readouterr().err == ""
