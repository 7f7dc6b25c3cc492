"""Issue 13's hangs and signals through the real CLI, real Ray and real signals: an unreachable cluster and
resources no node has are refused before the study is touched; SIGINT and SIGTERM during a trial stop cleanly
(trial FAILED "interrupted", a line on how to resume, exit 130 / 143), and the same command resumes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

pytestmark = pytest.mark.slow


def _spec(tmp_path, tiny_data, tiny_model_pt, **extra):
    lines = ["name: sig", f"model: {tiny_model_pt}", f"data: {tiny_data}", "imgsz: 64", "trials: 2",
             "screening: {factor: 0}", "warm_start: {uniform: 0}", "latency: {warmup: 1, runs: 3, rounds: 1}",
             "space: {epochs: {low: 3, high: 3}, iterations: 1}", "finetune: {batch: 8}",
             *(f"{k}: {v}" for k, v in extra.items())]
    path = tmp_path / "sig.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _cli(args, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "autoprune", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def test_unreachable_cluster_is_refused_at_once(tmp_path, tiny_data, tiny_model_pt):
    t0 = time.monotonic()
    r = _cli(["search", _spec(tmp_path, tiny_data, tiny_model_pt), "--ray-address", "127.0.0.1:1"], tmp_path)
    assert r.returncode == 2 and time.monotonic() - t0 < 60
    assert r.stderr.strip().splitlines()[-1].startswith("autoprune: error: --ray-address: no Ray cluster answers")
    assert not (tmp_path / "studies").exists()


def test_resources_no_node_has_are_refused_before_the_study_is_touched(tmp_path, tiny_data, tiny_model_pt):
    r = _cli(["search", _spec(tmp_path, tiny_data, tiny_model_pt), "--cpus-per-trial", "64"], tmp_path)
    assert r.returncode == 2 and "resources.cpus: 64 CPU(s) per trial requested but the Ray cluster has" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "studies" / "autoprune.db").exists()


@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_signal_during_a_trial_stops_cleanly_and_the_search_resumes(tmp_path, tiny_data, tiny_model_pt, sig, code,
                                                                      word):
    spec = _spec(tmp_path, tiny_data, tiny_model_pt)
    url = f"sqlite:///{tmp_path}/studies/autoprune.db"
    proc = subprocess.Popen([sys.executable, "-m", "autoprune", "search", str(spec)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    running = False
    while time.monotonic() < deadline and not running:
        time.sleep(1)
        try:
            running = bool(optuna.load_study(study_name="sig", storage=url).get_trials(states=(TrialState.RUNNING,)))
        except Exception:
            running = False
    assert running, "no trial started"
    time.sleep(2)  # inside the trial's fine-tune
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"autoprune: {word}") and "run the same command again to resume" in last
    trials = optuna.load_study(study_name="sig", storage=url).get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert any(t.state == TrialState.FAIL and "interrupted" in t.user_attrs.get("fail_reason", "") for t in trials)
    again = _cli(["search", spec, "--trials", "1"], tmp_path)  # the same command resumes
    assert again.returncode == 0, again.stderr[-2000:]
    done = optuna.load_study(study_name="sig", storage=url).get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 1


def test_sigint_while_the_baseline_is_timed_leaves_no_trial_running(tmp_path, tiny_data, tiny_model_pt):
    """Ctrl-C while the phases thread times the unpruned baseline (a long timing here): exit 130 with the search's
    line, and no trial is started afterwards by the thread that was still timing (it finds its session closed)."""
    spec = _spec(tmp_path, tiny_data, tiny_model_pt, latency="{warmup: 1, runs: 4000, rounds: 10}")
    url = f"sqlite:///{tmp_path}/studies/autoprune.db"
    proc = subprocess.Popen([sys.executable, "-m", "autoprune", "-v", "search", str(spec)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, seen = time.monotonic() + 240, ""
    while time.monotonic() < deadline and "measuring the unpruned baseline" not in seen:
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
    assert "measuring the unpruned baseline" in seen, seen[-2000:]
    time.sleep(3)  # inside the timing
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("autoprune: interrupted (SIGINT)")
    trials = optuna.load_study(study_name="sig", storage=url).get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING], [(t.number, t.state) for t in trials]
