"""Thin plotly renderers over :mod:`autoprune.views.report_data`, and the self-contained HTML report."""

from __future__ import annotations

import html
import logging
import math
from pathlib import Path
from typing import Any

import optuna

from autoprune.errors import InputError
from autoprune.model import knobs
from autoprune.model.pareto import REFERENCE_MARGIN
from autoprune.views.report_data import (
    bn_scale_histograms,
    hypervolume_history,
    knob_rows,
    pareto_data,
    ratio_profiles,
)

logger = logging.getLogger(__name__)

__all__ = ["build_figures", "write_report"]

_FRONT, _OTHER, _BASE = "#d62728", "#9aa5b1", "#1f77b4"


def _pareto_2d(data: Any) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    pairs = data.pairs()
    fig = make_subplots(rows=1, cols=len(pairs), horizontal_spacing=0.08)
    for k, (i, j) in enumerate(pairs, start=1):
        for on_front, colour, name in ((False, _OTHER, "dominated"), (True, _FRONT, "Pareto front")):
            pts = [p for p in data.points if p.on_front == on_front]
            fig.add_trace(go.Scatter(x=[p.values[i] for p in pts], y=[p.values[j] for p in pts], mode="markers",
                                     marker=dict(color=colour, size=9), name=name, legendgroup=name,
                                     showlegend=k == 1, text=[p.hover for p in pts], hoverinfo="text"), 1, k)
        marked = [p for p in data.points if p.targets]
        if marked:
            fig.add_trace(go.Scatter(x=[p.values[i] for p in marked], y=[p.values[j] for p in marked],
                                     mode="markers+text", text=[",".join(p.targets) for p in marked],
                                     textposition="top center", marker=dict(color=_FRONT, size=16, symbol="circle-open",
                                                                            line=dict(width=2)),
                                     name="finalized for a target", legendgroup="target", showlegend=k == 1,
                                     hovertext=[p.hover for p in marked], hoverinfo="text"), 1, k)
        final = [p for p in data.points if p.finalized is not None]
        if final:  # what was delivered: the same model after its final fine-tune (its val mAP50-95)
            fig.add_trace(go.Scatter(x=[p.finalized[i] for p in final], y=[p.finalized[j] for p in final],
                                     mode="markers", marker=dict(color=_FRONT, size=13, symbol="diamond"),
                                     name="delivered (after its final fine-tune)", legendgroup="delivered",
                                     showlegend=k == 1, hovertext=[p.hover for p in final], hoverinfo="text"), 1, k)
        doubtful = [p for p in data.points if p.on_front and p.latency_check]
        if doubtful:
            fig.add_trace(go.Scatter(x=[p.values[i] for p in doubtful], y=[p.values[j] for p in doubtful],
                                     mode="markers", marker=dict(color="black", size=14, symbol="x-thin-open",
                                                                 line=dict(width=2)),
                                     name="latency check (remeasure)", legendgroup="check", showlegend=k == 1,
                                     hovertext=[p.hover for p in doubtful], hoverinfo="text"), 1, k)
        if data.baseline:
            fig.add_trace(go.Scatter(x=[data.baseline[i]], y=[data.baseline[j]], mode="markers",
                                     marker=dict(color=_BASE, size=14, symbol="star"), name="baseline",
                                     legendgroup="baseline", showlegend=k == 1, hovertext="baseline (unpruned)"), 1, k)
        refs = [(name, v) for name, v in data.references if v[i] is not None and v[j] is not None]
        if refs:
            fig.add_trace(go.Scatter(x=[v[i] for _, v in refs], y=[v[j] for _, v in refs], mode="markers+text",
                                     text=[name.removeprefix("base ") for name, _ in refs],
                                     textposition="bottom center",
                                     marker=dict(color=_BASE, size=11, symbol="diamond-open", line=dict(width=2)),
                                     name="base as deployed (reference)", legendgroup="reference", showlegend=k == 1,
                                     hovertext=[name for name, _ in refs], hoverinfo="text"), 1, k)
        fig.update_xaxes(title_text=data.labels[i], row=1, col=k)
        fig.update_yaxes(title_text=data.labels[j], row=1, col=k)
    fig.update_layout(title="Pareto front: pairwise projections", height=420)
    return fig


