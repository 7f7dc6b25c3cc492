"""The registry of channel-importance criteria a policy can use.

A criterion is a small frozen record. Criteria that keep the same channels are one knob: ``lamp``
was dropped (benchmarks/criteria_overlap.py: its per-unit selection equals ``l2``'s, Jaccard 1.0).
The default space holds the distinct ones (:data:`DEFAULT`). Its ``importance`` names one of torch-pruning's
importance classes and ``options`` its constructor arguments (the torch-pruning adapter maps the class name to
the class); ``prepare`` names the preparations that must run on the model before it is scored (gradients from
a training loss, a regularised training phase), registered in :mod:`autoprune.engine.criteria`, where a
criterion becomes the object the prune pipeline calls (prepare, then importance). Adding a criterion is one
:func:`register` call.
"""

from __future__ import annotations

from dataclasses import dataclass

from autoprune.registry import Registry

__all__ = ["Criterion", "REGISTRY", "register", "get", "names", "DEFAULT"]


@dataclass(frozen=True)
class Criterion:
    name: str
    description: str
    importance: str  # torch-pruning importance class (see adapters.pruning.IMPORTANCE_CLASSES)
    options: tuple[tuple[str, object], ...] = ()  # its constructor arguments
    prepare: tuple[str, ...] = ()  # what must run on the model before it is scored (names in engine.criteria)


REGISTRY: Registry[Criterion] = Registry("criterion")
register, get, names = REGISTRY.register, REGISTRY.get, REGISTRY.names

register(Criterion("l1", "L1 norm of each channel's weights across its dependency group",
                   "GroupMagnitudeImportance", (("p", 1),)))
register(Criterion("l2", "L2 norm of each channel's weights across its dependency group",
                   "GroupMagnitudeImportance", (("p", 2),)))
register(Criterion("bn_scale", "|gamma| of the BatchNorm after each conv (network slimming)", "BNScaleImportance"))
register(Criterion("taylor", "first-order Taylor: |w * dL/dw| from real training-loss gradients",
                   "GroupTaylorImportance", prepare=("gradients",)))
register(Criterion("fpgm", "filter pruning via geometric median (redundancy of each filter)", "FPGMImportance",
                   (("p", 2),)))
register(Criterion("random", "random channel choice: a control, not in the default space", "RandomImportance"))
register(Criterion("group_norm", "group L2 norm after a short group-norm-regularised training phase (without the "
                   "phase, as in a screen, it keeps the same channels as l2; not in the default space)",
                   "GroupMagnitudeImportance", (("p", 2), ("group_reduction", "mean"), ("normalizer", "mean")),
                   prepare=("regularize",)))

DEFAULT: tuple[str, ...] = ("l1", "l2", "bn_scale", "taylor", "fpgm")  # distinct selections; random is a control
