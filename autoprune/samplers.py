"""The registry of Optuna samplers a spec can choose (``sampler: {name: tpe, seed: 0}``)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import optuna

from autoprune.errors import SpecError

__all__ = ["SamplerFactory", "register", "get", "names", "make"]


@dataclass(frozen=True)
class SamplerFactory:
    name: str
    build: Callable[[int, int], optuna.samplers.BaseSampler]  # (seed, startup trials) -> sampler
    doc: str


_REGISTRY: dict[str, SamplerFactory] = {}


def register(factory: SamplerFactory) -> SamplerFactory:
    if factory.name in _REGISTRY:
        raise ValueError(f"sampler {factory.name!r} is registered already")
    _REGISTRY[factory.name] = factory
    return factory


def get(name: str) -> SamplerFactory:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SpecError(f"sampler.name: unknown sampler {name!r} (choose from {', '.join(names())})") from None


def names() -> list[str]:
    return list(_REGISTRY)


def make(name: str, seed: int, startup: int) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return get(name).build(seed, startup)


register(SamplerFactory("tpe", lambda seed, startup: optuna.samplers.TPESampler(
    seed=seed, n_startup_trials=startup, multivariate=True, group=True),
    "multivariate TPE (default): good with few trials and many parameters"))
register(SamplerFactory("nsga2", lambda seed, startup: optuna.samplers.NSGAIISampler(
    seed=seed, population_size=max(4, startup)),
    "NSGA-II: a genetic algorithm; needs several generations of population_size trials"))
register(SamplerFactory("gp", lambda seed, startup: optuna.samplers.GPSampler(
    seed=seed, n_startup_trials=startup),
    "Gaussian-process Bayesian optimisation; slow with many parameters (use shape: stage or global)"))
register(SamplerFactory("random", lambda seed, startup: optuna.samplers.RandomSampler(seed=seed),
                        "independent uniform sampling: the baseline for search efficiency"))