def _pareto_3d(data: Any) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    for on_front, colour, name in ((False, _OTHER, "dominated"), (True, _FRONT, "Pareto front")):
        pts = [p for p in data.points if p.on_front == on_front]
        fig.add_trace(go.Scatter3d(x=[p.values[0] for p in pts], y=[p.values[1] for p in pts],
                                   z=[p.values[2] for p in pts], mode="markers", name=name,
                                   marker=dict(color=colour, size=5), text=[p.hover for p in pts], hoverinfo="text"))
    if data.baseline:
        fig.add_trace(go.Scatter3d(x=[data.baseline[0]], y=[data.baseline[1]], z=[data.baseline[2]], mode="markers",
                                   name="baseline", marker=dict(color=_BASE, size=9, symbol="diamond")))
    fig.update_layout(title="Pareto front (3-D)", height=560,
                      scene=dict(xaxis_title=data.labels[0], yaxis_title=data.labels[1], zaxis_title=data.labels[2]))
    return fig


def _profiles(profiles: Any) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    for p in profiles:
        fig.add_trace(go.Scatter(x=list(range(len(p.layers))), y=list(p.ratios), mode="lines+markers",
                                 name=f"trial {p.number}", text=list(p.layers),
                                 hovertemplate="%{text}: %{y:.2f}<extra>trial " + str(p.number) + "</extra>"))
    layers = profiles[0].layers if profiles else ()
    fig.update_layout(title="Per-layer prune ratios of the front, along the network depth", height=420,
                      xaxis=dict(title="layer (network order)", tickmode="array", tickvals=list(range(len(layers))),
                                 ticktext=list(layers), tickangle=-60, tickfont=dict(size=8)),
                      yaxis=dict(title="fraction of channels removed", range=[0, 1]))
    return fig


def _knob_dimension(knob: knobs.Knob, rows: Any) -> dict[str, Any] | None:
    """One parallel-coordinates axis for a knob that varies over the rows (None: constant or unrecorded)."""
    vals = [r.knob(knob.name) for r in rows]
    if any(v is None for v in vals) or len(set(vals)) < 2:
        return None
    if isinstance(knob.domain, (knobs.Flags, knobs.Names)):
        levels = sorted(set(vals), key=str)
        return dict(label=knob.name, values=[levels.index(v) for v in vals], tickvals=list(range(len(levels))),
                    ticktext=[str(v) for v in levels])
    if knob.log_axis:
        return dict(label=f"log10 {knob.name}", values=[math.log10(v) if v > 0 else 0 for v in vals])
    return dict(label=knob.name, values=vals)


def _parallel(rows: Any, labels: Any) -> Any:
    import plotly.graph_objects as go

    dims = [d for d in (_knob_dimension(k, rows) for k in knobs.knobs()) if d is not None]
    dims += [dict(label="mean ratio", values=[r.mean_ratio for r in rows])]
    dims += [dict(label=lab, values=[r.values[i] for r in rows]) for i, lab in enumerate(labels)]
    fig = go.Figure(go.Parcoords(line=dict(color=[r.values[0] for r in rows], colorscale="Viridis", showscale=True),
                                 dimensions=dims))
    fig.update_layout(title="Searched knobs and objectives (parallel coordinates; colour = first objective)",
                      height=460)
    return fig


def _knob_effects(rows: Any, labels: Any) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=len(labels), cols=3, shared_yaxes=False, vertical_spacing=0.12,
                        subplot_titles=[t for lab in labels for t in (f"{lab} by criterion", f"{lab} by EMA",
                                                                       f"{lab} vs learning rate")])
    for i, lab in enumerate(labels, start=1):
        fig.add_trace(go.Box(x=[str(r.knob("criterion")) for r in rows], y=[r.values[i - 1] for r in rows],
                             boxpoints="all", name=lab, showlegend=False), i, 1)
        fig.add_trace(go.Box(x=["on" if r.knob("ema") else "off" for r in rows], y=[r.values[i - 1] for r in rows],
                             boxpoints="all", showlegend=False), i, 2)
        fig.add_trace(go.Scatter(x=[r.knob("lr") for r in rows], y=[r.values[i - 1] for r in rows], mode="markers",
                                 marker=dict(color=[_FRONT if r.on_front else _OTHER for r in rows]),
                                 text=[f"trial {r.number}" for r in rows], showlegend=False), i, 3)
        fig.update_xaxes(type="log", row=i, col=3)
        fig.update_yaxes(title_text=lab, row=i, col=1)
    fig.update_layout(title="How criterion, EMA and learning rate relate to the objectives", height=300 * len(labels))
    return fig


