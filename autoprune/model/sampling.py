"""Sampling a policy from a space: how per-layer ratios are parameterised (the space's shape: block, layer, stage,
global), sampled and projected; the keep schedule; the recipe's knobs.

A shape samples per-layer ratios through any object with Optuna's ``suggest_*`` methods
(an ``optuna.Trial``; nothing here imports Optuna) and projects a policy from elsewhere
back onto its parameters, so warm starts and promotions reproduce a policy exactly.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from autoprune.model import knobs
from autoprune.model.policy import Policy
from autoprune.model.space import STAGES, FloatRange, IntRange, Layer, Space, blocks
from autoprune.registry import Registry

__all__ = ["Suggester", "Shape", "REGISTRY", "get", "names", "sample_policy", "params_for_policy", "uniform_params",
           "uniform_levels", "target_keep", "screen_visible", "screen_space", "recipe_params", "finetune_knobs"]


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
    g = _float(trial, "ratio/global", r)  # a fixed one may lie above the range (the hand recipe's): kept as it is
    return tuple((layer.name, _clip(g * _float(trial, f"mult/{layer.name}", space.multiplier), r.low, max(r.high, g)))
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


def _sample_knob(trial: Suggester, knob: knobs.Knob, domain: knobs.SpaceDomain) -> Any:
    if domain is None:
        return knob.value
    if isinstance(domain, FloatRange):
        return _float(trial, knob.name, domain)
    if isinstance(domain, IntRange):
        return _int(trial, knob.name, domain)
    return knob.coerce(_choice(trial, knob.name, domain))


def sample_policy(trial: Suggester, space: Space, layers: Sequence[Layer]) -> Policy:
    """Define-by-run sampling of one policy; parameter names are stable across studies (the knobs' names,
    suggested in the table's order)."""
    ratios = get(space.shape).sample(trial, space, layers)
    return Policy(ratios, **{k.name: _sample_knob(trial, k, space.domain(k.name)) for k in knobs.knobs()})


def _project_knob(domain: knobs.SpaceDomain, v: Any) -> Any:
    """The parameter value that makes sampling in ``domain`` give ``v`` (or the closest/first/middle one)."""
    if isinstance(domain, tuple):
        return v if v in domain else domain[0]
    if isinstance(domain, IntRange):
        return min(domain.high, max(domain.low, int(v))) if isinstance(v, (int, float)) else domain.low
    assert isinstance(domain, FloatRange)
    return _snap(float(v), domain) if isinstance(v, (int, float)) else _snap(knobs.span(domain), domain)


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
    for knob in knobs.knobs():
        domain = space.domain(knob.name)
        if knobs.searched(domain):
            params[knob.name] = _project_knob(domain, policy.get(knob.name))
    return params


def uniform_params(space: Space, layers: Sequence[Layer], ratio: float, exact: bool = False) -> dict[str, Any]:
    """Fixed parameters of the uniform-ratio policy at ``ratio`` (every layer the same), other knobs at
    their first choice / the middle of their range. With ``exact`` the ratio is neither snapped to the space's step
    nor clipped to its range (the hand recipe's ratio, which the space's own sampling may not draw; Optuna takes a
    fixed parameter off its grid as it is)."""
    if exact:
        space = space.replace(ratio=FloatRange(0.0, 1.0))
    return params_for_policy(space, layers, {"ratios": {layer.name: ratio for layer in layers}})


def screen_visible(params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters a screen can judge (the structure and channel choice: the ratios and the knobs the table
    marks screen-visible); fine-tune knobs are decided by the main study."""
    visible = ("ratio/", "mult/", *(k.name for k in knobs.knobs() if k.screen))
    return {k: v for k, v in params.items() if k.startswith(visible)}


def screen_space(space: Space) -> Space:
    """``space`` with the knobs a screen cannot judge fixed, so a screening sampler spends no dimension on them."""
    return space.replace(**{k.name: k.screen_fix(space.domain(k.name)) for k in knobs.knobs() if k.screen_fix})


def finetune_knobs() -> tuple[str, ...]:
    """The knobs only a fine-tuned trial can judge (those a screen cannot see)."""
    return tuple(k.name for k in knobs.knobs() if not k.screen)


def recipe_params(space: Space, keys: Sequence[str] | None = None) -> dict[str, Any]:
    """The hand-tuned recipe's knobs (each knob's ``recipe`` in the table: torch-pruning's YOLOv8 example),
    projected onto ``space``; only the searched ``keys`` (default: the fine-tune knobs)."""
    params: dict[str, Any] = {}
    for key in finetune_knobs() if keys is None else keys:
        knob = knobs.get(key)
        domain = space.domain(key)
        if knob.recipe is not None and knobs.searched(domain):
            params[key] = knob.recipe(domain)
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
