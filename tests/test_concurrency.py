"""Issue 13, items 3 and 9: concurrent drivers sample apart; a result survives a database that is briefly (or
for the rest of the run) unwritable. Real SQLite studies throughout."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from autoprune.config.spec import parse_spec
from autoprune.model import Layer, records
from autoprune.search.execution.executor import PAYLOAD_KEY, StudySearcher
from autoprune.search.run import main_job
from autoprune.search.storage.study import driver_id, driver_rank, get_storage, open_study_for


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_drivers_opening_a_fresh_database_at_once_all_get_it(tmp_path):
    # Without the creation-race retry, about one start in eight lost with "UNIQUE constraint failed:
    # alembic_version" (CI saw it in test_two_searches_started_at_once_explore_different_policies).
    code = ("import sys; from autoprune.search.storage.study import get_storage, open_study, StudyOptions; "
            "s = get_storage(sys.argv[1]); open_study(StudyOptions('x', ('map50_95', 'params')), s); print('ok')")
    for k in range(4):
        url = f"sqlite:///{tmp_path}/fresh{k}.db"
        procs = [subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(4)]
        outs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0] * 4, [o[1][-500:] for o in outs]
        assert all(o[0].strip() == "ok" for o in outs)
        assert get_storage(url).study_names() == ["x"]


def test_a_study_another_driver_is_still_creating_is_waited_for_not_refused(tmp_path, monkeypatch):
    # CI saw the second race: driver B loaded the study between A's create_study and A's recording of its
    # objectives, took it for a foreign study, and exited "exists with objectives None". Here "driver A" is a
    # thread that records the objectives 0.5 s after the bare study exists.
    from autoprune.search.storage import study as study_mod
    url = f"sqlite:///{tmp_path}/s.db"
    store = get_storage(url)
    bare = optuna.create_study(study_name="x", storage=store.rdb, directions=["maximize", "minimize"])

    def finish_creating() -> None:
        records.set_objectives(bare, ["map50_95", "params"])
        records.set_role(bare, "main")

    timer = threading.Timer(0.5, finish_creating)
    timer.start()
    opened = study_mod.open_study(study_mod.StudyOptions("x", ("map50_95", "params")), store)
    timer.join()
    assert records.stored_objectives(opened) == ["map50_95", "params"]
    # A study that never gets objectives is someone else's: refused once the wait is over.
    monkeypatch.setattr(study_mod, "CREATION_SETTLE_S", 0.3)
    optuna.create_study(study_name="foreign", storage=store.rdb)
    with pytest.raises(Exception, match="exists with objectives None"):
        study_mod.open_study(study_mod.StudyOptions("foreign", ("map50_95", "params")), store)


def test_driver_rank_counts_live_drivers_that_opened_the_study_first(tmp_path):
    spec = parse_spec({"name": "c", "model": "m.pt", "data": "d.yaml", "storage": f"sqlite:///{tmp_path}/s.db"},
                      "s.yaml")
    store = get_storage(spec.storage_url)
    study = open_study_for(spec, store)
    assert driver_rank(study) == 0  # alone
    host = socket.gethostname()
    now = 2e9
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:  # (not our parent: a pytest started detached has init, pid 1, for a parent)
        records.set_driver_start(study, f"{host}:{_dead_pid()}", now - 5)  # earlier, but its process is gone
        records.set_driver_start(study, f"{host}:{alive.pid}", now - 3)  # earlier and alive: counts
        records.set_driver_start(study, f"{host}:1", now + 10)  # opened after us: does not count
        records.set_driver_start(study, "elsewhere:7", now - 1000)  # another host, silent for too long: dead
        assert driver_rank(study, now=now) == 1
    finally:
        alive.kill()
        alive.wait()
    assert records.driver_starts(study)[driver_id()] == now


def test_concurrent_drivers_get_different_sampler_seeds(tmp_path):
    spec = parse_spec({"name": "c", "model": "m.pt", "data": "d.yaml", "storage": f"sqlite:///{tmp_path}/s.db",
                       "sampler": "random"}, "s.yaml")
    store = get_storage(spec.storage_url)
    first = open_study_for(spec, store)
    records.set_driver_start(first, f"{socket.gethostname()}:{os.getppid()}", 0.0)  # a live driver opened it before
    second = open_study_for(spec, store)
    draw = [s.sampler._rng.rng.random() for s in (first, second)]  # the two samplers' streams
    assert draw[0] != draw[1]


@pytest.mark.slow
def test_two_searches_started_at_once_explore_different_policies(tmp_path, tiny_data, tiny_model_pt):
    spec = {"name": "both", "model": str(tiny_model_pt), "data": str(tiny_data), "imgsz": 64, "trials": 1,
            "sampler": "random", "screening": {"factor": 0}, "warm_start": {"uniform": 0, "from_fronts": False},
            "space": {"ratio": {"low": 0.1, "high": 0.5, "step": 0.05}, "iterations": 1, "epochs": 1},
            "finetune": {"batch": 8}, "latency": {"warmup": 0, "runs": 3, "rounds": 1}, "resources": {"cpus": 1}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    cmd = [sys.executable, "-m", "autoprune", "search", "s.yaml", "--trials", "1"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    study = optuna.load_study(study_name="both", storage=f"sqlite:///{tmp_path}/studies/autoprune.db")
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 2
    assert done[0].params != done[1].params  # the same seed and trial count used to give the same policy



@pytest.mark.slow
def test_two_drivers_started_at_once_screen_each_probe_of_the_scan_once(tmp_path, tiny_data, tiny_model_pt):
    """A fresh scan shared by two drivers started together: each probe is queued once and screened once (it
    was 105 screens for 39 probes: both queued every probe, then sampled random ones when the queue ran dry)."""
    spec = {"name": "both", "model": str(tiny_model_pt), "data": str(tiny_data), "imgsz": 64, "trials": 1,
            "screening": {"factor": 2, "batches": 2, "rounds": 1}, "sensitivity": {"probes": 1, "sweep": 2},
            "warm_start": {"uniform": 0, "from_fronts": False},
            "space": {"ratio": {"low": 0.1, "high": 0.5, "step": 0.05}, "iterations": 1, "epochs": 1},
            "finetune": {"batch": 8}, "latency": {"warmup": 0, "runs": 3, "rounds": 1}, "resources": {"cpus": 1}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    cmd = [sys.executable, "-m", "autoprune", "search", "s.yaml", "--trials", "1"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    url = f"sqlite:///{tmp_path}/studies/autoprune.db"
    scan_name = next(s.study_name for s in optuna.get_all_study_summaries(url) if s.study_name.startswith("sensi"))
    trials = optuna.load_study(study_name=scan_name, storage=url).trials
    probes = [records.probe(t) for t in trials if records.probe(t) is not None]
    assert len(probes) == len(set(probes)) and all(t.state == TrialState.COMPLETE for t in trials
                                                   if records.probe(t) is not None)
    blocks = {p[0] for p in probes} - {"-", "*"}
    assert len(probes) == 1 + len(blocks) + 2  # the reference, one probe a block, the 2-level sweep
    strays = [t for t in trials if records.probe(t) is None]  # a sampled trial a driver got instead: failed at once
    assert all(t.state == TrialState.FAIL and "another driver" in t.user_attrs["fail_reason"] for t in strays)

LAYERS = [Layer("model.0", 16, "backbone"), Layer("model.12.cv1", 32, "neck")]
BASE = {"map50_95": 0.8, "map50": 0.95, "params": 3.0e6, "macs": 2.0e8, "latency_ms": 10.0}


def _locked_searcher(tmp_path, monkeypatch):
    """A real SQLite study and searcher; the SQLite busy wait and the retry delays are shortened (only timing)."""
    from autoprune.search.storage import journal, study

    monkeypatch.setattr(study, "SQLITE_BUSY_TIMEOUT_S", 0.2)
    monkeypatch.setattr(journal, "WRITE_RETRY_DELAYS_S", (0.3, 0.3, 0.3))
    db = tmp_path / "s.db"
    spec = parse_spec({"name": "w", "model": "m.pt", "data": "d.yaml", "storage": f"sqlite:///{db}"}, "s.yaml",
                      studies_dir=tmp_path)
    store = get_storage(spec.storage_url)
    st = open_study_for(spec, store)
    st.set_user_attr("baseline", BASE)
    searcher = StudySearcher(st, store, main_job(spec, LAYERS), n_trials=1)
    number = searcher.suggest("a")["number"]
    lock = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    lock.execute("BEGIN EXCLUSIVE")  # another program holds the database
    return spec, store, st, searcher, number, lock


def _payload():
    return {PAYLOAD_KEY: json.dumps({"ok": True, "metrics": {**BASE, "params": 1.0e6}, "attrs": {}, "reason": ""})}


def test_a_result_survives_a_briefly_locked_database(tmp_path, monkeypatch):
    """Fakes only Ray Tune's result dict; the lock and the storage are real."""
    spec, store, st, searcher, number, lock = _locked_searcher(tmp_path, monkeypatch)
    threading.Timer(0.5, lambda: lock.execute("ROLLBACK")).start()
    searcher.on_trial_complete("a", _payload())
    t = store.load("w").trials[number]
    assert t.state == TrialState.COMPLETE and t.values[1] == 1.0e6
    assert searcher.kept == [] and not (tmp_path / "w" / "journal").exists()


