"""A pruning policy: what one trial does to the base model, and its one dict codec.

A policy is the per-layer prune ratios plus one value per knob of the knob table
(:mod:`autoprune.model.knobs`); ``policy.lr`` reads the ``lr`` knob's value, typed, and ``policy.value(name)``
any knob's.
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

    def value(self, name: str) -> Any:
        """Knob ``name``'s value (its table value for a knob registered after this policy was made)."""
        for key, value in self.knobs:
            if key == name:
                return value
        return knobs.get(name).value  # raises KeyError naming the knob for one the table lacks

    # Each knob of the table, typed (tests/test_knobs.py keeps these equal to the table).
    @property
    def criterion(self) -> str:
        return str(self.value("criterion"))

    @property
    def iterations(self) -> int:
        return int(self.value("iterations"))

    @property
    def lr(self) -> float:
        return float(self.value("lr"))

    @property
    def ema(self) -> bool:
        return bool(self.value("ema"))

    @property
    def epochs(self) -> int:
        return int(self.value("epochs"))

    @property
    def round_to(self) -> int:
        return int(self.value("round_to"))

    @property
    def schedule(self) -> str:
        return str(self.value("schedule"))

    @property
    def distill(self) -> bool:
        return bool(self.value("distill"))

    @property
    def lrf(self) -> float | None:
        v = self.value("lrf")
        return None if v is None else float(v)

    @property
    def warmup(self) -> float | None:
        v = self.value("warmup")
        return None if v is None else float(v)

    @property
    def lr_step(self) -> float:
        return float(self.value("lr_step"))

    @property
    def sparsity(self) -> float:
        return float(self.value("sparsity"))

    @property
    def depth(self) -> float:
        return float(self.value("depth"))

    @property
    def precision(self) -> str | None:
        v = self.value("precision")
        return None if v is None else str(v)

    @property
    def deploy_imgsz(self) -> int | None:
        v = self.value("deploy_imgsz")
        return None if v is None else int(v)

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
