"""The search space: value ranges, the knobs a policy is drawn from, and the prunable layers."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from autoprune.model import knobs
from autoprune.model.knobs import FloatRange, IntRange, SpaceDomain

__all__ = ["FloatRange", "IntRange", "Space", "Layer", "STAGES", "block_of", "blocks"]

STAGES = ("backbone", "neck", "head")


@dataclass(frozen=True)
class Space:
    """What a search samples from: the per-layer ratios' range and shape, and one domain per knob.

    ``knobs`` holds the domains that differ from the knob table's defaults (:mod:`autoprune.model.knobs`),
    as (knob name, domain) pairs; :meth:`domain` reads any knob's, and a typed attribute each knob's (``space.lr``,
    ``space.criteria``).
    """

    ratio: FloatRange = FloatRange(0.0, 0.6)
    shape: str = "block"  # a name in autoprune.model.sampling: how per-layer ratios are parameterised
    multiplier: FloatRange = FloatRange(0.5, 1.5)  # shape global: per-layer factor on the global ratio
    knobs: tuple[tuple[str, SpaceDomain], ...] = ()

    def __post_init__(self) -> None:  # one canonical form: only the domains that differ from the defaults
        own = dict(self.knobs)
        for name in own:
            knobs.get(name)
        canonical = tuple((k.name, own[k.name]) for k in knobs.knobs() if k.name in own and own[k.name] != k.space)
        object.__setattr__(self, "knobs", canonical)

    def domain(self, name: str) -> SpaceDomain:
        """The domain of knob ``name`` in this space (the table's default unless set)."""
        knob = knobs.get(name)
        return dict(self.knobs).get(knob.name, knob.space)

    def replace(self, **changes: Any) -> Space:
        """A copy with fields and knob domains (by knob name or spec key) changed."""
        own = dict(self.knobs)
        fields = {}
        by_key = {k.key: k.name for k in knobs.knobs()}
        for key, value in changes.items():
            if key in ("ratio", "shape", "multiplier"):
                fields[key] = value
            else:
                own[by_key.get(key, key)] = value
        return dataclasses.replace(self, **fields, knobs=tuple(own.items()))

    def _float_range(self, name: str) -> FloatRange | None:
        d = self.domain(name)
        if d is not None and not isinstance(d, FloatRange):
            raise TypeError(f"space.{name}: {d!r} is not a float range")  # a programming error
        return d

    def _int_range(self, name: str) -> IntRange:
        d = self.domain(name)
        if not isinstance(d, IntRange):
            raise TypeError(f"space.{name}: {d!r} is not an integer range")
        return d

    def _choices(self, name: str) -> tuple[Any, ...] | None:
        d = self.domain(name)
        if d is not None and not isinstance(d, tuple):
            raise TypeError(f"space.{name}: {d!r} is not a list of choices")
        return d

    # Each knob's domain, typed (tests/test_knobs.py keeps these equal to the table); None: not searched.
    @property
    def criteria(self) -> tuple[str, ...]:
        return self._choices("criterion") or ()

    @property
    def iterations(self) -> IntRange:
        return self._int_range("iterations")

    @property
    def lr(self) -> FloatRange:
        d = self._float_range("lr")
        assert d is not None, "the lr knob is always searched or fixed"
        return d

    @property
    def ema(self) -> tuple[bool, ...]:
        return self._choices("ema") or ()

    @property
    def epochs(self) -> IntRange:
        return self._int_range("epochs")

    @property
    def round_to(self) -> tuple[int, ...]:
        return self._choices("round_to") or ()

    @property
    def schedule(self) -> tuple[str, ...]:
        return self._choices("schedule") or ()

    @property
    def distill(self) -> tuple[bool, ...]:
        return self._choices("distill") or ()

    @property
    def lrf(self) -> FloatRange | None:
        return self._float_range("lrf")

    @property
    def warmup(self) -> FloatRange | None:
        return self._float_range("warmup")

    @property
    def lr_step(self) -> FloatRange | None:
        return self._float_range("lr_step")

    @property
    def sparsity(self) -> tuple[float, ...]:
        return self._choices("sparsity") or ()

    @property
    def depth(self) -> FloatRange | None:
        return self._float_range("depth")

    @property
    def precision(self) -> tuple[str, ...] | None:
        return self._choices("precision")

    @property
    def deploy_imgsz(self) -> tuple[int, ...] | None:
        return self._choices("deploy_imgsz")


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
