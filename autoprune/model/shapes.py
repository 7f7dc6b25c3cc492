"""Search-space shapes: how per-layer ratios are parameterised, sampled and projected; the keep schedule.

A shape samples per-layer ratios through any object with Optuna's ``suggest_*`` methods
(an ``optuna.Trial``; nothing here imports Optuna) and projects a policy from elsewhere
back onto its parameters, so warm starts and promotions reproduce a policy exactly.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from autoprune.model.policy import Policy
from autoprune.model.space import STAGES, FloatRange, IntRange, Layer, Space, blocks
from autoprune.registry import Registry

__all__ = ["Suggester", "Shape", "REGISTRY", "get", "names", "sample_policy", "params_for_policy", "uniform_params",
           "uniform_levels", "target_keep", "screen_visible", "screen_space", "recipe_params", "RECIPE"]


class Suggester(Protocol):
    """The part of ``optuna.Trial`` that sampling uses."""

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float: ...

    def suggest_int(self, name: str, low: int, high: int) -> int: ...

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


Ratios = tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class Shape:
    name: str
    doc: str
    sample: Callable[[Suggester, Space, Sequence[Layer]], Ratios]
    project: Callable[[Space, Sequence[Layer], dict[str, float]], dict[str, float]]  # per-layer ratios -> params


def _float(trial: Suggester, name: str, rng: FloatRange) -> float:
    if rng.low == rng.high:
        return rng.low
    return trial.suggest_float(name, rng.low, rng.high, log=rng.log, step=None if rng.log else rng.step)


def _clip(v: float, low: float, high: float) -> float:
    return min(high, max(low, v))


def _snap(v: float, rng: FloatRange) -> float:
    if rng.step and not rng.log:
        v = rng.low + math.floor((v - rng.low) / rng.step + 0.5 + 1e-9) * rng.step
    return _clip(round(v, 10), rng.low, rng.high)


def _layer_sample(trial: Suggester, space: Space, layers: Sequence[Layer]) -> Ratios:
    return tuple((layer.name, _float(trial, f"ratio/{layer.name}", space.ratio)) for layer in layers)


def _layer_project(space: Space, layers: Sequence[Layer], per_layer: dict[str, float]) -> dict[str, float]:
    return {f"ratio/{n}": _snap(v, space.ratio) for n, v in per_layer.items()}


def _stage_sample(trial: Suggester, space: Space, layers: Sequence[Layer]) -> Ratios:
    present = [s for s in STAGES if any(layer.stage == s for layer in layers)]
    per_stage = {s: _float(trial, f"ratio/{s}", space.ratio) for s in present}
    return tuple((layer.name, per_stage[layer.stage]) for layer in layers)


def _stage_project(space: Space, layers: Sequence[Layer], per_layer: dict[str, float]) -> dict[str, float]:
    params = {}
    for s in STAGES:
        vals = [per_layer[layer.name] for layer in layers if layer.stage == s]
        if vals:
            params[f"ratio/{s}"] = _snap(statistics.fmean(vals), space.ratio)
    return params


def _block_sample(trial: Suggester, space: Space, layers: Sequence[Layer]) -> Ratios:
    per_block = {b: _float(trial, f"ratio/{b}", space.ratio) for b in blocks(list(layers))}
    return tuple((layer.name, per_block[b]) for b, members in blocks(list(layers)).items() for layer in members)


def _block_project(space: Space, layers: Sequence[Layer], per_layer: dict[str, float]) -> dict[str, float]:
    return {f"ratio/{b}": _snap(statistics.fmean(per_layer[layer.name] for layer in members), space.ratio)
            for b, members in blocks(list(layers)).items()}


def _global_sample(trial: Suggester, space: Space, layers: Sequence[Layer]) -> Ratios:
    r = space.ratio
    g = _float(trial, "ratio/global", r)
    return tuple((layer.name, _clip(g * _float(trial, f"mult/{layer.name}", space.multiplier), r.low, r.high))
                 for layer in layers)


def _global_project(space: Space, layers: Sequence[Layer], per_layer: dict[str, float]) -> dict[str, float]:
    g = _snap(statistics.fmean(per_layer.values()), space.ratio)
    params = {"ratio/global": g}
    m = space.multiplier
    if m.low != m.high:
        params.update({f"mult/{n}": _snap(v / g if g > 0 else 1.0, m) for n, v in per_layer.items()})
    return params


REGISTRY: Registry[Shape] = Registry("shape")
get, names = REGISTRY.get, REGISTRY.names
REGISTRY.register(Shape("block", "one ratio per block (ratio/model.4; the head's box and class branches apart): "
                        "the default, the grain of the sensitivity scan and its allocation", _block_sample,
                        _block_project))
REGISTRY.register(Shape("layer", "one ratio per prunable layer (ratio/NAME): the most expressive, needs many trials",
                        _layer_sample, _layer_project))
REGISTRY.register(Shape("stage", "one ratio per stage (ratio/backbone, ratio/neck, ratio/head): 3 parameters",
                        _stage_sample, _stage_project))
REGISTRY.register(Shape("global", "ratio/global times a per-layer multiplier (mult/NAME), clipped to the range",
                        _global_sample, _global_project))


def _choice(trial: Suggester, name: str, choices: Sequence[Any]) -> Any:
    return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, list(choices))


def _int(trial: Suggester, name: str, rng: IntRange) -> int:
    return rng.low if rng.low == rng.high else trial.suggest_int(name, rng.low, rng.high)


def sample_policy(trial: Suggester, space: Space, layers: Sequence[Layer]) -> Policy:
    """Define-by-run sampling of one policy; parameter names are stable across studies."""
    return Policy(
        ratios=get(space.shape).sample(trial, space, layers),
        criterion=_choice(trial, "criterion", space.criteria),
        iterations=_int(trial, "iterations", space.iterations),
        lr=_float(trial, "lr", space.lr),
        ema=_choice(trial, "ema", space.ema),
        epochs=_int(trial, "epochs", space.epochs),
        round_to=_choice(trial, "round_to", space.round_to),
        schedule=_choice(trial, "schedule", space.schedule),
        distill=_choice(trial, "distill", space.distill),
        lrf=_float(trial, "lrf", space.lrf) if space.lrf else None,
        warmup=_float(trial, "warmup", space.warmup) if space.warmup else None,
        lr_step=_float(trial, "lr_step", space.lr_step) if space.lr_step else 1.0,
        sparsity=float(_choice(trial, "sparsity", space.sparsity)),
        depth=_float(trial, "depth", space.depth) if space.depth else 0.0,
    )


def params_for_policy(space: Space, layers: Sequence[Layer], policy: Mapping[str, Any]) -> dict[str, Any]:
    """Fixed parameters that make :func:`sample_policy` reproduce ``policy`` (a policy dict, possibly
    from another study) as closely as this space allows: ratios projected onto the space's shape and
    range, knobs outside the space replaced by its first choice / the middle of its range."""
    ratios = {str(k): float(v) for k, v in dict(policy.get("ratios", {})).items()}
    r = space.ratio
    params: dict[str, Any] = {}
    if r.low != r.high:
        fallback = statistics.fmean(ratios.values()) if ratios else r.low
        per_layer = {layer.name: ratios.get(layer.name, fallback) for layer in layers}
        params.update(get(space.shape).project(space, layers, per_layer))

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
    choice("schedule", space.schedule)
    choice("distill", space.distill)
    choice("sparsity", space.sparsity)
    for key in ("lrf", "warmup", "lr_step", "depth"):
        rng = getattr(space, key)
        if rng is not None and rng.low != rng.high:
            v = policy.get(key)
            params[key] = _snap(float(v), rng) if isinstance(v, (int, float)) else _snap((rng.low + rng.high) / 2, rng)
    return params


def uniform_params(space: Space, layers: Sequence[Layer], ratio: float) -> dict[str, Any]:
    """Fixed parameters of the uniform-ratio policy at ``ratio`` (every layer the same), other knobs at
    their first choice / the middle of their range."""
    return params_for_policy(space, layers, {"ratios": {layer.name: ratio for layer in layers}})


# what an adaptive-BN screen can judge: the model's structure and channel choice
SCREEN_VISIBLE = ("ratio/", "mult/", "criterion", "round_to", "sparsity", "depth")


def screen_visible(params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters a screen can judge (channel choice); fine-tune knobs are decided by the main study."""
    return {k: v for k, v in params.items() if k.startswith(SCREEN_VISIBLE)}


