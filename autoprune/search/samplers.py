"""Build the Optuna sampler a spec names (the registry itself is data: :mod:`autoprune.model.samplers`)."""

from __future__ import annotations

import warnings

import optuna

from autoprune.model import samplers

__all__ = ["make"]


def make(name: str, seed: int, startup: int) -> optuna.samplers.BaseSampler:
    """The sampler registered as ``name``; ``"$seed"``/``"$startup"`` arguments take ``seed``/``startup``."""
    choice = samplers.get(name)
    fill = {"$seed": seed, "$startup": startup}
    kwargs = {k: fill.get(v, v) if isinstance(v, str) else v for k, v in choice.args}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return getattr(optuna.samplers, choice.optuna_class)(**kwargs)
