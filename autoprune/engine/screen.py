"""Cheap screening of a candidate policy: adaptive BatchNorm (as in EagleEye), no fine-tuning.

A screened candidate is pruned straight to its final channel counts, its BatchNorm
statistics are re-estimated on a few training batches (no gradient step), and it is
validated: seconds instead of a fine-tune.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from autoprune.config.spec import TrialSettings
from autoprune.engine.measure import measure_model
from autoprune.engine.pipeline import load_start, prune_once, recalibrate_bn
from autoprune.engine.trial import failure_reason
from autoprune.model.policy import Policy
from autoprune.model.records import TrialResult
from autoprune.model.sampling import target_keep
from autoprune.model.space import Layer

__all__ = ["recalibrate_bn", "screen_policy", "screen_safely"]  # recalibrate_bn: from engine.pipeline


def screen_policy(settings: TrialSettings, policy: Policy, layers: Sequence[Layer], batches: int) -> TrialResult:
    """Prune to the policy's final channels, recalibrate BN, measure."""
    from autoprune.adapters import yolo

    s = settings.deployed_as(policy.precision, policy.deploy_imgsz)  # the policy's deployment, if it has one
    t0 = time.perf_counter()
    yolo.set_threads(s.threads)
    torch.manual_seed(s.seed)
    model = load_start(s, policy).model  # sparse base and layer pruning first, as in a trial
    original = {layer.name: layer.channels for layer in layers}
    keep = target_keep(original, policy.ratio_map, 1, 1, policy.round_to)
    channels = prune_once(model, s, policy.criterion, keep, regularize=False)
    n = recalibrate_bn(model, yolo.training_batches(s.data, s.imgsz, s.finetune.batch, batches, s.device, s.seed,
                                                     task=yolo.model_task(model)))
    reference = yolo.load_model(s.model) if s.latency.interleave else None
    m = measure_model(model, s, reference=reference)
    return TrialResult(ok=True, metrics=m.metrics(), policy=policy.to_dict(), channels=channels, latency=m.latency,
                       bn_batches=n, screen_seconds=round(time.perf_counter() - t0, 3))


def screen_safely(settings: TrialSettings, policy: Policy, layers: Sequence[Layer], batches: int) -> TrialResult:
    """Like :func:`screen_policy`, but a failure is a failed result: a failed candidate, never a stopped search."""
    t0 = time.perf_counter()
    try:
        result = screen_policy(settings, policy, layers, batches)
        result.wall_seconds = round(time.perf_counter() - t0, 3)
        return result
    except Exception as e:
        return TrialResult(ok=False, policy=policy.to_dict(), reason=failure_reason(e))
