"""``autoprune remeasure``: time the front again, interleaved with the base, and correct the stored latencies.

A search on a busy machine can record a latency several times off; promotion and the sampler have already used
it, but the front a user picks from need not keep it. Each chosen trial (the front by default) is rebuilt from its
checkpoint and timed in alternating rounds with the study's unpruned base, on the runtime, image size, batch,
precision and threads its first timing used, with the load-robust estimator and the spread-triggered re-timing
(``autoprune.engine.latency``). Its ``latency_ms``/``latency_ratio`` objectives, metrics, latency record and
latency constraints are replaced; the replaced values stay in the trial's record (``remeasured``, oldest first),
and the front table follows.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune.config.sections import LatencySettings
from autoprune.errors import InputError
from autoprune.model import records
from autoprune.search.storage.front import sync_front
from autoprune.search.storage.study import StudyStorage

logger = logging.getLogger(__name__)

__all__ = ["Remeasured", "RemeasureSettings", "remeasure"]

LATENCY_METRICS = ("latency_ms", "latency_ratio")


@dataclass(frozen=True)
class RemeasureSettings:
    rounds: int | None = None  # default: the rounds of the trial's first timing
    estimator: str = "min"
    max_spread: float = 0.25
    retries: int = 2


@dataclass(frozen=True)
class Remeasured:
    trial: int
    before: dict[str, float]
    after: dict[str, float]
    spread: float
    unreliable: bool


def _base_model(study: optuna.Study) -> Any:
    from autoprune.adapters import yolo
    from autoprune.engine.identity import fingerprint

    path = str(records.baseline(study).get("model") or "")
    if not path or not Path(path).is_file():
        raise InputError(f"remeasure: the study's base model {path or '(none recorded)'} is not there to time against")
    model = yolo.load_model(path)
    want = records.fingerprint(study)
    if want and fingerprint(model) != want:
        raise InputError(f"remeasure: {path} is not the base model the study was searched on (fingerprint differs)")
    return model


def _chosen(study: optuna.Study, numbers: list[int] | None) -> list[FrozenTrial]:
    if not numbers:
        return sorted(study.best_trials, key=lambda t: t.number)
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    out = []
    for n in numbers:
        t = by_number.get(n)
        if t is None or t.state != TrialState.COMPLETE:
            raise InputError(f"--trial {n}: no completed trial {n} in study {study.study_name}")
        out.append(t)
    return out


def _time(t: FrozenTrial, checkpoint: Path, base: Any, s: RemeasureSettings, data: str | None) -> Any:
    from autoprune.adapters import yolo
    from autoprune.engine.latency import measure_interleaved

    lat = records.trial(t).latency
    attempts = max(1, int(lat.get("attempts", 1)))  # its runs and rounds pooled over its timings
    timing = LatencySettings(warmup=int(lat.get("warmup", 10)), runs=max(1, int(lat.get("runs", 50)) // attempts),
                             rounds=s.rounds or max(1, int(lat.get("rounds", 10)) // attempts),
                             threads=int(lat.get("threads", 2)), runtime=str(lat.get("runtime", "torch")),
                             batch=int(lat.get("batch", 1)), precision=str(lat.get("precision", "fp32")),
                             estimator=s.estimator, max_spread=s.max_spread, retries=s.retries)
    return measure_interleaved(yolo.deploy_copy(yolo.load_model(checkpoint)), yolo.deploy_copy(base),
                               int(lat["imgsz"]), str(lat.get("device", "cpu")), timing, calibration=data)


def remeasure(study: optuna.Study, store: StudyStorage, settings: RemeasureSettings, artifact_dir: Path,
              trials: list[int] | None = None) -> list[Remeasured]:
    """Re-time ``trials`` (default: the front) against the base and correct their stored latencies."""
    from autoprune.adapters import yolo
    from autoprune.deploy.export import trial_checkpoint
    from autoprune.engine.measure import interleaved_record

    chosen = _chosen(study, trials)
    untimed = [t.number for t in chosen if "imgsz" not in records.trial(t).latency]
    if untimed:
        raise InputError(f"remeasure: trial {untimed[0]} recorded no latency timing to repeat")
    base = _base_model(study)
    names = records.study_objectives(study)
    sid = store.rdb.get_study_id_from_name(study.study_name)
    out = []
    with tempfile.TemporaryDirectory(prefix="autoprune-remeasure-") as tmp:
        for t in chosen:
            rec = records.trial(t)
            params = int(rec.metrics.get("params") or yolo.count_params(base))
            checkpoint = trial_checkpoint(store, t, artifact_dir, Path(tmp) / f"trial{t.number}.pt", params)
            il = _time(t, checkpoint, base, settings, records.baseline(study).get("data"))
            new = {"latency_ms": il.candidate.median_ms, "latency_ratio": il.ratio}
            before = {k: float(rec.metrics[k]) for k in LATENCY_METRICS if k in rec.metrics}
            after = {k: new[k] for k in before}
            constraints = _constraints(t, before, after)
            now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            store.correct_finished(
                store.rdb.get_trial_id_from_study_id_trial_number(sid, t.number),
                {i: after[n] for i, n in enumerate(names) if n in after},
                records.remeasured_attrs(rec, {**rec.metrics, **after}, interleaved_record(il), before, now),
                constraints)
            out.append(Remeasured(t.number, before, after, il.ratio_spread, il.unreliable))
            logger.info("trial %d: latency ratio %s -> %.3f (spread %.2f over %d rounds%s)", t.number,
                        f"{before['latency_ratio']:.3f}" if "latency_ratio" in before else "-", il.ratio,
                        il.ratio_spread, il.rounds, ", still unreliable" if il.unreliable else "")
    fresh = store.load(study.study_name)
    sync_front(fresh, store)
    return out


def _constraints(t: FrozenTrial, before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The trial's latency budgets moved by the change of their metric (a budget's value is metric - limit)."""
    prefix = "constraints:"
    return {k: float(v) + after[k[len(prefix):]] - before[k[len(prefix):]]
            for k, v in t.system_attrs.items() if k.startswith(prefix) and k[len(prefix):] in after}
