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


def test_the_smallest_index_meeting_a_monotone_test_is_found_from_any_guess_in_few_calls():
    from autoprune.engine.uniform import smallest_meeting

    for answer in range(1, 41):
        for guess in (None, 1, answer - 1, answer, answer + 1, 20, 39):
            calls: list[int] = []

            def meets(i, answer=answer, calls=calls):
                calls.append(i)
                return i >= answer

            assert smallest_meeting(meets, 0, 40, guess) == answer
            if guess == answer < 40:  # (a guess at the top is no guess: meets(hi) is taken to hold)
                assert len(calls) <= 2  # a right guess: two pruned copies (it and the one below), not six
            elif guess is not None and abs(guess - answer) == 1 and 0 < guess < 40:
                assert len(calls) <= 4
            assert len(calls) <= 12


def test_the_recipes_params_ratio_is_the_smallest_grid_ratio_that_meets_the_target(yolov8n):
    """The guessed, galloping search lands where a scan of the grid does, pruning a handful of copies."""
    from autoprune.adapters import yolo
    from autoprune.engine import uniform
    from autoprune.model.budget import Target

    s = TrialSettings(model="yolov8n.yaml", data="d.yaml", imgsz=64)
    base = yolo.count_params(yolov8n)
    for frac in (0.5, 0.3):
        r, cost = uniform.uniform_ratio_for(yolov8n, s, Target((("params", frac),)))
        assert cost["params"] <= frac * base
        below = uniform._pruned_cost(yolov8n, s, round(r - 0.01, 2), uniform.RECIPE_ROUND_TO)
        assert below["params"] > frac * base
