"""A pruning policy: what one trial does to the base model, and how it is sampled."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import optuna

from autoprune.spec import FloatRange, IntRange, Space

__all__ = ["Layer", "Policy", "sample_policy", "sample_ratios", "uniform_params", "params_for_policy", "ratio_summary",
           "STAGES"]


@dataclass(frozen=True)
class Layer:
    """A prunable unit of the base model: its stable module-path name and channel count."""

    name: str
    channels: int
    stage: str = "backbone"  # backbone | neck | head (the model YAML's sections; head = the Detect module)


@dataclass(frozen=True)
class Policy:
    ratios: tuple[tuple[str, float], ...]  # (layer name, fraction of its channels to remove)
    criterion: str
    iterations: int
    lr: float
    ema: bool
    epochs: int
    round_to: int = 1  # kept channels are rounded to a multiple of this (where the layer has that many)

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
                   ema=bool(d["ema"]), epochs=int(d["epochs"]), round_to=int(d.get("round_to", 1)))


def _suggest_float(trial: optuna.Trial, name: str, low: float, high: float, log: bool, step: float | None) -> float:
    if low == high:
        return low
    return trial.suggest_float(name, low, high, log=log, step=None if log else step)


def _suggest_int(trial: optuna.Trial, name: str, low: int, high: int) -> int:
    return low if low == high else trial.suggest_int(name, low, high)


def _suggest_choice(trial: optuna.Trial, name: str, choices: Sequence[Any]) -> Any:
    return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, list(choices))


STAGES = ("backbone", "neck", "head")


def _clip(v: float, low: float, high: float) -> float:
    return min(high, max(low, v))


def sample_ratios(trial: optuna.Trial, space: Space, layers: Sequence[Layer]) -> tuple[tuple[str, float], ...]:
    """Per-layer ratios under the space's shape.

    - ``layer``: one parameter per layer (``ratio/NAME``): the most expressive, hard for few trials.
    - ``stage``: one per stage (``ratio/backbone``, ``ratio/neck``, ``ratio/head``): 3 parameters.
    - ``global``: ``ratio/global`` times a per-layer multiplier (``mult/NAME``), clipped to the range.
    """
    r = space.ratio
    if space.shape == "stage":
        present = [s for s in STAGES if any(layer.stage == s for layer in layers)]
        per_stage = {s: _suggest_float(trial, f"ratio/{s}", r.low, r.high, r.log, r.step) for s in present}
        return tuple((layer.name, per_stage[layer.stage]) for layer in layers)
    if space.shape == "global":
        g = _suggest_float(trial, "ratio/global", r.low, r.high, r.log, r.step)
        m = space.multiplier
        return tuple((layer.name, _clip(g * _suggest_float(trial, f"mult/{layer.name}", m.low, m.high, m.log, m.step),
                                        r.low, r.high)) for layer in layers)
    return tuple((layer.name, _suggest_float(trial, f"ratio/{layer.name}", r.low, r.high, r.log, r.step))
                 for layer in layers)


def sample_policy(trial: optuna.Trial, space: Space, layers: Sequence[Layer]) -> Policy:
    """Define-by-run sampling of one policy; parameter names are stable across studies."""
    return Policy(
        ratios=sample_ratios(trial, space, layers),
        criterion=_suggest_choice(trial, "criterion", space.criteria),
        iterations=_suggest_int(trial, "iterations", space.iterations.low, space.iterations.high),
        lr=_suggest_float(trial, "lr", space.lr.low, space.lr.high, space.lr.log, space.lr.step),
        ema=_suggest_choice(trial, "ema", space.ema),
        epochs=_suggest_int(trial, "epochs", space.epochs.low, space.epochs.high),
        round_to=_suggest_choice(trial, "round_to", space.round_to),
    )


def _snap(v: float, rng: FloatRange) -> float:
    if rng.step and not rng.log:
        v = rng.low + round((v - rng.low) / rng.step) * rng.step
    return _clip(round(v, 10), rng.low, rng.high)


def params_for_policy(space: Space, layers: Sequence[Layer], policy: Mapping[str, Any]) -> dict[str, Any]:
    """Fixed Optuna parameters that make :func:`sample_policy` reproduce ``policy`` (a policy dict,
    possibly from another study) as closely as this space allows: ratios projected onto the space's
    shape and range, knobs outside the space replaced by its first choice / the middle of its range."""
    import math
    import statistics

    ratios = {str(k): float(v) for k, v in dict(policy.get("ratios", {})).items()}
    r = space.ratio
    params: dict[str, Any] = {}
    if r.low != r.high:
        per_layer = {layer.name: ratios.get(layer.name, statistics.fmean(ratios.values()) if ratios else r.low)
                     for layer in layers}
        if space.shape == "stage":
            for s in STAGES:
                vals = [per_layer[layer.name] for layer in layers if layer.stage == s]
                if vals:
                    params[f"ratio/{s}"] = _snap(statistics.fmean(vals), r)
        elif space.shape == "global":
            g = _snap(statistics.fmean(per_layer.values()), r)
            params["ratio/global"] = g
            m = space.multiplier
            if m.low != m.high:
                params.update({f"mult/{n}": _snap(v / g if g > 0 else 1.0, m) for n, v in per_layer.items()})
        else:
            params.update({f"ratio/{n}": _snap(v, r) for n, v in per_layer.items()})

    def choice(key: str, choices: Sequence[Any]) -> None:
        if len(choices) > 1:
            params[key] = policy.get(key) if policy.get(key) in choices else choices[0]

    def integer(key: str, rng: IntRange) -> None:
        if rng.low != rng.high:
            v = policy.get(key)
            params[key] = min(rng.high, max(rng.low, int(v))) if isinstance(v, (int, float)) else rng.low

    choice("criterion", space.criteria)
    integer("iterations", space.iterations)
    lr = space.lr
    if lr.low != lr.high:
        v = policy.get("lr")
        mid = math.sqrt(lr.low * lr.high) if lr.log else (lr.low + lr.high) / 2
        params["lr"] = _snap(float(v), lr) if isinstance(v, (int, float)) else _snap(mid, lr)
    choice("ema", space.ema)
    integer("epochs", space.epochs)
    choice("round_to", space.round_to)
    return params


def uniform_params(space: Space, layers: Sequence[Layer], ratio: float) -> dict[str, Any]:
    """Fixed parameters of the uniform-ratio policy at ``ratio`` (every layer the same), other knobs at
    their first choice / the middle of their range."""
    return params_for_policy(space, layers, {"ratios": {layer.name: ratio for layer in layers}})


def ratio_summary(ratios: Mapping[str, float]) -> str:
    if not ratios:
        return "-"
    vals = list(ratios.values())
    return f"mean {sum(vals) / len(vals):.2f} [{min(vals):.2f}..{max(vals):.2f}]"
