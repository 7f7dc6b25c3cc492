"""One trial: prune the base model by a policy in k steps, fine-tune between steps, measure, round-trip."""

from __future__ import annotations

import logging
import math
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.config.spec import TrialSettings
from autoprune.engine.measure import Measurement, Phases, measure_model
from autoprune.engine.pipeline import load_start, prune_once, recalibrate_bn
from autoprune.errors import AutopruneError, TrialError
from autoprune.model.policy import Policy
from autoprune.model.records import TrialResult
from autoprune.model.sampling import target_keep
from autoprune.model.space import Layer

logger = logging.getLogger(__name__)

__all__ = ["TrialResult", "run_trial", "run_trial_safely", "verify_roundtrip", "failure_reason",
           "ROUNDTRIP_TOLERANCE"]

ROUNDTRIP_TOLERANCE = 1e-3


def run_trial(settings: TrialSettings, policy: Policy, layers: Sequence[Layer], workdir: Path,
              finetune: bool = True) -> TrialResult:
    """Run one trial for real; raises on failure (see :func:`run_trial_safely`). Without ``finetune`` the pruned
    model gets adaptive BN (re-estimated BatchNorm statistics, no gradient step) in place of each fine-tune: what a
    budgeted run's ``budget.direct`` hands to the final fine-tune."""
    from autoprune.adapters import yolo

    s = settings.deployed_as(policy.precision, policy.deploy_imgsz)  # the policy's deployment, if it has one
    yolo.set_threads(s.threads)
    torch.manual_seed(s.seed)
    phases = Phases()
    original = {layer.name: layer.channels for layer in layers}
    with phases("load"):
        start = load_start(s, policy)
    model, sparse, blocks = start.model, start.sparse, start.blocks
    channels: dict[str, int] = dict(original)
    trained: dict[str, Any] = {"epochs": 0, "batches": 0, "optimizer_steps": 0}
    before: _Snapshot | None = None
    for step in range(1, policy.iterations + 1):
        keep = target_keep(original, policy.ratio_map, step, policy.iterations, policy.round_to)
        channels = prune_once(model, s, policy.criterion, keep, lr=policy.lr, step=step, phases=phases)
        if not finetune:  # adaptive BN in place of the fine-tune; measure_model validates it below
            with phases("adaptive_bn"):
                _recalibrate(model, s)
            trained.update(kept="adaptive_bn", finetuned=False)
            continue
        if step == policy.iterations and s.finetune.keep_best:
            with phases("keep_best"):
                before = _adaptive_bn_state(model, s)
        with phases("finetune"):
            cfg = yolo.FinetuneConfig(data=s.data, imgsz=s.imgsz, epochs=policy.epochs, lr=policy.step_lr(step),
                                       ema=policy.ema, batch=s.finetune.batch, device=s.device,
                                       workers=s.finetune.workers, threads=s.threads,
                                       optimizer=s.finetune.optimizer, seed=s.seed, nbs=s.finetune.nbs,
                                       warmup_epochs=s.finetune.warmup_epochs if policy.warmup is None
                                       else policy.warmup, lrf=s.finetune.lrf if policy.lrf is None else policy.lrf,
                                       cos_lr=policy.schedule == "cosine",
                                       distill_model=s.model if policy.distill else None,
                                       distill_weight=s.finetune.distill_weight)
            stats = yolo.finetune(model, cfg, workdir / f"step{step}")
            model.zero_grad(set_to_none=True)  # the trainer's last gradients are stale for the next prune step
            _check_device(model, s.device)
        for key in trained:
            trained[key] += getattr(stats, key)
    reference = yolo.load_model(s.model) if s.latency.interleave else None
    measurement = measure_model(model, s, phases, reference=reference)
    if before is not None:
        trained["map50_95_before"] = before.map50_95
        trained["kept"] = "finetuned"
        if measurement.map50_95 < before.map50_95:  # fine-tuning made it worse: keep the adaptive-BN weights
            model.load_state_dict(before.state)
            measurement = measure_model(model, s, phases, reference=reference)
            trained["kept"] = "adaptive_bn"
    metrics = measurement.metrics()
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    if bad:
        raise TrialError(f"metric {bad[0]} is not finite")
    with phases("roundtrip"):
        workdir.mkdir(parents=True, exist_ok=True)  # a trial without fine-tune has no trainer that made it
        checkpoint = workdir / "pruned.pt"
        roundtrip = verify_roundtrip(model, checkpoint, s, measurement)
    return TrialResult(ok=True, metrics=metrics, policy=policy.to_dict(), channels=channels,
                       latency=measurement.latency, seconds=phases.seconds, checkpoint=str(checkpoint),
                       roundtrip=roundtrip, finetune=trained, sparse=sparse, blocks=blocks or None)


