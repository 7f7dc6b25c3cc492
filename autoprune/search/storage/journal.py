"""A finished trial's result survives a storage that cannot be written.

Recording a result is retried with backoff (a locked SQLite file, a PostgreSQL fail-over); if the
storage stays unwritable the result is kept in a local journal beside the study's files (one JSON
file a trial, mode 0600) and written on the next run before stale trials are failed, so a finished
trial is neither lost nor left RUNNING for good.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import optuna
import sqlalchemy as sa
from optuna.trial import TrialState

from autoprune.model import records
from autoprune.search.storage.study import StudyStorage, fail_trial

logger = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["Outcome", "STORAGE_ERRORS", "cause", "WRITE_RETRY_DELAYS_S", "write", "with_retries", "write_with_retries",
           "keep", "replay", "journal_dir", "reserve", "release", "RESERVE_BYTES"]

WRITE_RETRY_DELAYS_S: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)
RESERVE_BYTES = 256 * 1024  # disk set aside per running trial for its journal entry (a result is a few kB)
STORAGE_ERRORS: tuple[type[BaseException], ...] = (optuna.exceptions.StorageInternalError, sa.exc.SQLAlchemyError,
                                                   OSError)


@dataclass(frozen=True)
class Outcome:
    """Everything a trial's end writes to the study."""

    number: int
    state: Literal["complete", "fail"]
    attrs: dict[str, Any] = field(default_factory=dict)  # user attributes (result, metrics, baseline)
    values: list[float] | None = None  # objective values (complete)
    constraints: dict[str, float] = field(default_factory=dict)
    reason: str = ""  # why it failed (fail)


def cause(e: BaseException) -> str:
    """The first line of what the database (or the disk) said. Optuna wraps a failed commit in a
    StorageInternalError whose own words only guess ("e.g. exceeding max length"), so the wrapped error's."""
    inner = e.__cause__ if isinstance(e, optuna.exceptions.StorageInternalError) and e.__cause__ else e
    text = str(inner).strip()
    return text.splitlines()[0][:200] if text else type(inner).__name__


def write(study: optuna.Study, trial: optuna.Trial, o: Outcome, before_tell: Callable[[], None] | None = None) -> None:
    records.write_result(trial, o.attrs)
    for key, value in o.constraints.items():
        trial.set_constraint(key, value)
    if o.state == "complete":
        if before_tell is not None:
            before_tell()
        study.tell(trial, o.values)
    else:
        fail_trial(study, trial, o.reason)


def with_retries(fn: Callable[[], T], what: str) -> T:
    """``fn()``, retried after each of :data:`WRITE_RETRY_DELAYS_S` on a storage error (then re-raised).

    ``fn`` must be safe to repeat (Optuna's attribute and state writes are)."""
    for attempt, delay in enumerate((*WRITE_RETRY_DELAYS_S, None)):
        try:
            return fn()
        except STORAGE_ERRORS as e:
            if delay is None:
                raise
            logger.warning("%s: the storage refused it (%s); retry %d in %.0fs", what, cause(e), attempt + 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def write_with_retries(study: optuna.Study, trial: optuna.Trial, o: Outcome,
                       before_tell: Callable[[], None] | None = None) -> None:
    """:func:`write`, retried on a storage error (see :func:`with_retries`)."""
    with_retries(lambda: write(study, trial, o, before_tell), f"trial {o.number}'s result")


def journal_dir(study_dir: Path) -> Path:
    return Path(study_dir) / "journal"


def _entry(study_dir: Path, study_name: str, number: int) -> tuple[Path, Path]:
    path = journal_dir(study_dir) / f"{study_name}-{number:05d}.json"
    return path, path.with_suffix(".reserve")


def reserve(study_dir: Path, study_name: str, number: int) -> None:
    """Set aside :data:`RESERVE_BYTES` of disk for trial ``number``'s journal entry while it runs (written, synced:
    allocated), so a disk that fills meanwhile cannot cost its result: :func:`keep` writes into this space and
    renames it. A disk already too full to reserve only loses the guarantee (a warning)."""
    path, res = _entry(study_dir, study_name, number)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(res, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            block = b" " * 65536
            for _ in range(RESERVE_BYTES // len(block)):
                os.write(fd, block)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        res.unlink(missing_ok=True)
        logger.warning("trial %d: no disk space could be set aside for its journal entry (%s)", number,
                       e.strerror or e)


def release(study_dir: Path, study_name: str, number: int) -> None:
    """The trial's result is in the storage: its reserved journal space is freed."""
    _entry(study_dir, study_name, number)[1].unlink(missing_ok=True)


def keep(study_dir: Path, study_name: str, o: Outcome) -> Path:
    """Write ``o`` to the journal (mode 0600) and return its path: into the trial's reserved space when it has one
    (no new disk needed: a full disk keeps it), else through a temporary file. The entry appears whole or not
    at all; an OSError leaves nothing behind."""
    path, res = _entry(study_dir, study_name, o.number)
    data = json.dumps({"study": study_name, **asdict(o)}, default=str).encode()
    if res.is_file() and len(data) <= res.stat().st_size:
        with open(res, "r+b") as f:
            f.write(data)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
        os.replace(res, path)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    return path


def replay(study: optuna.Study, store: StudyStorage, study_dir: Path) -> list[int]:
    """Write the journal's results of ``study`` whose trials are still RUNNING; returns their numbers. Entries of
    trials that finished meanwhile are dropped (with a warning); an unreadable entry is left for a person."""
    folder = journal_dir(study_dir)
    if not folder.is_dir():
        return []
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    for res in folder.glob(f"{study.study_name}-*.reserve"):  # space a finished or killed trial still holds
        number = res.stem.rsplit("-", 1)[-1]
        if number.isdigit() and states.get(int(number)) != TrialState.RUNNING:
            res.unlink(missing_ok=True)
    written = []
    for path in sorted(folder.glob(f"{study.study_name}-*.json")):
        try:
            raw = json.loads(path.read_text())
            if raw.get("study") != study.study_name:
                continue
            o = Outcome(int(raw["number"]), raw["state"], dict(raw.get("attrs") or {}), raw.get("values"),
                        dict(raw.get("constraints") or {}), str(raw.get("reason", "")))
        except (OSError, ValueError, KeyError, TypeError) as e:
            logger.warning("journal entry %s is unreadable (%s); left in place", path, e)
            continue
        if states.get(o.number) == TrialState.RUNNING:
            with warnings.catch_warnings():  # a live handle wakes the sampler, whose warnings mean nothing for a
                warnings.simplefilter("ignore")  # result already decided (one printed on a replay: issue 40)
                write(study, store.trial(study, o.number), o)
            written.append(o.number)
        else:
            logger.warning("journal entry %s: trial %d is no longer running; dropped", path, o.number)
        path.unlink()
    if written:
        logger.info("wrote %d result(s) kept in the journal while the storage was unwritable: trials %s",
                    len(written), written)
    return written
