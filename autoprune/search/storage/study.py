"""The study storage and the Optuna study: open or create, stale trials, retries, heartbeats.

Storage is opened from its URL once (:class:`StudyStorage`); everything that needs more than
the public ``optuna.Study`` API (trial handles by number, the study list, an SQL engine for
the front table) goes through it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

import optuna
import sqlalchemy as sa
from optuna.trial import FrozenTrial, TrialState

from autoprune.config.spec import SamplerSettings, SearchSpec
from autoprune.errors import InputError, SpecError, masked, scrubbed
from autoprune.model import objectives, records, samplers
from autoprune.model.samplers import stream_seed

logger = logging.getLogger(__name__)

__all__ = ["StudyStorage", "get_storage", "masked", "sqlite_path", "StudyOptions", "open_study", "open_study_for",
           "load_existing", "Opened", "driver_id", "was_interrupted", "heartbeat", "check_database", "fail_trial",
           "fail_stale_trials", "maybe_retry", "STALE_AFTER_S", "make_sampler"]

SQLITE_BUSY_TIMEOUT_S = 60.0  # how long an SQLite write waits for another connection's lock
STALE_AFTER_S = 300.0  # a driver on another host is presumed dead after this long without a heartbeat


def _check_sqlite_database(path: str) -> None:
    """A read-only command's SQLite file must exist and be an Optuna (autoprune) database: refuse anything else
    before SQLAlchemy or Optuna can create a table in it."""
    import sqlite3

    if not os.path.isfile(path):
        raise InputError(f"storage: no study database at {path} (run autoprune search first)")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            con.close()
    except sqlite3.Error as e:
        raise InputError(f"storage: {path} is not an SQLite database ({e})") from None
    if not {"studies", "trials", "version_info"} <= tables:
        raise InputError(f"storage: {path} is not an Optuna/autoprune study database (no Optuna tables)")


def sqlite_path(url: str) -> str | None:
    """The database file of an ``sqlite:///PATH[?timeout=S]`` URL (None for other URLs and in-memory SQLite)."""
    if not url.startswith("sqlite:///"):
        return None
    parsed = sa.engine.make_url(url)
    path = parsed.database
    if path and path.startswith("file:") and str(parsed.query.get("uri", "")).lower() == "true":
        path = path[len("file:"):]  # an SQLite URI filename (sqlite:///file:PATH?mode=ro&uri=true)
    return path if path and path != ":memory:" else None


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        if "timeout" in sa.engine.make_url(url).query:  # the user's own busy wait (sqlite:///PATH?timeout=S)
            return {}
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    if url.startswith("postgresql"):
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    return {"pool_pre_ping": True}


OPEN_RETRY_DELAYS_S = (0.2, 0.5, 1.0, 2.0)  # waits between tries when drivers create one database at once


def _creation_race(e: Exception) -> bool:
    """Whether ``e`` is another process creating the same schema at the same moment (not a bad URL)."""
    if isinstance(e, sa.exc.IntegrityError):
        return True  # two drivers inserting the schema version row
    text = str(e).lower()
    return isinstance(e, sa.exc.OperationalError) and ("already exists" in text or "locked" in text)


def _open_rdb(url: str) -> optuna.storages.RDBStorage:
    """RDBStorage at ``url``; drivers started together on a fresh database race to create its tables, so a
    creation race is retried (the loser then finds the tables made); anything else is a one-line InputError."""
    for delay in (*OPEN_RETRY_DELAYS_S, None):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url), skip_compatibility_check=False)
        except Exception as e:
            if delay is not None and _creation_race(e):
                logger.debug("storage %s: schema creation race (%s); retrying", masked(url), type(e).__name__)
                time.sleep(delay)
                continue
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(f"storage: cannot open {masked(url)}: {scrubbed(first, url)[:300]}") from None
    raise AssertionError("unreachable")