def screen_space(space: Space) -> Space:
    """``space`` with the fine-tune knobs fixed, so a screening sampler spends no dimension on them."""
    return dataclasses.replace(space, iterations=IntRange(1, 1), lr=FloatRange(space.lr.high, space.lr.high),
                               ema=space.ema[:1], epochs=IntRange(space.epochs.low, space.epochs.low),
                               schedule=space.schedule[:1], distill=space.distill[:1], lrf=None, warmup=None,
                               lr_step=None)


RECIPE: dict[str, Any] = {"criterion": "l2", "lr": 0.01, "ema": True, "schedule": "cosine", "round_to": 8,
                          "distill": False}


FINETUNE_KNOBS = ("lr", "ema", "iterations", "epochs", "schedule", "distill", "lrf", "warmup", "lr_step")


def recipe_params(space: Space, keys: Sequence[str] = FINETUNE_KNOBS) -> dict[str, Any]:
    """The hand-tuned recipe's knobs (torch-pruning's YOLOv8 example: group L2, one prune step, SGD at lr 0.01
    with EMA, cosine decay, the longest fine-tune allowed), projected onto ``space``; only searched ``keys``."""
    params: dict[str, Any] = {}
    for key in keys:
        if key == "lr" and space.lr.low != space.lr.high:
            params["lr"] = _clip(RECIPE["lr"], space.lr.low, space.lr.high)
        elif key == "iterations" and space.iterations.low != space.iterations.high:
            params["iterations"] = space.iterations.low
        elif key == "epochs" and space.epochs.low != space.epochs.high:
            params["epochs"] = space.epochs.high
        else:
            choices = {"ema": space.ema, "schedule": space.schedule, "criterion": space.criteria,
                       "distill": space.distill, "round_to": space.round_to}.get(key, ())
            if len(choices) > 1:
                params[key] = RECIPE[key] if RECIPE[key] in choices else choices[0]
    return params


def uniform_levels(low: float, high: float, n: int) -> list[float]:
    """``n`` ratios at the centres of ``n`` equal bins of [low, high]."""
    return [low + (high - low) * (i + 0.5) / n for i in range(n)]


def target_keep(original: Mapping[str, int], ratios: Mapping[str, float], step: int, steps: int,
                round_to: int = 1) -> dict[str, int]:
    """Channels to keep per unit after prune step ``step`` of ``steps`` (linear schedule, at least 1).

    With ``round_to`` > 1 the count is rounded to the nearest multiple of it (at least one
    multiple, never more than the unit has); a unit with fewer channels than ``round_to`` is
    rounded as if ``round_to`` were 1.
    """
    keep = {}
    for name, ratio in ratios.items():
        if name not in original:
            continue
        c = original[name]
        k = max(1, c - int(math.floor(c * ratio * step / steps + 1e-9)))
        if round_to > 1 and c >= round_to:
            k = min(c, max(round_to, int(math.floor(k / round_to + 0.5)) * round_to))
        keep[name] = k
    return keep
