"""The domain, pure and torch-free: search space, policies and their codecs, search-space shapes,
criteria, objectives, Pareto maths and the typed records a study stores."""

from autoprune.model.policy import Policy, ratio_summary
from autoprune.model.space import STAGES, FloatRange, IntRange, Layer, Space

__all__ = ["Policy", "ratio_summary", "STAGES", "FloatRange", "IntRange", "Layer", "Space"]