class StudyStorage:
    """An Optuna RDB storage opened from ``url``, with the few storage-level operations autoprune needs."""

    def __init__(self, url: str):
        self.url = url
        path = sqlite_path(url)
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.rdb = _open_rdb(url)

    def __getstate__(self) -> dict[str, Any]:  # Ray Tune pickles its searcher, which holds this
        state = dict(self.__dict__)
        state.pop("engine", None)  # an Engine does not pickle; it is made again on demand
        return state

    @cached_property
    def engine(self) -> sa.Engine:
        """autoprune's own SQLAlchemy engine on the same database (for the front table)."""
        return sa.create_engine(self.url, **_engine_kwargs(self.url))

    def study_names(self, include_side: bool = True) -> list[str]:
        out = []
        for s in self.rdb.get_all_studies():
            if include_side or not records.is_side_study(s.study_name, s):
                out.append(s.study_name)
        return out

    def load(self, name: str, sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
        return optuna.load_study(study_name=name, storage=self.rdb, sampler=sampler)

    def _trial_id(self, study: optuna.Study, number: int) -> int:
        return self.rdb.get_trial_id_from_study_id_trial_number(self.rdb.get_study_id_from_name(study.study_name),
                                                                number)

    def trial(self, study: optuna.Study, number: int) -> optuna.Trial:
        """A live handle on trial ``number`` of ``study`` (to record on, or tell)."""
        return optuna.Trial(study, self._trial_id(study, number))

    def was_queued(self, study: optuna.Study, number: int) -> bool:
        """Whether trial ``number`` came from the study's queue (``enqueue_trial``), not from its sampler."""
        return "fixed_params" in self.rdb.get_trial_system_attrs(self._trial_id(study, number))

    def mark(self, study: optuna.Study, number: int, user_attrs: dict[str, Any]) -> None:
        """Set user attributes of finished trial ``number`` (what became of it: a delivery); values stay."""
        self.correct_finished(self._trial_id(study, number), {}, user_attrs, {})

    def correct_finished(self, trial_id: int, values: dict[int, float], user_attrs: dict[str, Any],
                         system_attrs: dict[str, Any]) -> None:
        """Replace objective values (by objective index) and attributes of a *finished* trial, in one transaction.

        Optuna refuses to change a finished trial through its API; ``autoprune remeasure`` corrects a measurement
        (a latency timed on a busy machine) and keeps the replaced values in the trial's record, so this writes
        Optuna's own tables through Optuna's own models (its schema, its stored form of a value).
        """
        import json

        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        with _create_scoped_session(self.rdb.scoped_session) as session:  # commits, or rolls back on any error
            for objective, value in values.items():
                row = session.query(models.TrialValueModel).filter_by(trial_id=trial_id, objective=objective).one()
                row.value, row.value_type = models.TrialValueModel.value_to_stored_repr(value)
            tables: tuple[tuple[Any, dict[str, Any]], ...] = ((models.TrialUserAttributeModel, user_attrs),
                                                               (models.TrialSystemAttributeModel, system_attrs))
            for table, attrs in tables:
                for key, value in attrs.items():
                    attr = session.query(table).filter_by(trial_id=trial_id, key=key).one_or_none()
                    if attr is None:
                        session.add(table(trial_id=trial_id, key=key, value_json=json.dumps(value)))
                    else:
                        attr.value_json = json.dumps(value)


def get_storage(url: str) -> StudyStorage:
    """The study storage at ``url``; a one-line InputError when it cannot be opened."""
    return StudyStorage(url)


@dataclass(frozen=True)
class StudyOptions:
    name: str
    objectives: tuple[str, ...]
    sampler: SamplerSettings = SamplerSettings()
    seed: int = 0
    trials: int = 20  # the budget: sets the sampler's start-up trials
    role: str | None = None  # "screen" for an internal side study

    @classmethod
    def of(cls, spec: SearchSpec) -> StudyOptions:
        return cls(spec.name, spec.objectives, spec.sampler, spec.seed, spec.trials)


def make_sampler(name: str, seed: int, startup: int) -> optuna.samplers.BaseSampler:
    """The Optuna sampler registered as ``name`` (:mod:`autoprune.model.samplers`); ``"$seed"``/``"$startup"``
    arguments take ``seed``/``startup``."""
    choice = samplers.get(name)
    fill = {"$seed": seed, "$startup": startup}
    kwargs = {k: fill.get(v, v) if isinstance(v, str) else v for k, v in choice.args}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler: optuna.samplers.BaseSampler = getattr(optuna.samplers, choice.optuna_class)(**kwargs)
    return sampler


def _sampler(o: StudyOptions, n_existing: int, rank: int = 0) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded from its stream at (trials already there, driver rank): a continued study does
    not replay its first draws, concurrent drivers sample apart, and no seed's stream is another's shifted."""
    startup = max(4, min(10, o.trials // 3))
    seed = o.sampler.seed if o.sampler.seed is not None else o.seed
    return make_sampler(o.sampler.name, stream_seed(seed, n_existing, rank), startup)


def open_study(options: StudyOptions, store: StudyStorage) -> optuna.Study:
    """Load the study (checking its objectives match) or create it."""
    wanted = list(options.objectives)
    try:
        existing = store.load(options.name)
    except KeyError:
        existing = None
    if existing is not None:
        existing = _settled(existing, store)
        _check_role(existing, options)
        have = records.stored_objectives(existing)
        if have != wanted:
            raise SpecError(f"name: study {options.name!r} exists with objectives {have}, not {wanted} "
                            "(choose another --study-name)")
        study = store.load(options.name)
    else:
        directions = [objectives.get(n).direction for n in wanted]
        try:
            study = optuna.create_study(study_name=options.name, storage=store.rdb, directions=directions)
        except optuna.exceptions.DuplicatedStudyError:  # another driver created it a moment ago
            return open_study(options, store)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([objectives.get(n).label for n in wanted])
        records.set_objectives(study, wanted)
        records.set_role(study, options.role or "main")
    study.sampler = _sampler(options, len(study.trials), driver_rank(study))
    return study


CREATION_SETTLE_S = 10.0  # how long a study without objectives may be another driver's creation in progress


def _settled(study: optuna.Study, store: StudyStorage) -> optuna.Study:
    """``study``, re-read until its objectives are recorded: a driver that creates a study writes them just after
    ``create_study``, and a second driver opening it in between would otherwise take it for a foreign study.
    A study with trials, or still without objectives after CREATION_SETTLE_S, is returned as it is."""
    deadline = time.monotonic() + CREATION_SETTLE_S
    while (records.stored_objectives(study) is None and not study.get_trials(deepcopy=False)
           and time.monotonic() < deadline):
        time.sleep(0.1)
        study = store.load(study.study_name)
    return study



def driver_rank(study: optuna.Study, now: float | None = None) -> int:
    """Register this process as a driver of ``study`` and return how many live drivers opened it before (0 alone).

    Concurrent searches on one study get different sampler seeds from it, so two drivers started at once never
    draw the same policies (they would otherwise: same seed, same trial count)."""
    me = driver_id()
    now = time.time() if now is None else now
    records.set_driver_start(study, me, now)
    starts = records.driver_starts(study)
    mine = starts.get(me, now)
    beats = records.heartbeats(study)
    return sum(1 for other, t0 in starts.items()
               if other != me and (t0, other) < (mine, me) and not _driver_dead(other, beats, t0, now))


def _check_role(study: optuna.Study, options: StudyOptions) -> None:
    """A user study is never taken over as a side study, nor a side study opened as a user study."""
    role = records.role(study)
    want = options.role or "main"
    if role is not None and role != want:
        what = {"screen": "autoprune's internal screening study",
                "sensitivity": "autoprune's internal sensitivity-scan study"}.get(role, "a user study")
        raise SpecError(f"name: study {study.study_name!r} is {what}; choose another --study-name")


def open_study_for(spec: SearchSpec, store: StudyStorage) -> optuna.Study:
    return open_study(StudyOptions.of(spec), store)


class Opened(NamedTuple):
    study: optuna.Study
    store: StudyStorage


def load_existing(url: str, name: str | None) -> Opened:
    """Open an existing user study; one-line InputError if the database or study is missing.

    Without ``name`` the storage must hold exactly one user study (internal side studies don't count).
    """
    check_database(url)
    store = get_storage(url)
    names = store.study_names()
    if name is None:
        users = store.study_names(include_side=False)
        if len(users) != 1:
            raise InputError(f"study: pass --study NAME ({len(users)} studies in {masked(url)}: "
                             f"{', '.join(users) or 'none'})")
        name = users[0]
    if name not in names:
        raise InputError(f"study: no study named {name!r} in {masked(url)} (have: {', '.join(names) or 'none'})")
    study = store.load(name)
    if records.stored_objectives(study) is None:  # read it, never add autoprune's tables to another program's data
        raise InputError(f"study: {name!r} in {masked(url)} was not made by autoprune (it records no objectives); "
                         "open it with optuna-dashboard")
    return Opened(study, store)


def check_database(url: str) -> None:
    """For commands that only read: the database must already exist and be a study database."""
    path = sqlite_path(url)
    if path:
        _check_sqlite_database(path)


def was_interrupted(t: FrozenTrial) -> bool:
    """A FAILED trial that did not fail on its own: its run was interrupted, or its process died (stale)."""
    reason = records.trial(t).fail_reason or ""
    return t.state == TrialState.FAIL and (reason.startswith("interrupted") or "no longer running" in reason)


def driver_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def heartbeat(study: optuna.Study, driver: str) -> None:
    records.set_heartbeat(study, driver, time.time())


def fail_trial(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    """Record ``reason`` and tell the study the trial FAILED."""
    records.set_fail_reason(trial, reason)
    study.tell(trial, state=TrialState.FAIL)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _driver_dead(owner: str, beats: dict[str, float], started: float | None, now: float) -> bool:
    host, _, pid = owner.rpartition(":")
    if not owner:
        return True
    if host == socket.gethostname() and pid.isdigit():
        return not _pid_alive(int(pid))
    last = beats.get(owner, started)
    return last is None or now - float(last) > STALE_AFTER_S


def fail_stale_trials(study: optuna.Study, store: StudyStorage, retries: int = 0) -> list[int]:
    """Mark FAILED the RUNNING trials whose driver is gone; re-enqueue their policies up to ``retries`` times.

    A driver on this host is gone when its process is; one on another host when its
    heartbeat is older than ``STALE_AFTER_S``.
    """
    failed = []
    now = time.time()
    beats = records.heartbeats(study)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = records.trial(t).driver
        started = t.datetime_start.timestamp() if t.datetime_start else None
        if not _driver_dead(owner, beats, started, now):
            continue
        fail_trial(study, store.trial(study, t.number),
                   f"left RUNNING by autoprune process {owner or '?'} that is no longer running (killed or crashed)")
        failed.append(t.number)
        maybe_retry(study, t, retries)
    if failed:
        logger.warning("marked %d stale RUNNING trial(s) FAILED: %s", len(failed), failed)
    return failed


def maybe_retry(study: optuna.Study, t: FrozenTrial, retries: int) -> bool:
    """Enqueue ``t``'s policy again if it has retries left; returns whether it did."""
    rec = records.trial(t)
    if rec.retry >= retries or not t.params and rec.policy is None:
        return False
    attrs = records.retry_attrs(t)
    study.enqueue_trial(dict(t.params), user_attrs=attrs, skip_if_exists=False)
    logger.info("trial %d will be retried (attempt %d of %d)", t.number, attrs["retry"], retries)
    return True

