"""Views of a study: the front as text, the plotly report (pure data functions and thin renderers), and
optuna-dashboard serving."""

from autoprune.views.report import build_figures, write_report
from autoprune.views.report_data import (
                                         BnHistogram,
                                         HypervolumePoint,
                                         KnobRow,
                                         ParetoData,
                                         ParetoPoint,
                                         RatioProfile,
                                         bn_scale_histograms,
                                         hypervolume_history,
                                         knob_rows,
                                         pareto_data,
                                         ratio_profiles,
)

__all__ = ["BnHistogram", "bn_scale_histograms", "HypervolumePoint", "KnobRow", "ParetoData", "ParetoPoint",
           "RatioProfile", "hypervolume_history", "knob_rows", "pareto_data", "ratio_profiles", "build_figures",
           "write_report"]
