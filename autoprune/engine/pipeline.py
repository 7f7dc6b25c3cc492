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
from autoprune.engine import criteria
from autoprune.engine.criteria import TRACE_IMGSZ, accumulate_gradients
from autoprune.engine.measure import Phases
from autoprune.errors import TrialError
from autoprune.model.policy import Policy

__all__ = ["TRACE_IMGSZ", "accumulate_gradients", "prune_once", "recalibrate_bn", "Start", "load_start"]

@dataclass(frozen=True)
class Start:
    """The model a policy's channel pruning starts from, and how it was made."""

    model: Any  # an ultralytics DetectionModel
    sparse: dict[str, Any] | None  # the sparse base's BN-scale summary (None: the base itself)
    blocks: dict[str, int]  # blocks whose repeated bottlenecks layer pruning cut, and their new n


def load_start(settings: TrialSettings, policy: Policy) -> Start:
    """The base (or its sparse-trained copy, trained once and cached) on the trial's device, layer-pruned by the
    policy's depth: what trials and screens prune channels from."""
    from autoprune.adapters import yolo

    s = settings
    base, sparse = s.model, None
    if policy.sparsity > 0:
        from autoprune.engine.sparse import sparse_base

        path, sparse = sparse_base(s, policy.sparsity)
        base = str(path)
    model = yolo.load_model(base).to(s.device)
    blocks = yolo.remove_blocks(model, policy.depth) if policy.depth > 0 else {}
    return Start(model, sparse, blocks)


def prune_once(model: nn.Module, settings: TrialSettings, criterion: str, keep: Mapping[str, int], *,
               lr: float = 0.01, step: int = 1, regularize: bool = True,
               phases: Phases | None = None) -> dict[str, int]:
    """Prune ``model`` in place so each unit keeps ``keep[name]`` channels, ranking channels by ``criterion``.

    The criterion prepares the model first (:mod:`autoprune.engine.criteria`: gradients from real training
    batches; with ``regularize``, a regularising criterion's short training phase at ``lr``), then scores.
    Returns every unit's channel count; a unit pruned to nothing raises :class:`TrialError`.
    """
    from autoprune.adapters import pruning

    phases = phases or Phases()
    crit = criteria.get(criterion)
    crit.prepare(model, criteria.PrepareContext(settings, lr=lr, step=step, train=regularize), phases)
    with phases("prune"):
        channels = pruning.prune_step(model, keep, crit.importance(), TRACE_IMGSZ)
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
