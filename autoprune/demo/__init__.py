"""The offline demo: a synthetic detection data set and a small trained baseline."""

from autoprune.demo.synthetic import SyntheticConfig, ensure_dataset

__all__ = ["SyntheticConfig", "ensure_dataset"]
