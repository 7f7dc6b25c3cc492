"""The registry of channel-importance criteria a policy can use.

A criterion is a small frozen record; the importance object itself comes from the
torch-pruning adapter, so adding a criterion is one :func:`register` call plus one
preset there.
"""

from __future__ import annotations

from dataclasses import dataclass

from autoprune.errors import SpecError

__all__ = ["Criterion", "register", "get", "names"]


@dataclass(frozen=True)
class Criterion:
    name: str
    description: str
    needs_gradients: bool = False  # importance reads .grad from a real training loss
    regularize: bool = False  # a short group-norm-regularised training phase precedes pruning


_REGISTRY: dict[str, Criterion] = {}


def register(criterion: Criterion) -> Criterion:
    if criterion.name in _REGISTRY:
        raise ValueError(f"criterion {criterion.name!r} is registered already")
    _REGISTRY[criterion.name] = criterion
    return criterion


def get(name: str) -> Criterion:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SpecError(f"unknown criterion {name!r} (choose from {', '.join(names())})") from None


def names() -> list[str]:
    return list(_REGISTRY)


register(Criterion("l1", "L1 norm of each channel's weights across its dependency group"))
register(Criterion("l2", "L2 norm of each channel's weights across its dependency group"))
register(Criterion("bn_scale", "|gamma| of the BatchNorm after each conv (network slimming)"))
register(Criterion("taylor", "first-order Taylor: |w * dL/dw| from real training-loss gradients",
                   needs_gradients=True))
register(Criterion("lamp", "layer-adaptive magnitude pruning score"))
register(Criterion("fpgm", "filter pruning via geometric median (redundancy of each filter)"))
register(Criterion("random", "random channel choice (a baseline)"))
register(Criterion("group_norm", "group L2 norm after a short group-norm-regularised training phase",
                   regularize=True))
