"""The engine: prune, fine-tune, screen and measure one model. Imports no Optuna and no Ray."""

from autoprune.engine.measure import Measurement, measure_model
from autoprune.engine.trial import TrialResult, run_trial, run_trial_safely

__all__ = ["Measurement", "measure_model", "TrialResult", "run_trial", "run_trial_safely"]