def test_a_result_the_database_refuses_is_journaled_and_written_next_run(tmp_path, monkeypatch):
    from autoprune.search.storage import journal
    from autoprune.search.storage.study import fail_stale_trials

    spec, store, st, searcher, number, lock = _locked_searcher(tmp_path, monkeypatch)
    searcher.on_trial_complete("a", _payload())  # every retry meets the lock
    assert len(searcher.kept) == 1
    path = searcher.kept[0]
    assert path.parent == spec.study_dir / "journal" and (path.stat().st_mode & 0o777) == 0o600
    lock.execute("ROLLBACK")
    assert store.load("w").trials[number].state == TrialState.RUNNING  # nothing half-written
    assert journal.replay(store.load("w"), store, spec.study_dir) == [number]  # the next run, before stale trials
    assert fail_stale_trials(store.load("w"), store) == []
    t = store.load("w").trials[number]
    assert t.state == TrialState.COMPLETE and t.values[1] == 1.0e6 and t.user_attrs["metrics"]["params"] == 1.0e6
    assert not path.exists()


_HELD: list = []


def _report_while_holding_the_database(config, job):
    """The Ray trainable of the next test: takes an exclusive lock on the study database (kept until the Ray worker
    exits), then reports a result, so the driver meets a locked database when it records it."""
    from ray import tune

    from autoprune.engine.trial import TrialResult
    from autoprune.search.execution.executor import encode

    con = sqlite3.connect(os.environ["AUTOPRUNE_TEST_DB"], isolation_level=None)
    con.execute("BEGIN EXCLUSIVE")
    _HELD.append(con)
    tune.report(encode(TrialResult(ok=True, metrics={**BASE, "params": 1.0e6})))


