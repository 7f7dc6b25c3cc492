"""A pruning policy: what one trial does to the base model, and how it is sampled."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import optuna

from autoprune.spec import Space

__all__ = ["Layer", "Policy", "sample_policy", "ratio_summary"]


@dataclass(frozen=True)
class Layer:
    """A prunable unit of the base model: its stable module-path name and channel count."""

    name: str
    channels: int


@dataclass(frozen=True)
class Policy:
    ratios: tuple[tuple[str, float], ...]  # (layer name, fraction of its channels to remove)
    criterion: str
    iterations: int
    lr: float
    ema: bool
    epochs: int

    @property
    def ratio_map(self) -> dict[str, float]:
        return dict(self.ratios)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratios"] = self.ratio_map
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Policy:
        return cls(ratios=tuple((str(k), float(v)) for k, v in dict(d["ratios"]).items()),
                   criterion=str(d["criterion"]), iterations=int(d["iterations"]), lr=float(d["lr"]),
                   ema=bool(d["ema"]), epochs=int(d["epochs"]))


def _suggest_float(trial: optuna.Trial, name: str, low: float, high: float, log: bool, step: float | None) -> float:
    if low == high:
        return low
    return trial.suggest_float(name, low, high, log=log, step=None if log else step)


def _suggest_int(trial: optuna.Trial, name: str, low: int, high: int) -> int:
    return low if low == high else trial.suggest_int(name, low, high)


def _suggest_choice(trial: optuna.Trial, name: str, choices: Sequence[Any]) -> Any:
    return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, list(choices))


def sample_policy(trial: optuna.Trial, space: Space, layers: Sequence[Layer]) -> Policy:
    """Define-by-run sampling of one policy; parameter names are stable across studies."""
    r = space.ratio
    ratios = tuple((layer.name, _suggest_float(trial, f"ratio/{layer.name}", r.low, r.high, r.log, r.step))
                   for layer in layers)
    return Policy(
        ratios=ratios,
        criterion=_suggest_choice(trial, "criterion", space.criteria),
        iterations=_suggest_int(trial, "iterations", space.iterations.low, space.iterations.high),
        lr=_suggest_float(trial, "lr", space.lr.low, space.lr.high, space.lr.log, space.lr.step),
        ema=_suggest_choice(trial, "ema", space.ema),
        epochs=_suggest_int(trial, "epochs", space.epochs.low, space.epochs.high),
    )


def ratio_summary(ratios: Mapping[str, float]) -> str:
    if not ratios:
        return "-"
    vals = list(ratios.values())
    return f"mean {sum(vals) / len(vals):.2f} [{min(vals):.2f}..{max(vals):.2f}]"