@dataclass(frozen=True)
class _Snapshot:
    map50_95: float
    state: dict[str, torch.Tensor]


def _adaptive_bn_state(model: nn.Module, settings: TrialSettings) -> _Snapshot:
    """The pruned model with re-estimated BN statistics (adaptive BN, no gradient step), validated: what the last
    fine-tune must beat on the val split."""
    from autoprune.adapters import yolo

    s = settings
    _recalibrate(model, s)
    val = yolo.validate(model, s.data, s.imgsz, device=s.device, batch=s.finetune.batch, threads=s.threads)
    return _Snapshot(val.map50_95, {k: v.detach().clone() for k, v in model.state_dict().items()})


def _recalibrate(model: nn.Module, s: TrialSettings) -> None:
    """Adaptive BN: re-estimate the BatchNorm statistics on ``finetune.bn_batches`` training batches."""
    from autoprune.adapters import yolo

    recalibrate_bn(model, yolo.training_batches(s.data, s.imgsz, s.finetune.batch, s.finetune.bn_batches, s.device,
                                                 s.seed, task=yolo.model_task(model)))


def _check_device(model: nn.Module, device: str) -> None:
    """After a fine-tune every parameter (and gradient, if any) is on the trial's device."""
    want = torch.device(device)
    for name, p in model.named_parameters():
        for t in (p, p.grad):
            if t is not None and (t.device.type != want.type or want.index is not None and t.device != want):
                raise TrialError(f"after fine-tuning, {name} is on {t.device}, not {device}")


def verify_roundtrip(model: nn.Module, path: Path, settings: TrialSettings, measured: Measurement) -> dict[str, float]:
    """Save ``model`` as a plain ultralytics checkpoint, reload it and validate it again.

    The trial's metrics count only if the reloaded checkpoint has the same parameter count
    and mAP (within ``ROUNDTRIP_TOLERANCE``); otherwise :class:`TrialError`.
    """
    from autoprune.adapters import yolo

    s = settings
    yolo.save_checkpoint(model, path)
    reloaded = yolo.load_model(path).to(s.device)
    params = yolo.count_params(reloaded)
    if params != measured.params:
        raise TrialError(f"round trip: {path.name} reloads with {params} parameters, the trial measured "
                         f"{measured.params}")
    val = yolo.validate(reloaded, s.data, s.imgsz, device=s.device, batch=s.finetune.batch, threads=s.threads)
    for name, got, want in (("mAP50-95", val.map50_95, measured.map50_95), ("mAP50", val.map50, measured.map50)):
        if abs(got - want) > ROUNDTRIP_TOLERANCE:
            raise TrialError(f"round trip: {path.name} validates to {name} {got:.4f}, the trial measured {want:.4f}")
    return {"map50_95": val.map50_95, "map50": val.map50, "params": float(params)}


def failure_reason(e: BaseException) -> str:
    """The one-line reason a failed trial records."""
    if isinstance(e, AutopruneError):
        return str(e)
    logger.debug("trial failed:\n%s", traceback.format_exc())
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}"[:500]


def run_trial_safely(settings: TrialSettings, policy: Policy, layers: Sequence[Layer], workdir: Path,
                     finetune: bool = True) -> TrialResult:
    """Like :func:`run_trial`, but every failure becomes a failed result with a one-line reason."""
    t0 = time.perf_counter()
    try:
        result = run_trial(settings, policy, layers, workdir, finetune)
    except Exception as e:  # a trial must never take the study down
        result = TrialResult(ok=False, reason=failure_reason(e))
    result.policy = result.policy or policy.to_dict()
    result.wall_seconds = round(time.perf_counter() - t0, 3)
    return result
