"""The final phase's race: which candidate to deliver at a target and at which learning rate to fine-tune it,
measured on the user's own train and val splits instead of assumed.

Each arm (a candidate model x a learning rate) fine-tunes for the same short time, then is validated; after the
first rung each candidate keeps its best learning rate, candidates that another dominates (mAP50-95 x latency,
:mod:`autoprune.model.race`) drop out, and the survivors run a second rung from where they stopped. The winner's
weights go on to the final fine-tune, which continues them with the time left. The race's record (what raced, each
arm's val curve, who won and why) goes into the delivered policy file.

A race that cannot give each arm a meaningful rung shrinks: one rung instead of two, then one learning rate, then
no training at all (the candidates judged on their starting val mAP50-95 and latency); the record says which.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from autoprune.config.sections import FinetuneSettings
from autoprune.model import records
from autoprune.model.race import Arm, survivors, winner
from autoprune.search.storage.study import StudyStorage
from autoprune.search.strategy.targets import latency_of

logger = logging.getLogger(__name__)

__all__ = ["Entrant", "RaceSettings", "RaceOutcome", "run_race", "plan_rungs", "MIN_RUNG_S"]

MIN_RUNG_S = 5.0  # the least training an arm's rung is worth (and at least 3 validations' time)


@dataclass(frozen=True)
class Entrant:
    """A candidate model at a target: a completed trial and where it comes from (``search`` or ``recipe``)."""

    trial: FrozenTrial
    source: str
    # its start where it is not the trial's checkpoint: the weights (the trial's architecture) and where they come from
    # (progressive delivery, :mod:`autoprune.deploy.chain`)
    state: Mapping[str, Any] | None = None
    continued_from: Mapping[str, Any] | None = None
    probe: Mapping[str, Any] | None = None  # the recovery probe whose weights it starts from, where it does


@dataclass(frozen=True)
class RaceSettings:
    data: str
    imgsz: int
    seconds: float  # the whole race, loading and validations included
    lrs: tuple[float, ...]
    device: str = "cpu"
    threads: int = 2
    seed: int = 0
    finetune: FinetuneSettings = FinetuneSettings()


@dataclass
class RaceOutcome:
    """The winner, the learning rate it won at, its start for the final fine-tune (None: the trial's checkpoint), the
    evidence, and whether that start was trained at ``lr`` in the race."""

    trial: FrozenTrial
    source: str
    lr: float
    state: Mapping[str, Any] | None
    record: dict[str, Any] = field(default_factory=dict)
    trained: bool = False


def plan_rungs(seconds: float, candidates: int, lrs: int, val_s: float) -> tuple[int, int, float]:
    """``(rungs, learning rates, training seconds per arm and rung)`` that fit ``seconds``: two rungs (all arms, then
    one per candidate) when both candidates and learning rates are several, else one; shrunk (one rung, then one
    learning rate) until an arm's rung trains at least :data:`MIN_RUNG_S` and three validations' time; ``(0, 1,
    0.0)``: no training race fits."""
    if candidates * lrs <= 1:
        return 0, 1, 0.0  # one arm: nothing to choose between
    floor = max(MIN_RUNG_S, 3 * val_s)
    options = []
    if candidates > 1 and lrs > 1:
        options.append((2, lrs))
    options += [(1, lrs), (1, 1)] if lrs > 1 else [(1, 1)]
    options = [(r, n) for r, n in options if candidates * n > 1]  # a rung of one arm chooses nothing
    for rungs, n_lrs in options:
        arm_rungs = candidates * n_lrs + (candidates if rungs == 2 else 0)
        each = seconds / arm_rungs - val_s
        if each >= floor:
            return rungs, n_lrs, each
    return 0, 1, 0.0


def _load(store: StudyStorage, e: Entrant, artifact_dir: Path | None, tmp: Path, s: RaceSettings) -> Any:
    from autoprune.adapters import yolo
    from autoprune.deploy.export import trial_checkpoint

    params = int(records.trial(e.trial).metrics.get("params", 0))
    path = trial_checkpoint(store, e.trial, artifact_dir, tmp / f"trial{e.trial.number}.pt", params)
    model = yolo.load_model(path)
    if e.state is not None:
        model.load_state_dict(dict(e.state))
    return model.to(s.device)


def _validate(model: Any, s: RaceSettings) -> float:
    from autoprune.adapters import yolo

    return yolo.validate(model, s.data, s.imgsz, device=s.device, batch=s.finetune.batch, threads=s.threads,
                          split="val").map50_95


def _train(model: Any, s: RaceSettings, lr: float, seconds: float, workdir: Path) -> float:
    """One rung: ``seconds`` of ultralytics' time-budgeted training (cosine from ``lr``, EMA, no warm-up); its
    wall time."""
    from autoprune.adapters import yolo
    from autoprune.deploy.finalize import MAX_EPOCHS

    f = s.finetune
    cfg = yolo.FinetuneConfig(data=s.data, imgsz=s.imgsz, epochs=MAX_EPOCHS, lr=lr, ema=True, batch=f.batch,
                               device=s.device, threads=s.threads, seed=s.seed, warmup_epochs=0.0, cos_lr=True,
                               lrf=f.lrf, optimizer=f.optimizer, seconds=seconds)
    t0 = time.perf_counter()
    yolo.finetune(model, cfg, workdir)
    return time.perf_counter() - t0


def run_race(study: optuna.Study, store: StudyStorage, entrants: Sequence[Entrant], s: RaceSettings,
             artifact_dir: Path | None = None, scratch: Path | None = None) -> RaceOutcome:
    """Race ``entrants`` at ``s.lrs`` within ``s.seconds`` (see module doc)."""
    t0 = time.perf_counter()
    if not entrants:
        raise ValueError("a race needs at least one entrant")
    with tempfile.TemporaryDirectory(dir=scratch, prefix="autoprune-race-") as tmp:
        models, starts = {}, {}
        tv = time.perf_counter()
        for e in entrants:
            models[e.trial.number] = _load(store, e, artifact_dir, Path(tmp), s)
            starts[e.trial.number] = _validate(models[e.trial.number], s)
        val_s = (time.perf_counter() - tv) / len(entrants)
        left = s.seconds - (time.perf_counter() - t0)
        rungs, n_lrs, each = plan_rungs(left, len(entrants), len(s.lrs), val_s)
        lrs = list(s.lrs[:n_lrs])
        source = {e.trial.number: e for e in entrants}
        arms = [Arm(e.trial.number, e.source, lr, latency_of(e.trial), starts[e.trial.number])
                for e in entrants for lr in lrs]
        state = {id(a): copy.deepcopy(models[a.trial]) if len(lrs) > 1 else models[a.trial] for a in arms}
        running = arms if rungs else []
        for rung in range(rungs):
            for i, a in enumerate(running):
                a.train_s.append(_train(state[id(a)], s, a.lr, each, Path(tmp) / f"rung{rung}-arm{i}"))
                a.vals.append(_validate(state[id(a)], s))
            logger.info("race, rung %d: %s", rung + 1, "; ".join(
                f"trial {a.trial} ({a.source}) lr {a.lr:.4g}: val mAP50-95 {a.start:.4f} -> {a.score:.4f}"
                for a in running))
            running = survivors(running)
            if len(running) == 1:  # decided: the time left goes to the winner's final fine-tune
                break
        best = winner(running or arms)
        why = ("best val mAP50-95 of the models no other raced model dominates (mAP50-95 x latency)" if rungs else
               f"no training race fits {left:.0f} s for {len(entrants)} candidate(s) x {len(s.lrs)} learning rate(s):"
               " judged on their starting val mAP50-95 and latency, fine-tuned at the highest learning rate")
        record = {"seconds": round(s.seconds, 2), "spent_s": round(time.perf_counter() - t0, 2), "rungs": rungs,
                  "val_s": round(val_s, 2),
                  "rung_train_s": round(each, 2), "lrs": lrs, "arms": [a.to_dict() for a in arms],
                  "winner": {"trial": best.trial, "source": best.source, "lr": best.lr}, "why": why}
        # the raced weights go on only where the race raised val mAP50-95 (else the final fine-tune starts afresh)
        keep = bool(best.vals) and best.score >= best.start
        record["continues_from"] = "raced weights" if keep else "the candidate's start"
        won = source[best.trial]
        return RaceOutcome(won.trial, best.source, best.lr,
                           {k: v.detach().cpu().clone() for k, v in state[id(best)].state_dict().items()}
                           if keep else won.state, record, trained=keep)
