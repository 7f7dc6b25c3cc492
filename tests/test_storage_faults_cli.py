"""Issue 13, item 3 through the real CLI: another program holds the study's SQLite database while a trial runs.

Real ``autoprune search`` processes, real Ray Tune, real SQLite; the only test-side control is the storage URL's own
``?timeout=1`` (SQLite's busy wait, 60 s by default) so that a refused write shows within a second.
"""

from __future__ import annotations

import queue
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
import yaml

pytestmark = pytest.mark.slow


def _spec(tmp_path, tiny_data, tiny_model_pt) -> str:
    spec = {"name": "x", "model": str(tiny_model_pt), "data": str(tiny_data), "imgsz": 64, "trials": 1,
            "storage": f"sqlite:///{tmp_path}/s.db?timeout=1",
            "screening": {"factor": 0}, "warm_start": {"uniform": 0, "from_fronts": False},
            "space": {"ratio": {"low": 0.1, "high": 0.5, "step": 0.05}, "iterations": 1, "epochs": 1},
            "finetune": {"batch": 8}, "latency": {"warmup": 0, "runs": 3, "rounds": 1}, "resources": {"cpus": 1}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    return "s.yaml"


def _start(tmp_path, spec: str) -> tuple[subprocess.Popen, queue.Queue]:
    proc = subprocess.Popen([sys.executable, "-m", "autoprune", "search", spec], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)
    threading.Thread(target=pump, daemon=True).start()
    return proc, lines


_STATES = ("SELECT t.state FROM trials t JOIN studies s ON t.study_id = s.study_id WHERE s.study_name = 'x' "
           "ORDER BY t.number")


def _states(db, con: sqlite3.Connection | None = None) -> list[str]:
    """Trial states of study x, read on ``con`` (the lock holder's own connection) or a fresh read-only one."""
    if con is not None:
        return [r[0] for r in con.execute(_STATES)]
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return [r[0] for r in con.execute(_STATES)]
    except sqlite3.OperationalError:  # the tables are not there yet
        return []
    finally:
        con.close()


def _started(db) -> bool:
    """Whether trial 0 of study x is RUNNING with its policy recorded (the driver is done writing until its end)."""
    if "RUNNING" not in _states(db):
        return False
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return bool(con.execute("SELECT count(*) FROM trial_user_attributes a JOIN trials t ON a.trial_id = t.trial_id "
                                "WHERE t.number = 0 AND a.key = 'policy'").fetchone()[0])
    finally:
        con.close()


def _lock_when_a_trial_runs(db, proc: subprocess.Popen) -> sqlite3.Connection:
    deadline = time.time() + 600
    while not _started(db):
        assert proc.poll() is None and time.time() < deadline, "the search ended before its trial started"
        time.sleep(0.05)
    lock = sqlite3.connect(db, isolation_level=None, check_same_thread=False, timeout=30)
    lock.execute("BEGIN EXCLUSIVE")  # another program holds the database for the rest of the trial
    return lock


def _wait_for(lines: queue.Queue, text: str, seen: list[str]) -> None:
    while True:
        line = lines.get(timeout=600)
        assert line is not None, f"the search ended before logging {text!r}: {''.join(seen)[-2000:]}"
        seen.append(line)
        if text in line:
            return


def _drain(lines: queue.Queue, seen: list[str]) -> str:
    while (line := lines.get(timeout=600)) is not None:
        seen.append(line)
    return "".join(seen)


def test_a_result_waits_out_a_database_locked_through_the_end_of_its_trial(tmp_path, tiny_data, tiny_model_pt):
    db = tmp_path / "s.db"
    proc, lines = _start(tmp_path, _spec(tmp_path, tiny_data, tiny_model_pt))
    lock = _lock_when_a_trial_runs(db, proc)
    seen: list[str] = []
    _wait_for(lines, "trial 0's result: the storage refused it", seen)  # the trial ended; its first write met the lock
    # the database's own words, not the guess of Optuna's wrapper (issue 40)
    assert "database is locked" in seen[-1] and "exceeding max length" not in seen[-1], seen[-1]
    assert _states(db, lock) == ["RUNNING"]
    lock.execute("ROLLBACK")
    lock.close()
    err = _drain(lines, seen)
    assert proc.wait(timeout=600) == 0, err[-2000:]
    assert _states(db) == ["COMPLETE"]
    assert not list((tmp_path / "studies").glob("*/journal/*.json"))  # nothing was left to replay


def test_a_result_the_database_refuses_to_the_end_is_kept_and_written_by_the_next_run(tmp_path, tiny_data,
                                                                                          tiny_model_pt):
    db = tmp_path / "s.db"
    spec = _spec(tmp_path, tiny_data, tiny_model_pt)
    proc, lines = _start(tmp_path, spec)
    lock = _lock_when_a_trial_runs(db, proc)
    err = _drain(lines, [])  # every retry meets the lock
    code = proc.wait(timeout=600)
    last = err.strip().splitlines()[-1]
    assert code == 2, err[-2000:]
    assert last.startswith("autoprune: error: storage: ") and "1 trial result(s) kept in " in last, last
    assert "Traceback" not in err
    kept = list((tmp_path / "studies").glob("*/journal/*.json"))
    assert len(kept) == 1 and (kept[0].stat().st_mode & 0o777) == 0o600
    assert _states(db, lock) == ["RUNNING"]  # nothing half-written while the lock lasted
    lock.execute("ROLLBACK")
    lock.close()

    again = subprocess.run([sys.executable, "-m", "autoprune", "search", spec], cwd=tmp_path, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _states(db) == ["COMPLETE"]  # replayed from the journal, not failed as stale, not run again
    assert "nothing to run" in again.stderr
    assert "Warning" not in again.stderr, again.stderr[-2000:]  # issue 40: the replay printed an Optuna UserWarning
    assert not list((tmp_path / "studies").glob("*/journal/*.json"))
