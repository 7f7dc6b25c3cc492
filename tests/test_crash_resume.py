"""kill -9 the search process mid-trial: nothing it started outlives it for long, and the same command resumes the
study."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import optuna
import psutil
import pytest
import sqlalchemy
import yaml
from optuna.trial import TrialState


def _states(url):
    if not os.path.exists(url[len("sqlite:///"):]):
        return []
    try:
        study = optuna.load_study(study_name="crash", storage=url)
    except (KeyError, sqlalchemy.exc.SQLAlchemyError):  # not created yet, or its tables are being created right now
        return []
    return study.get_trials(deepcopy=False)


def _descendants(pid):
    return {(p.pid, p.create_time()) for p in psutil.Process(pid).children(recursive=True)}


def _alive(procs):
    """Of (pid, start time) pairs, the names of those still running (a reused pid is another process)."""
    out = []
    for pid, created in procs:
        try:
            p = psutil.Process(pid)
            if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                out.append(" ".join(p.cmdline())[:60] or p.name())
        except psutil.Error:
            continue
    return out


@pytest.mark.slow
def test_kill_minus_9_then_resume(tmp_path, tiny_data, tiny_model_pt):
    spec = {
        "name": "crash", "model": str(tiny_model_pt), "data": str(tiny_data), "imgsz": 64, "trials": 3, "seed": 3,
        "retries": 1,
        "space": {"ratio": {"low": 0.1, "high": 0.4}, "criteria": ["l2"], "iterations": 1, "epochs": 6},
        "finetune": {"batch": 8}, "latency": {"warmup": 1, "runs": 5}, "resources": {"cpus": 1},
    }
    spec_file = tmp_path / "crash.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    url = f"sqlite:///{tmp_path / 'studies' / 'autoprune.db'}"
    cmd = [sys.executable, "-m", "autoprune", "search", str(spec_file)]
    log = tmp_path / "first-run.log"
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=log.open("w"),
                            start_new_session=True)
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            trials = _states(url)
            done = [t for t in trials if t.state == TrialState.COMPLETE]
            # mid-trial: its policy drawn and recorded (killed while it is still being sampled, a trial has only the
            # parameters drawn so far, and its retry draws the rest anew)
            running = [t for t in trials if t.state == TrialState.RUNNING and "policy" in t.user_attrs]
            if done and running:
                break
            assert proc.poll() is None, f"search ended ({proc.returncode}) before it could be killed: " + \
                log.read_text()[-3000:]
            time.sleep(0.5)
        else:
            pytest.fail("no trial completed in time: " + log.read_text()[-3000:])
        started = _descendants(proc.pid)  # Ray's processes (raylet, GCS, agents, workers), autoprune's reaper
        os.kill(proc.pid, signal.SIGKILL)  # at once: a tiny trial can end within a second or two
        proc.wait(timeout=30)
        # nothing the killed search started outlives it for long (Ray's agents alone took a minute)
        deadline = time.time() + 15
        while time.time() < deadline and _alive(started):
            time.sleep(0.5)
        assert not _alive(started), f"left running 15 s after kill -9 of the search: {_alive(started)}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever Ray left behind in that session
    before = {t.number: (t.state, t.values) for t in _states(url)}
    killed = [n for n, (s, _) in before.items() if s == TrialState.RUNNING]
    completed = {n: v for n, (s, v) in before.items() if s == TrialState.COMPLETE}
    assert killed and completed, (before, log.read_text()[-3000:])

    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    after = {t.number: t for t in _states(url)}
    for n, values in completed.items():  # completed trials intact
        assert after[n].state == TrialState.COMPLETE and after[n].values == values
    for n in killed:
        assert after[n].state == TrialState.FAIL
        assert "no longer running" in after[n].user_attrs["fail_reason"]
        retries = [t for t in after.values() if t.user_attrs.get("retry_of") == n]
        assert len(retries) == 1 and retries[0].params == after[n].params  # retried with the same policy
        assert retries[0].state == TrialState.COMPLETE
    assert not [t for t in after.values() if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert sum(t.state == TrialState.COMPLETE for t in after.values()) == 3  # the budget counts completed trials
