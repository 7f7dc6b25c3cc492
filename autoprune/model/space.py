"""The search space: value ranges, the knobs a policy is drawn from, and the prunable layers."""

from __future__ import annotations

from dataclasses import dataclass

from autoprune.model import criteria

__all__ = ["FloatRange", "IntRange", "Space", "Layer", "STAGES"]

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
    shape: str = "stage"  # a name in autoprune.model.shapes: how per-layer ratios are parameterised
    multiplier: FloatRange = FloatRange(0.5, 1.5)  # shape global: per-layer factor on the global ratio
    round_to: tuple[int, ...] = (1, 8)  # channel rounding choices (torch-pruning's round_to)
    schedule: tuple[str, ...] = ("cosine", "linear")  # fine-tune learning-rate schedule


@dataclass(frozen=True)
class Layer:
    """A prunable unit of the base model: its stable module-path name and channel count."""

    name: str
    channels: int
    stage: str = "backbone"  # backbone | neck | head (the model YAML's sections; head = the Detect module)