def _hypervolume(history: Any) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(x=[h.number for h in history], y=[h.hypervolume for h in history],
                               mode="lines+markers", name="hypervolume"))
    fig.update_layout(title=f"Hypervolume over trials (objectives normalised by the baseline; reference: mAP 0, "
                            f"others {REFERENCE_MARGIN}x baseline)", height=380,
                      xaxis_title="trial", yaxis_title="hypervolume")
    return fig


def _bn_scales(hists: Any) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(hists), subplot_titles=[
        f"L1 {h.l1:g}, {h.epochs} epochs: below 0.01 {100 * h.below_before:.0f}% before, "
        f"{100 * h.below_after:.0f}% after "
        f"(trials {', '.join(map(str, h.trials[:8]))}{'…' if len(h.trials) > 8 else ''})" for h in hists])
    for k, h in enumerate(hists, start=1):
        labels = [f"[{lo}, {hi})" for lo, hi in zip(h.bins, h.bins[1:])]
        for name, counts, colour in (("before", h.before, "#9aa5b1"), ("after", h.after, "#d9534f")):
            fig.add_trace(go.Bar(x=labels, y=list(counts), name=f"{name} sparse training", marker_color=colour,
                                 showlegend=k == 1), row=1, col=k)
    fig.update_layout(title="|BN scale| of the base before and after sparse training (network slimming: the "
                            "bn_scale criterion prunes the channels near 0)", height=420, barmode="group")
    fig.update_yaxes(title_text="BN channels", row=1, col=1)
    return fig


def build_figures(study: optuna.Study) -> list[tuple[str, Any]]:
    """(section title, plotly figure) for every section of the report."""
    data = pareto_data(study)
    rows = knob_rows(study)
    figs: list[tuple[str, Any]] = [("Pareto front", _pareto_2d(data))]
    if len(data.names) >= 3:
        figs.append(("Pareto front in 3-D", _pareto_3d(data)))
    figs.append(("Per-layer ratio profiles", _profiles(ratio_profiles(study))))
    figs.append(("Searched knobs", _parallel(rows, data.labels)))
    figs.append(("Knob effects", _knob_effects(rows, data.labels)))
    figs.append(("Hypervolume", _hypervolume(hypervolume_history(study))))
    hists = bn_scale_histograms(study)
    if hists:  # only when some trial pruned a sparse-trained base
        figs.append(("Sparse training: BN-scale distribution", _bn_scales(hists)))
    return figs


def write_report(study: optuna.Study, out: str | Path) -> Path:
    """One self-contained HTML page (plotly.js inlined: works offline)."""
    out = Path(out)
    if out.is_dir():
        raise InputError(f"--out: {out} is a folder (name the HTML file to write)")
    if any(p.exists() and not p.is_dir() for p in out.parents):
        raise InputError(f"--out: {out} lies under a file")
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = []
    for k, (title, fig) in enumerate(build_figures(study)):
        parts.append(f"<section><h2>{html.escape(title)}</h2>"
                     + fig.to_html(full_html=False, include_plotlyjs=(k == 0), config={"displaylogo": False})
                     + "</section>")
    n = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    name = html.escape(study.study_name)
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>autoprune: {name}</title>"
            "<style>body{font-family:sans-serif;margin:24px;max-width:1400px}h2{margin-top:32px}</style></head>"
            f"<body><h1>autoprune study {name}</h1><p>{n} completed trials, "
            f"{len(study.best_trials)} on the Pareto front.</p>{''.join(parts)}</body></html>")
    out.write_text(page, encoding="utf-8")
    logger.info("report written to %s", out)
    return out
