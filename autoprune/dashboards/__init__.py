"""Views of a study: plotly report data and renderers, and optuna-dashboard serving."""

from autoprune.dashboards.data import (HypervolumePoint, KnobRow, ParetoData, ParetoPoint, RatioProfile,
                                       hypervolume_history, knob_rows, pareto_data, ratio_profiles)
from autoprune.dashboards.report import build_figures, write_report
from autoprune.dashboards.server import serve_dashboard

__all__ = ["HypervolumePoint", "KnobRow", "ParetoData", "ParetoPoint", "RatioProfile", "hypervolume_history",
           "knob_rows", "pareto_data", "ratio_profiles", "build_figures", "write_report", "serve_dashboard"]
