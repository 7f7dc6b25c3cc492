"""The hand recipe's model at a target: its uniform ratio for a latency target (bisection on timed copies) and the
cost of a pruned copy by what a target bounds."""

from __future__ import annotations

import pytest

from autoprune.config.spec import TrialSettings


def test_the_recipes_latency_ratio_is_the_smallest_that_times_under_the_bound(monkeypatch, yolov8n):
    """Fakes the timing only (a copy's latency ratio = the share of channels it keeps, squared, as MACs go): the
    bisection lands on the smallest grid ratio whose copy meets the bound, never below ``low``, and spends a
    handful of timings, not one per grid step."""
    from autoprune.engine import uniform

    timed: list[float] = []

    def fake(candidate, reference, settings):
        kept = sum(p.numel() for p in candidate.parameters()) / sum(p.numel() for p in reference.parameters())
        timed.append(kept)
        return kept

    monkeypatch.setattr(uniform, "_timed_ratio", fake)
    s = TrialSettings(model="yolov8n.yaml", data="d.yaml", imgsz=64)
    r = uniform.uniform_ratio_for_latency(yolov8n, s, 0.5)
    assert 0.2 < r < 0.5 and len(timed) <= 7
    original = uniform.unit_channels(yolov8n)
    from autoprune.model.sampling import target_keep

    def share(ratio):
        return uniform.pruned_share(yolov8n, s, target_keep(original, dict.fromkeys(original, ratio), 1, 1, 8),
                                    "latency_ratio")
    assert share(r) <= 0.5 < share(round(r - 0.02, 2))
    assert uniform.uniform_ratio_for_latency(yolov8n, s, 0.5, low=0.6) == pytest.approx(0.6)  # already under it


def test_a_pruned_copy_keeps_what_is_counted(yolov8n):
    from autoprune.adapters import yolo
    from autoprune.engine import uniform
    from autoprune.model.sampling import target_keep

    s = TrialSettings(model="yolov8n.yaml", data="d.yaml", imgsz=64)
    original = uniform.unit_channels(yolov8n)
    keep = target_keep(original, dict.fromkeys(original, 0.3), 1, 1, 8)
    params = uniform.pruned_share(yolov8n, s, keep, "params")
    macs = uniform.pruned_share(yolov8n, s, keep, "macs")
    assert params == pytest.approx(uniform.pruned_params(yolov8n, s, keep) / yolo.count_params(yolov8n))
    assert 0.3 < macs < 0.7 and 0.3 < params < 0.7 and macs != params
