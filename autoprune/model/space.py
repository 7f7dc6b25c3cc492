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
    as (knob name, domain) pairs; :meth:`domain` reads any knob's, and ``space.<spec key>`` (``space.lr``,
    ``space.criteria``) is the same lookup.
    """

    ratio: FloatRange = FloatRange(0.0, 0.6)
    shape: str = "block"  # a name in autoprune.model.shapes: how per-layer ratios are parameterised
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

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_") or key == "knobs":
            raise AttributeError(key)
        for knob in knobs.knobs():
            if key in (knob.key, knob.name):
                return self.domain(knob.name)
        raise AttributeError(f"Space has no knob or field {key!r}")


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
