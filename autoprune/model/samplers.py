"""The registry of Optuna samplers a spec can choose, as data (``sampler: {name: tpe, seed: 0}``).

Each entry names an ``optuna.samplers`` class and its constructor arguments; ``"$seed"`` and
``"$startup"`` stand for the study's seed and its number of start-up trials. The search layer
builds the sampler (``autoprune.search.storage.study.make_sampler``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from autoprune.registry import Registry

__all__ = ["SEED_MAX", "SamplerChoice", "REGISTRY", "get", "names", "stream_seed"]

# the largest seed a spec or policy may give: numpy's and Python's generators take seeds below 2**32, and
# ultralytics seeds them all, some with a step added
SEED_MAX = 2**31 - 1


@dataclass(frozen=True)
class SamplerChoice:
    name: str
    doc: str
    optuna_class: str
    args: tuple[tuple[str, object], ...]


REGISTRY: Registry[SamplerChoice] = Registry("sampler")
get, names = REGISTRY.get, REGISTRY.names

REGISTRY.register(SamplerChoice("tpe", "multivariate TPE (default): good with few trials and many parameters",
                                "TPESampler", (("seed", "$seed"), ("n_startup_trials", "$startup"),
                                               ("multivariate", True), ("group", True))))
REGISTRY.register(SamplerChoice("nsga2", "NSGA-II: a genetic algorithm; needs several generations of "
                                "population_size trials", "NSGAIISampler",
                                (("seed", "$seed"), ("population_size", "$startup"))))
REGISTRY.register(SamplerChoice("gp", "Gaussian-process Bayesian optimisation; slow with many parameters "
                                "(use shape: stage or global)", "GPSampler",
                                (("seed", "$seed"), ("n_startup_trials", "$startup"))))
REGISTRY.register(SamplerChoice("random", "independent uniform sampling: the baseline for search efficiency",
                                "RandomSampler", (("seed", "$seed"),)))


def stream_seed(seed: int, *keys: int) -> int:
    """A 32-bit sampler seed for ``seed``'s stream at position ``keys`` (trials already there, driver rank...).

    Hashed, not added: with ``seed + n`` a study of seed s+1 replays seed s shifted by one trial, so two "independent"
    seeds share most of their draws. Distinct (seed, keys) give unrelated seeds.
    """
    text = ":".join(str(int(k)) for k in (seed, *keys))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")
