"""A full disk does not cost a finished trial its result: each running trial's journal entry has its disk set aside
when it starts, so the result is kept (and written on the next run) even when nothing else can be written.

The disk is real: a 2 MiB tmpfs mounted for the test (skipped where mounting is not allowed), filled to the last
byte by a filler file. The study lives on the normal disk; only the journal's folder is on the full one.
"""

from __future__ import annotations

import json
import os
import subprocess

import optuna
import pytest
from optuna.trial import TrialState

from autoprune.search.storage import journal


@pytest.fixture()
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()[:200]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(folder):
    """Write until the disk refuses (ENOSPC)."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        (folder / "probe").write_bytes(b"x" * 4096)


def test_a_reserved_entry_is_kept_on_a_full_disk_and_an_unreserved_one_leaves_nothing(small_disk, tmp_path):
    outcome = journal.Outcome(3, "complete", {"metrics": {"map50_95": 0.5}, "channels": {"a": 16}}, [0.5, 1e6],
                              {"map_floor": -0.1})
    journal.reserve(small_disk, "s", 3)
    _fill(small_disk)
    path = journal.keep(small_disk, "s", outcome)
    raw = json.loads(path.read_text())
    assert raw["number"] == 3 and raw["values"] == [0.5, 1e6] and raw["attrs"]["channels"] == {"a": 16}
    assert not list(journal.journal_dir(small_disk).glob("*.reserve"))
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    # no reservation: the write fails on the full disk, and no empty or partial file is left behind
    os.unlink(small_disk / "filler")
    _fill(small_disk)  # again: the kept entry gave back the reserved space it did not need
    with pytest.raises(OSError):
        journal.keep(small_disk, "s", journal.Outcome(4, "complete", {"blob": "y" * 100_000}, [0.1, 1.0]))
    assert sorted(p.name for p in journal.journal_dir(small_disk).iterdir()) == ["s-00003.json"]


def test_the_kept_entry_is_replayed_and_stale_reservations_are_freed(small_disk, tmp_path):
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/db.sqlite",
                                directions=["maximize", "minimize"])
    from autoprune.search.storage.study import get_storage

    store = get_storage(f"sqlite:///{tmp_path}/db.sqlite")
    running, finished = study.ask(), study.ask()
    study.tell(finished, [0.1, 2.0])
    journal.reserve(small_disk, "s", running.number)
    journal.reserve(small_disk, "s", finished.number)  # left over by a driver that was killed
    _fill(small_disk)
    journal.keep(small_disk, "s", journal.Outcome(running.number, "complete", {"metrics": {"x": 1.0}}, [0.7, 3.0]))
    assert journal.replay(study, store, small_disk) == [running.number]
    t = optuna.load_study(study_name="s", storage=store.rdb).trials[running.number]
    assert t.state == TrialState.COMPLETE and t.values == [0.7, 3.0] and t.user_attrs["metrics"] == {"x": 1.0}
    assert not list(journal.journal_dir(small_disk).iterdir())  # the entry written, the stale space freed


def test_a_result_neither_the_storage_nor_the_journal_takes_is_reported_lost(tmp_path, monkeypatch, caplog):
    """The storage refuses and the journal cannot be written (journal.keep raises ENOSPC, faked here): the
    trial's number is kept as lost and the error line says the result is LOST, not that it was kept."""
    import errno

    from autoprune.search.execution.executor import StudySearcher
    from test_session import _study_job  # noqa: E402

    study, store, job = _study_job(tmp_path, "a")
    searcher = StudySearcher(study, store, job, 1)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal, "keep", full)
    searcher._keep(journal.Outcome(0, "complete", {}, [0.5, 1.0]), OSError("database or disk is full"))
    assert searcher.lost == [0] and searcher.kept == []
    assert "its result is LOST" in caplog.text and "No space left" in caplog.text


def test_an_artifact_upload_on_a_full_disk_leaves_no_partial_file(small_disk, tmp_path):
    """Issue 40: zero-byte and partial files were left in studies/artifacts/ after an upload failed on a full disk.
    The artifact folder is on the 2 MiB disk, the study (SQLite) on the normal one; the policy file fits, the
    3 MiB checkpoint fills the disk mid-copy: the upload fails and the folder holds the policy's artifact only,
    whole, with the trial recording just that one."""
    from autoprune.search.storage.artifacts import artifact_store, write_and_upload

    arts = small_disk / "artifacts"
    store = artifact_store(arts)
    checkpoint = tmp_path / "pruned.pt"
    checkpoint.write_bytes(os.urandom(3 * 2**20))  # larger than the whole disk
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db")
    trial = study.ask()
    with pytest.raises(OSError):
        write_and_upload(trial, store, tmp_path / "trial", {"policy": {"lr": 0.01}}, str(checkpoint))
    files = list(arts.iterdir())
    assert len(files) == 1 and files[0].read_text() == (tmp_path / "trial" / "policy.yaml").read_text()
    assert [k for k in study.trials[0].system_attrs if k.startswith("artifacts:")] == [f"artifacts:{files[0].name}"]
    assert sorted(p.name for p in (tmp_path / "trial").iterdir()) == ["policy.yaml"]  # no half-written .part
    _fill(small_disk)
    with pytest.raises(OSError):  # now not even the policy file fits
        write_and_upload(study.ask(), store, small_disk / "trial2", {"policy": {"lr": 0.01}}, None)
    assert len(list(arts.iterdir())) == 1 and not list((small_disk / "trial2").iterdir())
