"""autoprune: an AutoML search for structured-pruning policies of YOLO detectors."""

__version__ = "0.1.0"
