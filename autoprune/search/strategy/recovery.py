"""Whether a search can pay on this task, measured before it starts: the recovery probe.

A search buys a better start than the hand recipe's model (its allocations keep more of the base's mAP after
pruning), paid for with its share of the budget, which the final fine-tunes then lack. What a better start is worth
is measured on the user's task: the recipe's model at the chain's first target (the largest) is fine-tuned for as
long as the smallest search would cost (at the final phase's learning rate, held constant: the final fine-tune
goes on from it at that rate, without a second warm-up, so that the two make one schedule) and validated.
No pruned candidate starts above the base's own val mAP50-95, so the most a searched start saves is the training
the recipe's model needs to get back there (within the race's dominance margin): the probe's time where it got
there, else its remaining gap extrapolated at the rate the probe closed it (:attr:`Recovery.recovery_s`). Where
that is less than the search's share, the share is worth more to the final fine-tunes than any start the search
could find, and the run makes no search. The probed weights are kept: they start that target's recipe model in the
final phase either way (and in a race they meet the search's pick with training of their own).

The judgement assumes that from the base's level on a searched start and the recipe's model gain alike from more
training (it compares starts, not where each would end); the record says what was measured.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune.config.spec import SearchSpec
from autoprune.model import records
from autoprune.model.race import DOMINANCE

logger = logging.getLogger(__name__)

__all__ = ["Recovery", "probe_recovery", "probed_start"]

EPOCH_CAP = 10_000  # the probe trains for its seconds: the epoch count is only ultralytics' cap


@dataclass(frozen=True)
class Recovery:
    """What the probe measured: the recipe's model at ``target`` (trial ``trial``) fine-tuned ``train_s`` seconds
    at ``lr``, its val mAP50-95 before and after, the base's, and where the probed weights are."""

    target: str
    trial: int
    seconds: float  # asked for: what the smallest search costs
    train_s: float
    lr: float
    val_before: float
    val_after: float
    base_val: float
    checkpoint: str

    @property
    def recovered(self) -> bool:
        """Back at the base's val mAP50-95 (within the dominance margin)."""
        return self.val_after >= self.base_val - DOMINANCE.map_points

    @property
    def recovery_s(self) -> float:
        """The fine-tuning the recipe's model needs to be back at the base's val mAP50-95 (within the margin): the
        probe's time where it got there; else its gap to the base extrapolated at the rate the probe closed it (a
        gap that shrank from ``g0`` to ``g1`` in ``t`` seconds shrinks by that factor every ``t`` seconds);
        infinite where the probe did not close it at all."""
        if self.recovered:
            return self.train_s
        g0, g1 = self.base_val - self.val_before, self.base_val - self.val_after
        if g1 >= g0 or g0 <= 0:
            return math.inf
        return self.train_s * math.log(g0 / DOMINANCE.map_points) / math.log(g0 / g1)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "recovered": self.recovered,
                "recovery_s": round(self.recovery_s, 1) if math.isfinite(self.recovery_s) else None}


def _first_recipe(study: optuna.Study) -> FrozenTrial | None:
    """The recipe's model with the most parameters (the chain's first target), where its checkpoint is here."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if records.trial(t).recipe and records.trial(t).checkpoint
            and Path(str(records.trial(t).checkpoint)).exists()]
    return max(done, key=lambda t: float(records.trial(t).metrics.get("params", 0.0)), default=None)


def probe_recovery(study: optuna.Study, spec: SearchSpec, seconds: float) -> Recovery | None:
    """Fine-tune the chain's first recipe model for ``seconds`` and validate it (see module doc); the weights are
    saved beside the study's trials and the probe recorded on the study (:func:`records.set_recovery_probe`). None
    where no recipe model's checkpoint is on this machine."""
    from autoprune.adapters import yolo

    trial = _first_recipe(study)
    if trial is None:
        return None
    rec = records.trial(trial)
    data = str(records.baseline(study).get("data") or spec.data)
    model = yolo.load_model(str(rec.checkpoint)).to(spec.device)
    f, lr = spec.finetune, spec.budget.final_lr
    cfg = yolo.FinetuneConfig(data=data, imgsz=spec.imgsz, epochs=EPOCH_CAP, lr=lr, ema=True, batch=f.batch,
                               device=spec.device, threads=spec.train_threads, seed=spec.seed, warmup_epochs=0.0,
                               cos_lr=False, lrf=1.0, optimizer=f.optimizer, seconds=seconds)  # constant lr: the
    # final fine-tune goes on from these weights at the same lr, so that probe and fine-tune make one schedule
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=spec.study_dir, prefix="autoprune-probe-") as tmp:
        yolo.finetune(model, cfg, Path(tmp) / "train")
    train_s = time.perf_counter() - t0
    after = yolo.validate(model, data, spec.imgsz, device=spec.device, batch=f.batch, threads=spec.train_threads,
                          split="val").map50_95
    target = str((rec.recipe or {}).get("target"))
    folder = spec.study_dir / "trials" / f"recovery-{target}-{trial.number}"
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = yolo.save_checkpoint(model, folder / "pruned.pt")
    out = Recovery(target, trial.number, round(seconds, 2), round(train_s, 2), lr,
                   float(rec.metrics.get("map50_95", 0.0)), float(after),
                   float(records.baseline_metrics(study).get("map50_95", 0.0)), str(checkpoint))
    records.set_recovery_probe(study, study, trial.number, out.to_dict())
    logger.info("recovery probe: the hand recipe's model at %s (trial %d), %.0f s of fine-tuning at lr %g: val "
                "mAP50-95 %.4f -> %.4f (the base %.4f)", target, trial.number, train_s, lr, out.val_before,
                out.val_after, out.base_val)
    return out


def probed_start(study: optuna.Study, trial: FrozenTrial) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(weights, record)`` of ``trial``'s recovery probe, where it had one and its checkpoint is here."""
    from autoprune.adapters import yolo

    probe = records.recovery_probe(study, trial.number)
    if probe is None or not Path(str(probe.get("checkpoint"))).exists():
        return None
    model = yolo.load_model(str(probe["checkpoint"]))
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, probe
