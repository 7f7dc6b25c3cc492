"""The one prune pipeline: importance inputs (gradients, regularisation), a prune step, its checks.

Used by trials (k steps with fine-tuning between), screening (one step to the final channels)
and ``autoprune apply`` (one step to a policy's recorded channels).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autoprune.config.spec import TrialSettings
from autoprune.engine.measure import Phases
from autoprune.errors import TrialError
from autoprune.model import criteria
from autoprune.model.policy import Policy

__all__ = ["TRACE_IMGSZ", "accumulate_gradients", "prune_once", "recalibrate_bn", "Start", "load_start"]

TRACE_IMGSZ = 64  # input size for dependency-graph tracing; channel structure does not depend on it


@dataclass(frozen=True)
class Start:
    """The model a policy's channel pruning starts from, and how it was made."""

    model: Any  # an ultralytics DetectionModel
    sparse: dict[str, Any] | None  # the sparse base's BN-scale summary (None: the base itself)
    blocks: dict[str, int]  # blocks whose repeated bottlenecks layer pruning cut, and their new n


def load_start(settings: TrialSettings, policy: Policy) -> Start:
    """The base (or its sparse-trained copy, trained once and cached) on the trial's device, layer-pruned by the
    policy's depth: what trials and screens prune channels from."""
    from autoprune.adapters import ultra

    s = settings
    base, sparse = s.model, None
    if policy.sparsity > 0:
        from autoprune.engine.sparse import sparse_base

        path, sparse = sparse_base(s, policy.sparsity)
        base = str(path)
    model = ultra.load_model(base).to(s.device)
    blocks = ultra.remove_blocks(model, policy.depth) if policy.depth > 0 else {}
    return Start(model, sparse, blocks)


def accumulate_gradients(model: Any, settings: TrialSettings) -> None:
    """Fill ``.grad`` from the training loss on ``finetune.gradient_batches`` real training batches."""
    from autoprune.adapters import ultra

    s = settings
    model.train()
    model.zero_grad(set_to_none=True)
    for batch in ultra.training_batches(s.data, s.imgsz, s.finetune.batch, s.finetune.gradient_batches, s.device,
                                        s.seed, task=ultra.model_task(model)):
        loss = ultra.compute_loss(model, batch)
        if not torch.isfinite(loss):
            raise TrialError("training loss is not finite while computing gradients")
        loss.backward()


def prune_once(model: nn.Module, settings: TrialSettings, criterion: str, keep: Mapping[str, int], *,
               lr: float = 0.01, step: int = 1, regularize: bool = True,
               phases: Phases | None = None) -> dict[str, int]:
    """Prune ``model`` in place so each unit keeps ``keep[name]`` channels, ranking channels by ``criterion``.

    Gradient criteria get gradients from real training batches first; with ``regularize`` a
    regularising criterion (group_norm) gets its short regularised training phase at ``lr``.
    Returns every unit's channel count; a unit pruned to nothing raises :class:`TrialError`.
    """
    from autoprune.adapters import tp, ultra

    s = settings
    phases = phases or Phases()
    crit = criteria.get(criterion)
    if crit.needs_gradients:
        with phases("gradients"):
            accumulate_gradients(model, s)
    if crit.regularize and regularize:
        with phases("regularize"):
            batches = ultra.training_batches(s.data, s.imgsz, s.finetune.batch, s.finetune.gradient_batches, s.device,
                                             s.seed + step, task=ultra.model_task(model))
            tp.group_norm_regularize(model, TRACE_IMGSZ, batches, ultra.compute_loss, lr, reg=1e-3)
    with phases("prune"):
        channels = tp.prune_step(model, keep, tp.importance(crit), TRACE_IMGSZ)
        model.zero_grad(set_to_none=True)
    empty = [n for n, c in channels.items() if c < 1]
    if empty:
        raise TrialError(f"layer {empty[0]} was pruned to nothing")
    return channels


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[dict[str, Any]]) -> int:
    """Adaptive BatchNorm: reset every BN's running statistics and re-estimate them (cumulative
    average) from forward passes in train mode.  Weights are not changed.  Returns the batch count."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average over the calibration batches
    was_training = model.training
    model.train()
    n = 0
    try:
        for batch in batches:
            model(batch["img"])
            n += 1
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        model.train(was_training)
    return n
