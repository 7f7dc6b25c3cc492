"""The search space: value ranges, the knobs a policy is drawn from, and the prunable layers."""

from __future__ import annotations

from dataclasses import dataclass

from autoprune.model import criteria

__all__ = ["FloatRange", "IntRange", "Space", "Layer", "STAGES", "block_of", "blocks"]

STAGES = ("backbone", "neck", "head")


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False
    step: float | None = None


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int


@dataclass(frozen=True)
class Space:
    ratio: FloatRange = FloatRange(0.0, 0.6)
    criteria: tuple[str, ...] = criteria.DEFAULT
    iterations: IntRange = IntRange(1, 3)
    lr: FloatRange = FloatRange(1e-4, 1e-2, log=True)
    ema: tuple[bool, ...] = (True, False)
    epochs: IntRange = IntRange(1, 1)
    shape: str = "block"  # a name in autoprune.model.shapes: how per-layer ratios are parameterised
    multiplier: FloatRange = FloatRange(0.5, 1.5)  # shape global: per-layer factor on the global ratio
    round_to: tuple[int, ...] = (1, 8)  # channel rounding choices (torch-pruning's round_to)
    schedule: tuple[str, ...] = ("cosine", "linear")  # fine-tune learning-rate schedule
    distill: tuple[bool, ...] = (False,)  # knowledge distillation from the unpruned base while fine-tuning
    depth: FloatRange | None = None  # layer pruning: share of repeated blocks removed (None: none)
    sparsity: tuple[float, ...] = (0.0,)  # BN-scale L1 of the sparse-trained base pruned from (0: the base itself)
    # the learning-rate schedule per prune step (None: not searched; finetune.lrf / warmup_epochs and a constant lr)
    lrf: FloatRange | None = None  # final lr as a fraction of the initial
    warmup: FloatRange | None = None  # warm-up epochs (capped at epochs - 1 by the trainer)
    lr_step: FloatRange | None = None  # step k of k iterations fine-tunes at lr * lr_step ** (k - 1)


@dataclass(frozen=True)
class Layer:
    """A prunable unit of the base model: its stable module-path name and channel count."""

    name: str
    channels: int
    stage: str = "backbone"  # backbone | neck | head (the model YAML's sections; head = the Detect module)


def block_of(layer: Layer) -> str:
    """The block a layer belongs to: its top-level module (``model.4``), or for the head one branch of it
    (``model.22.cv2``: box regression, ``model.22.cv3``: classification), so each block is pruned as a unit."""
    parts = layer.name.split(".")
    return ".".join(parts[:3] if layer.stage == "head" and len(parts) > 3 else parts[:2])


def blocks(layers: list[Layer] | tuple[Layer, ...]) -> dict[str, list[Layer]]:
    """The layers grouped by :func:`block_of`, in model order."""
    out: dict[str, list[Layer]] = {}
    for layer in layers:
        out.setdefault(block_of(layer), []).append(layer)
    return out
