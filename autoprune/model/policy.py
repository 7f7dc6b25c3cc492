"""A pruning policy: what one trial does to the base model, and its one dict codec.

A policy is the per-layer prune ratios plus one value per knob of the knob table
(:mod:`autoprune.model.knobs`); ``policy.lr`` reads the ``lr`` knob's value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from autoprune.model import knobs

__all__ = ["Policy", "ratio_summary"]


@dataclass(frozen=True, init=False)
class Policy:
    ratios: tuple[tuple[str, float], ...]  # (layer name, fraction of its channels to remove)
    knobs: tuple[tuple[str, Any], ...]  # (knob name, value) for every knob, in table order

    def __init__(self, ratios: tuple[tuple[str, float], ...], **values: Any):
        table = knobs.knobs()
        unknown = sorted(set(values) - {k.name for k in table})
        if unknown:
            raise TypeError(f"Policy: unknown knob {unknown[0]!r}")
        missing = [k.name for k in table if k.required and k.name not in values]
        if missing:
            raise TypeError(f"Policy: missing knob {missing[0]!r}")
        object.__setattr__(self, "ratios", tuple(ratios))
        object.__setattr__(self, "knobs", tuple((k.name, values.get(k.name, k.value)) for k in table))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "knobs":
            raise AttributeError(name)
        for key, value in self.__dict__.get("knobs", ()):
            if key == name:
                return value
        if name in knobs.REGISTRY:  # a knob registered after this policy was made
            return knobs.get(name).value
        raise AttributeError(f"Policy has no knob {name!r}")

    def replace(self, **changes: Any) -> Policy:
        ratios = changes.pop("ratios", self.ratios)
        return Policy(ratios, **{**dict(self.knobs), **changes})

    def step_lr(self, step: int) -> float:
        """The initial learning rate of prune step ``step`` (1-based), at most the lr knob's bound (the trainer
        refuses a higher one)."""
        bound = knobs.get("lr").domain
        cap = bound.high if isinstance(bound, knobs.Real) else float("inf")
        return float(min(self.lr * self.lr_step ** (step - 1), cap))

    @property
    def ratio_map(self) -> dict[str, float]:
        return dict(self.ratios)

    @property
    def values(self) -> dict[str, Any]:
        """Each knob's value by name."""
        return dict(self.knobs)

    def to_dict(self) -> dict[str, Any]:
        return {"ratios": self.ratio_map, **self.values}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Policy:
        """From :meth:`to_dict`'s form; knobs a dict lacks (an older study's) take their table value."""
        values = {k.name: k.coerce(d[k.name] if k.required else d.get(k.name)) for k in knobs.knobs()}
        return cls(ratios=tuple((str(k), float(v)) for k, v in dict(d["ratios"]).items()), **values)


def ratio_summary(ratios: Mapping[str, float]) -> str:
    if not ratios:
        return "-"
    vals = list(ratios.values())
    return f"mean {sum(vals) / len(vals):.2f} [{min(vals):.2f}..{max(vals):.2f}]"
