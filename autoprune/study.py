"""The Optuna study: storage, creation/continuation, baseline, stale trials, the Pareto front."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune import objectives
from autoprune.errors import InputError, SpecError
from autoprune.policy import Layer
from autoprune.spec import SearchSpec

logger = logging.getLogger(__name__)

__all__ = ["get_storage", "open_study", "driver_id", "fail_stale_trials", "record_failure", "front",
           "FrontRow", "BASELINE_KEY"]

BASELINE_KEY = "baseline"
SETTINGS_KEY = "trial_settings"
FAIL_REASON = "fail_reason"


def driver_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def masked(url: str) -> str:
    """``url`` with any password replaced by ***."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def get_storage(url: str) -> optuna.storages.RDBStorage:
    """An RDB storage (SQLAlchemy) for ``url``; a one-line InputError when it cannot be opened."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if path and path != ":memory:":
            parent = os.path.dirname(os.path.abspath(path))
            os.makedirs(parent, exist_ok=True)
    if url.startswith("sqlite"):
        kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}}
    elif url.startswith("postgresql"):
        kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    else:
        kwargs = {"pool_pre_ping": True}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, skip_compatibility_check=False)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"storage: cannot open {masked(url)}: {first}") from None


def _sampler(spec: SearchSpec, n_existing: int) -> optuna.samplers.BaseSampler:
    # Offset the seed by the trials already there, so a continued study does not replay its first draws.
    from autoprune import samplers

    startup = max(4, min(10, spec.trials // 3))
    seed = spec.sampler.seed if spec.sampler.seed is not None else spec.seed
    return samplers.make(spec.sampler.name, seed + n_existing, startup)


def open_study(spec: SearchSpec, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Load the spec's study (checking its objectives match) or create it."""
    wanted = list(spec.objectives)
    directions = [objectives.get(n).direction for n in wanted]
    try:
        existing = optuna.load_study(study_name=spec.name, storage=storage)
    except KeyError:
        existing = None
    if existing is not None:
        have = existing.user_attrs.get("objectives")
        if have != wanted:
            raise SpecError(f"name: study {spec.name!r} exists with objectives {have}, not {wanted} "
                            "(choose another --study-name)")
        n = len(existing.trials)
        return optuna.load_study(study_name=spec.name, storage=storage, sampler=_sampler(spec, n))
    study = optuna.create_study(study_name=spec.name, storage=storage, directions=directions,
                                sampler=_sampler(spec, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([objectives.get(n).label for n in wanted])
    study.set_user_attr("objectives", wanted)
    return study


def record_failure(study: optuna.Study, trial_id: int, reason: str) -> None:
    storage = study._storage
    storage.set_trial_user_attr(trial_id, FAIL_REASON, reason)
    storage.set_trial_state_values(trial_id, TrialState.FAIL)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


HEARTBEAT_PREFIX = "heartbeat:"
STALE_AFTER_S = 300.0  # a driver on another host is presumed dead after this long without a heartbeat


def heartbeat(study: optuna.Study, driver: str) -> None:
    study.set_user_attr(f"{HEARTBEAT_PREFIX}{driver}", time.time())


def _driver_dead(owner: str, beats: dict[str, Any], started: float | None, now: float) -> bool:
    host, _, pid = owner.rpartition(":")
    if not owner:
        return True
    if host == socket.gethostname() and pid.isdigit():
        return not _pid_alive(int(pid))
    last = beats.get(owner, started)
    return last is None or now - float(last) > STALE_AFTER_S


def fail_stale_trials(study: optuna.Study, retries: int = 0) -> list[int]:
    """Mark FAILED the RUNNING trials whose driver is gone; re-enqueue their policies up to ``retries`` times.

    A driver on this host is gone when its process is; one on another host when its
    heartbeat is older than ``STALE_AFTER_S``.
    """
    failed = []
    now = time.time()
    attrs = study.user_attrs
    beats = {k[len(HEARTBEAT_PREFIX):]: v for k, v in attrs.items() if k.startswith(HEARTBEAT_PREFIX)}
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = str(t.user_attrs.get("driver", ""))
        started = t.datetime_start.timestamp() if t.datetime_start else None
        if not _driver_dead(owner, beats, started, now):
            continue
        record_failure(study, t._trial_id, f"left RUNNING by autoprune process {owner or '?'} that is no longer "
                                           "running (killed or crashed)")
        failed.append(t.number)
        maybe_retry(study, t, retries)
    if failed:
        logger.warning("marked %d stale RUNNING trial(s) FAILED: %s", len(failed), failed)
    return failed


def maybe_retry(study: optuna.Study, t: FrozenTrial, retries: int) -> bool:
    """Enqueue ``t``'s policy again if it has retries left; returns whether it did."""
    attempt = int(t.user_attrs.get("retry", 0))
    if attempt >= retries or not t.params and t.user_attrs.get("policy") is None:
        return False
    study.enqueue_trial(dict(t.params), user_attrs={"retry_of": int(t.user_attrs.get("retry_of", t.number)),
                                                    "retry": attempt + 1}, skip_if_exists=False)
    logger.info("trial %d will be retried (attempt %d of %d)", t.number, attempt + 1, retries)
    return True


def store_layers(study: optuna.Study, layers: Sequence[Layer]) -> None:
    study.set_user_attr("layers", [[layer.name, layer.channels, layer.stage] for layer in layers])


def stored_layers(study: optuna.Study) -> list[Layer] | None:
    raw = study.user_attrs.get("layers")
    return [Layer(str(item[0]), int(item[1]), *(str(x) for x in item[2:3])) for item in raw] if raw else None


@dataclass(frozen=True)
class FrontRow:
    number: int
    values: dict[str, float]
    criterion: str
    ratios: dict[str, float]
    attrs: dict[str, Any]


def front(study: optuna.Study) -> list[FrontRow]:
    """The study's Pareto front (Optuna's ``best_trials``), sorted by the first objective, best first."""
    names = study.user_attrs.get("objectives") or list(objectives.DEFAULT)
    rows = []
    for t in study.best_trials:
        rows.append(_row(t, names))
    first = objectives.get(names[0])
    rows.sort(key=lambda r: r.values[first.name], reverse=first.direction == "maximize")
    return rows


def _row(t: FrozenTrial, names: Sequence[str]) -> FrontRow:
    metrics = dict(t.user_attrs.get("metrics", {}))
    metrics.update(dict(zip(names, t.values)))
    policy = t.user_attrs.get("policy", {})
    return FrontRow(number=t.number, values=metrics, criterion=str(policy.get("criterion", "?")),
                    ratios=dict(policy.get("ratios", {})), attrs=dict(t.user_attrs))


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def load_existing(url: str, name: str | None) -> optuna.Study:
    """Open an existing study read-side; one-line InputError if the database or study is missing."""
    if url.startswith("sqlite:///") and not os.path.isfile(url[len("sqlite:///"):]):
        raise InputError(f"storage: no study database at {url[len('sqlite:///'):]} (run autoprune search first)")
    storage = get_storage(url)
    names = [s.study_name for s in storage.get_all_studies()]
    if name is None:
        if len(names) != 1:
            raise InputError(f"study: pass --study NAME ({len(names)} studies in {masked(url)}: "
                             f"{', '.join(names) or 'none'})")
        name = names[0]
    if name not in names:
        raise InputError(f"study: no study named {name!r} in {masked(url)} (have: {', '.join(names) or 'none'})")
    return optuna.load_study(study_name=name, storage=storage)


def engine_of(study: optuna.Study) -> Any:
    """The SQLAlchemy engine of the study's RDB storage (Optuna wraps it in a cache layer)."""
    storage = study._storage
    storage = getattr(storage, "_backend", storage)
    engine = getattr(storage, "engine", None)
    if engine is None:
        raise InputError("storage: the study is not in an SQL (RDB) storage")
    return engine
