"""Configuration: the search spec as frozen dataclasses, and the one field-driven reader. No torch."""

from autoprune.config.spec import (
                                   FinetuneSettings,
                                   LatencySettings,
                                   Overrides,
                                   Resources,
                                   SamplerSettings,
                                   Screening,
                                   SearchSpec,
                                   TrialSettings,
                                   WarmStart,
                                   load_spec,
                                   parse_spec,
)

__all__ = ["FinetuneSettings", "LatencySettings", "Overrides", "Resources", "SamplerSettings", "Screening",
           "SearchSpec", "TrialSettings", "WarmStart", "load_spec", "parse_spec"]
