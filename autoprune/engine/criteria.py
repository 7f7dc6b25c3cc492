"""Criteria as objects: what the prune pipeline calls to rank channels (as in Torch-Pruning, where a criterion
is an importance object that knows what it needs first).

A criterion (:mod:`autoprune.model.criteria`: name, torch-pruning importance, and the names of its
preparations) becomes a :class:`CriterionRunner` here: :meth:`~CriterionRunner.prepare` runs its registered
:class:`Preparation` steps on the model (gradients from a real training loss; a short group-norm-regularised
training phase), :meth:`~CriterionRunner.importance` gives torch-pruning's importance object. The pipeline
never branches on a criterion's name or flags.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autoprune.config.spec import TrialSettings
from autoprune.engine.measure import Phases
from autoprune.errors import TrialError
from autoprune.model import criteria
from autoprune.registry import Registry

__all__ = ["TRACE_IMGSZ", "PrepareContext", "Preparation", "PREPARATIONS", "CriterionRunner", "get",
           "accumulate_gradients"]

TRACE_IMGSZ = 64  # input size for dependency-graph tracing; channel structure does not depend on it


@dataclass(frozen=True)
class PrepareContext:
    """What a preparation may use: the trial's settings, the prune step's lr and index, and whether it may train."""

    settings: TrialSettings
    lr: float = 0.01
    step: int = 1
    train: bool = True  # False in screens, apply and the recipe's uniform prune: preparations that train are skipped


@dataclass(frozen=True)
class Preparation:
    name: str
    doc: str
    run: Callable[[nn.Module, PrepareContext], None]
    trains: bool = False  # updates weights (skipped where the context may not train)
    needs_data: bool = True  # reads training batches


PREPARATIONS: Registry[Preparation] = Registry("preparation")


def accumulate_gradients(model: Any, settings: TrialSettings) -> None:
    """Fill ``.grad`` from the training loss on ``finetune.gradient_batches`` real training batches."""
    from autoprune.adapters import yolo

    s = settings
    model.train()
    model.zero_grad(set_to_none=True)
    for batch in yolo.training_batches(s.data, s.imgsz, s.finetune.batch, s.finetune.gradient_batches, s.device,
                                        s.seed, task=yolo.model_task(model)):
        loss = yolo.compute_loss(model, batch)
        if not torch.isfinite(loss):
            raise TrialError("training loss is not finite while computing gradients")
        loss.backward()


def _regularize(model: nn.Module, ctx: PrepareContext) -> None:
    from autoprune.adapters import pruning, yolo

    s = ctx.settings
    batches = yolo.training_batches(s.data, s.imgsz, s.finetune.batch, s.finetune.gradient_batches, s.device,
                                     s.seed + ctx.step, task=yolo.model_task(model))
    pruning.group_norm_regularize(model, TRACE_IMGSZ, batches, yolo.compute_loss, ctx.lr, reg=1e-3)


PREPARATIONS.register(Preparation("gradients", "training-loss gradients on finetune.gradient_batches real batches",
                                  lambda model, ctx: accumulate_gradients(model, ctx.settings)))
PREPARATIONS.register(Preparation("regularize", "a short group-norm-regularised training phase at the step's lr "
                                  "(torch-pruning's GroupNormPruner.regularize)", _regularize, trains=True))


@dataclass(frozen=True)
class CriterionRunner:
    """One registered criterion as the pipeline uses it."""

    criterion: criteria.Criterion

    @property
    def name(self) -> str:
        return self.criterion.name

    @property
    def preparations(self) -> list[Preparation]:
        return [PREPARATIONS.get(p) for p in self.criterion.prepare]

    @property
    def needs_data(self) -> bool:
        """Whether scoring needs the data set even without training (gradients do; a trained phase is skipped)."""
        return any(p.needs_data and not p.trains for p in self.preparations)

    def prepare(self, model: nn.Module, ctx: PrepareContext, phases: Phases | None = None) -> None:
        """Run the criterion's preparations on ``model`` (each timed as a phase of its own name)."""
        phases = phases or Phases()
        for prep in self.preparations:
            if prep.trains and not ctx.train:
                continue
            with phases(prep.name):
                prep.run(model, ctx)

    def importance(self) -> Any:
        """torch-pruning's importance object for this criterion."""
        from autoprune.adapters import pruning

        return pruning.importance(self.criterion)


def get(name: str) -> CriterionRunner:
    """The criterion ``name`` (a name in :mod:`autoprune.model.criteria`) as the pipeline's object."""
    return CriterionRunner(criteria.get(name))