def test_a_run_whose_storage_stays_unwritable_ends_with_one_line_and_the_journal(tmp_path, monkeypatch):
    """Real Ray Tune and SQLite; the trial itself is faked (it only locks the database and reports)."""
    from autoprune.errors import StorageWriteError
    from autoprune.search.execution.session import run_trials
    from autoprune.search.storage import journal, study

    monkeypatch.setattr(study, "SQLITE_BUSY_TIMEOUT_S", 0.2)
    monkeypatch.setattr(journal, "WRITE_RETRY_DELAYS_S", (0.3, 0.3))
    db = tmp_path / "s.db"
    monkeypatch.setenv("AUTOPRUNE_TEST_DB", str(db))
    spec = parse_spec({"name": "r", "model": "m.pt", "data": "d.yaml", "storage": f"sqlite:///{db}",
                       "resources": {"cpus": 1}}, "s.yaml", studies_dir=tmp_path)
    store = get_storage(spec.storage_url)
    st = open_study_for(spec, store)
    st.set_user_attr("baseline", BASE)
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    with pytest.raises(StorageWriteError, match=r"^storage: .* could not be written; 1 trial result\(s\) kept in "):
        run_trials(st, store, main_job(spec, LAYERS), 1, trial_fn=_report_while_holding_the_database)
    assert [p.name for p in (spec.study_dir / "journal").iterdir()] == ["r-00000.json"]
    assert journal.replay(store.load("r"), store, spec.study_dir) == [0]  # the lock went with the Ray worker
    assert store.load("r").trials[0].state == TrialState.COMPLETE


def test_busy_time_counts_overlapping_trials_once():
    from autoprune.search.run import union_seconds

    assert union_seconds([]) == 0.0
    assert union_seconds([(0.0, 10.0), (5.0, 12.0), (20.0, 25.0)]) == 17.0  # four trials at once would not go < 0
    assert union_seconds([(3.0, 4.0), (0.0, 10.0)]) == 10.0


def test_a_read_only_database_is_refused_in_one_line_with_nothing_written(tmp_path, capsys, tiny_data, tiny_model_pt,
                                                                           monkeypatch):
    """SQLite opened read-only (mode=ro: file permissions do not stop root, the URI mode does)."""
    from autoprune import cli

    monkeypatch.chdir(tmp_path)
    db = tmp_path / "ro.db"
    optuna.create_study(study_name="other", storage=f"sqlite:///{db}")
    before = db.read_bytes()
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: ro\nmodel: {tiny_model_pt}\ndata: {tiny_data}\nimgsz: 64\n")
    url = f"sqlite:///file:{db}?mode=ro&uri=true"
    rc = cli.main(["search", str(spec), "--storage", url, "--studies-dir", str(tmp_path / "studies")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith(f"autoprune: error: storage: {url} cannot be written (")
    assert "readonly" in err[-1] and db.read_bytes() == before
    assert not (tmp_path / "file:").exists()  # the URI filename is a path, not a folder to make under the cwd
