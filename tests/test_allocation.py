"""Sensitivity-guided allocation: blocks, the block shape, the knapsack against brute force, cost targets,
the sensitivity section of the spec, and the scan's probes (pure functions; no model is pruned here)."""

from __future__ import annotations

import itertools
import random

import pytest

from autoprune.config.spec import parse_spec
from autoprune.errors import SpecError
from autoprune.model import records, sampling
from autoprune.model.allocation import (
    Option,
    Probe,
    Sensitivity,
    allocate,
    block_options,
    calibrated,
    cost_targets,
    loss_exponent,
    sized,
)
from autoprune.model.space import FloatRange, Layer, Space, block_of, blocks
from autoprune.search.strategy.sensitivity import allocated_candidates, grid, probe_params, scan_levels

LAYERS = [Layer("model.0", 16), Layer("model.2.cv1", 16), Layer("model.2.m.0.cv1", 8),
          Layer("model.12.cv2", 32, "neck"), Layer("model.22.cv2.0.0", 64, "head"),
          Layer("model.22.cv2.1.1", 64, "head"), Layer("model.22.cv3.0.0", 64, "head")]


def test_blocks_group_top_level_modules_and_split_the_head_branches():
    assert [block_of(layer) for layer in LAYERS] == ["model.0", "model.2", "model.2", "model.12", "model.22.cv2",
                                                     "model.22.cv2", "model.22.cv3"]
    assert {b: len(v) for b, v in blocks(LAYERS).items()} == {"model.0": 1, "model.2": 2, "model.12": 1,
                                                              "model.22.cv2": 2, "model.22.cv3": 1}


class _Fixed:
    """Stands in for optuna.Trial: returns fixed values by parameter name (fakes the sampler only)."""

    def __init__(self, values):
        self.values, self.asked = values, []

    def suggest_float(self, name, low, high, *, step=None, log=False):
        self.asked.append(name)
        return self.values.get(name, low)

    def suggest_int(self, name, low, high):
        return low

    def suggest_categorical(self, name, choices):
        return choices[0]


def test_block_shape_samples_one_ratio_per_block_and_projects_back_exactly():
    space = Space(ratio=FloatRange(0.0, 0.7, step=0.05), shape="block")
    values = {"ratio/model.0": 0.1, "ratio/model.2": 0.35, "ratio/model.12": 0.0, "ratio/model.22.cv2": 0.5,
              "ratio/model.22.cv3": 0.7}
    trial = _Fixed(values)
    policy = sampling.sample_policy(trial, space, LAYERS)
    assert [n for n in trial.asked if n.startswith("ratio/")] == list(values)
    assert policy.ratio_map["model.2.m.0.cv1"] == 0.35 and policy.ratio_map["model.22.cv2.1.1"] == 0.5
    params = sampling.params_for_policy(space, LAYERS, policy.to_dict())
    assert {k: v for k, v in params.items() if k.startswith("ratio/")} == values


def _brute(options, target):
    best = None
    for combo in itertools.product(*options.values()):
        saving = sum(o.saving for o in combo)
        if saving + 1e-9 < target:
            continue
        loss = sum(o.loss for o in combo)
        if best is None or loss < best - 1e-12:
            best = loss
    return best


@pytest.mark.parametrize("seed", range(6))
def test_allocation_is_the_least_loss_that_meets_the_target(seed):
    rng = random.Random(seed)
    options = {}
    for b in range(4):
        opts, loss, saving = [Option(0.0, 0.0, 0.0)], 0.0, 0.0
        for k in range(1, 4):
            loss += rng.uniform(0, 0.2)
            saving += rng.uniform(1000, 50_000)
            opts.append(Option(0.1 * k, loss, saving))
        options[f"b{b}"] = opts
    reachable = sum(o[-1].saving for o in options.values())
    target = rng.uniform(0.1, 0.9) * reachable
    a = allocate(options, 0.9, target, bins=2000)
    assert a.saving >= target - 1e-6
    got = 0.9 - a.predicted_map
    assert got == pytest.approx(sum(next(o.loss for o in options[b] if o.ratio == r) for b, r in a.ratios.items()))
    # the DP rounds savings down by at most a bin per block: it can only be as good as brute force or slightly worse
    assert _brute(options, target) - 1e-9 <= got <= _brute(options, target - 4 * target / 2000) + 1e-9


def test_allocation_prunes_the_insensitive_block_first():
    sens = Sensitivity(0.8, 1_000_000, (Probe("fragile", 0.3, 0.5, 900_000), Probe("fragile", 0.6, 0.1, 800_000),
                                        Probe("robust", 0.3, 0.79, 850_000), Probe("robust", 0.6, 0.78, 700_000)))
    opts = block_options(sens, [round(0.05 * i, 2) for i in range(13)])
    a = allocate(opts, sens.reference_map, 250_000)
    assert a.ratios == {"fragile": 0.0, "robust": 0.5}
    assert a.saving == pytest.approx(250_000) and a.predicted_map == pytest.approx(0.8 - 0.01 - 2 / 3 * 0.01)
    assert allocate(opts, 0.8, 10**9).ratios == {"fragile": 0.6, "robust": 0.6}  # beyond reach: everything


def test_a_failed_probe_caps_its_block_and_negative_losses_count_as_none():
    sens = Sensitivity(0.5, 100.0, (Probe("a", 0.3, 0.55, 70.0), Probe("a", 0.6, None, 100.0)))
    opts = block_options(sens, [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6])["a"]
    assert [o.ratio for o in opts] == [0.0, 0.1, 0.2, 0.3]
    assert all(o.loss == 0.0 for o in opts) and opts[-1].saving == pytest.approx(30.0)


def _power_sweep(power: float, scale: float = 2.0, reference: float = 0.9) -> tuple[Probe, ...]:
    """A uniform sweep whose loss is ``scale * ratio ** power``, down to collapse at the top."""
    return tuple(Probe("*", r, max(0.0, reference - scale * r ** power), 1000.0 * (1 - r))
                 for r in (0.15, 0.3, 0.4, 0.55, 0.7))


@pytest.mark.parametrize("power", [1.0, 1.7, 2.5])
def test_the_loss_exponent_is_the_sweeps_log_log_slope_on_its_unsaturated_points(power):
    # 0.55 and 0.7 lose more than half the reference (collapse) and stay out of the fit
    sens = Sensitivity(0.9, 1000.0, (), _power_sweep(power))
    assert loss_exponent(sens) == pytest.approx(power)


def test_the_loss_exponent_falls_back_to_linear_and_stays_in_bounds():
    assert loss_exponent(Sensitivity(0.9, 1000.0, ())) == 1.0  # no sweep
    one = (Probe("*", 0.3, 0.8, 700.0), Probe("*", 0.6, 0.1, 400.0))  # one unsaturated point
    assert loss_exponent(Sensitivity(0.9, 1000.0, (), one)) == 1.0
    noise = (Probe("*", 0.1, 0.899, 900.0), Probe("*", 0.2, 0.895, 800.0), Probe("*", 0.3, 0.6, 700.0))
    assert loss_exponent(Sensitivity(0.9, 1000.0, (), noise)) == 1.0  # losses under FIT_MIN_LOSS are noise
    steep = (Probe("*", 0.2, 0.9 - 0.012, 800.0), Probe("*", 0.4, 0.9 - 0.4, 600.0))
    assert loss_exponent(Sensitivity(0.9, 1000.0, (), steep)) == 3.0
    concave = (Probe("*", 0.2, 0.9 - 0.2, 800.0), Probe("*", 0.4, 0.9 - 0.25, 600.0))
    assert loss_exponent(Sensitivity(0.9, 1000.0, (), concave)) == 1.0


def test_with_one_probe_a_block_loses_along_the_sweeps_power_and_saves_linearly():
    probes = (Probe("a", 0.6, 0.9 - 0.4, 400.0),)
    curved = block_options(Sensitivity(0.9, 1000.0, probes, _power_sweep(2.0)), [0.0, 0.3, 0.6])["a"]
    assert [o.loss for o in curved] == pytest.approx([0.0, 0.1, 0.4])  # (0.3 / 0.6) ** 2 of the probe's loss
    assert [o.saving for o in curved] == pytest.approx([0.0, 300.0, 600.0])
    linear = block_options(Sensitivity(0.9, 1000.0, probes), [0.0, 0.3, 0.6])["a"]
    assert [o.loss for o in linear] == pytest.approx([0.0, 0.2, 0.4])
    # between two probes the curve still passes through both
    two = (Probe("a", 0.3, 0.9 - 0.05, 700.0), Probe("a", 0.6, 0.9 - 0.4, 400.0))
    opts = block_options(Sensitivity(0.9, 1000.0, two, _power_sweep(2.0)), [0.0, 0.15, 0.3, 0.45, 0.6])["a"]
    assert [o.loss for o in opts] == pytest.approx([0.0, 0.0125, 0.05, 0.05 + 0.35 * (0.45**2 - 0.09) / 0.27, 0.4])


def test_a_convex_loss_curve_spreads_a_cut_over_blocks_instead_of_maxing_one():
    # two equal blocks, each probed at 0.6 only; half the reachable saving is wanted
    probes = (Probe("a", 0.6, 0.5, 400.0), Probe("b", 0.6, 0.5, 400.0))
    grid_ = [round(0.05 * i, 2) for i in range(13)]
    linear = block_options(Sensitivity(0.9, 1000.0, probes), grid_)
    curved = block_options(Sensitivity(0.9, 1000.0, probes, _power_sweep(2.0)), grid_)
    assert allocate(linear, 0.9, 600.0).predicted_map == pytest.approx(0.9 - 0.4)  # linear: every split costs 0.4
    assert allocate(curved, 0.9, 600.0).ratios == {"a": 0.3, "b": 0.3}
    assert allocate(curved, 0.9, 600.0).predicted_map == pytest.approx(0.9 - 0.2)


def test_cost_targets_span_the_uniform_sweep():
    sweep = (Probe("*", 0.2, 0.7, 800.0), Probe("*", 0.6, 0.1, 200.0), Probe("*", 0.7, None, 100.0))
    sens = Sensitivity(0.8, 1000.0, (), sweep)
    assert cost_targets(sens, 3) == pytest.approx([200.0, 500.0, 800.0])
    assert cost_targets(sens, 0) == []


def test_allocated_candidates_cover_the_cost_axis_with_per_layer_ratios():
    space = Space(ratio=FloatRange(0.0, 0.6, step=0.05), shape="block")
    probes = []
    for i, b in enumerate(blocks(LAYERS)):
        probes += [Probe(b, 0.3, 0.8 - 0.05 * i, 1000.0 - 30 * (i + 1)),
                   Probe(b, 0.6, 0.7 - 0.1 * i, 1000.0 - 60 * (i + 1))]
    sweep = (Probe("*", 0.3, 0.6, 700.0), Probe("*", 0.6, 0.2, 400.0))
    found = allocated_candidates(Sensitivity(0.82, 1000.0, tuple(probes), sweep), space, LAYERS, 4)
    assert 2 <= len(found) <= 4
    targets = [c.target for c in found]
    assert targets == sorted(targets) and targets[0] == pytest.approx(0.3) and targets[-1] == pytest.approx(0.6)
    for c in found:
        assert set(c.ratios) == {layer.name for layer in LAYERS}
        assert c.ratios["model.2.cv1"] == c.ratios["model.2.m.0.cv1"]  # a block moves as one
        assert c.source.startswith("allocation (loss ~ ratio^")


def test_calibration_maps_true_savings_onto_the_summed_probe_savings():
    # two blocks that each save 300 alone at 0.5 but 450 together (shared weights counted once)
    probes = (Probe("a", 0.5, 0.8, 700.0), Probe("b", 0.5, 0.8, 700.0))
    sens = Sensitivity(0.8, 1000.0, probes, (Probe("*", 0.5, 0.6, 550.0),))
    opts = block_options(sens, [0.0, 0.25, 0.5])
    assert calibrated(sens, opts, [450.0, 225.0]) == pytest.approx([600.0, 300.0])
    assert calibrated(Sensitivity(0.8, 1000.0, probes), opts, [450.0]) == [450.0]  # no sweep: unchanged


def _overlapping_saving(calls):
    """A stand-in for pruning a copy and counting (fakes the model): blocks "a" and "b" share weights, so pruning
    both at r1, r2 saves 600*(r1 + r2) - 400*r1*r2 of 1000 parameters, less than the probes' sum."""
    def saving(ratios):
        calls.append(dict(ratios))
        r1, r2 = ratios.get("a", 0.0), ratios.get("b", 0.0)
        return 600 * (r1 + r2) - 400 * r1 * r2
    return saving


def _ab_options():
    sens = Sensitivity(0.8, 1000.0, (Probe("a", 0.5, 0.7, 700.0), Probe("b", 0.5, 0.6, 700.0)))
    return block_options(sens, [round(0.05 * i, 2) for i in range(15)])


def test_sized_meets_the_true_cut_that_the_summed_probes_miss():
    opts, calls = _ab_options(), list[dict[str, float]]()
    guess = allocate(opts, 0.8, 500.0)  # the summed probes say 500: the model truly loses less
    assert _overlapping_saving([])(guess.ratios) < 500.0
    a, true = sized(opts, 0.8, 500.0, 500.0, _overlapping_saving(calls), tolerance=10.0)
    assert 500.0 <= true <= 510.0 and true == pytest.approx(_overlapping_saving([])(a.ratios))
    assert 2 <= len(calls) <= 4  # the guess, then secant steps until the window


def test_sized_returns_the_largest_saving_when_the_cut_is_out_of_reach_and_stops_on_a_repeat():
    opts, calls = _ab_options(), list[dict[str, float]]()
    a, true = sized(opts, 0.8, 700.0, 700.0, _overlapping_saving(calls), tolerance=10.0)
    assert a.ratios == {"a": 0.5, "b": 0.5} and true == pytest.approx(500.0)  # the options end at the probes
    assert len(calls) == 1  # the knapsack already gives everything: a repeat is not measured again


def test_allocated_candidates_size_each_cut_on_the_true_saving_under_two_loss_curves():
    space = Space(ratio=FloatRange(0.0, 0.7, step=0.05), shape="block")
    # "a" costs little mAP, "b" much; the sweep's losses grow with the square of the ratio (p = 2)
    sweep = (Probe("*", 0.3, 0.8 - 0.045, 600.0), Probe("*", 0.6, 0.8 - 0.18, 300.0))
    sens = Sensitivity(0.8, 1000.0, (Probe("a", 0.7, 0.78, 580.0), Probe("b", 0.7, 0.3, 580.0)), sweep)
    layers = [Layer("a", 16), Layer("b", 16)]
    calls: list[dict[str, float]] = []
    share = _overlapping_saving(calls)
    found = allocated_candidates(sens, space, layers, 0, cuts=[0.5], saving=lambda r: share(r) / 1000.0)
    assert 1 <= len(found) <= 2 and all(c.target == 0.5 for c in found) and calls
    assert [c.exponent for c in found][:1] == [pytest.approx(2.0)]
    for c in found:
        assert 500.0 <= _overlapping_saving([])(c.ratios) <= 510.0
        assert c.ratios["a"] > c.ratios["b"]  # the knapsack prunes the cheap block harder
        assert c.source.startswith(f"allocation (loss ~ ratio^{c.exponent:.1f}): params -50%")
    unsized = allocated_candidates(sens, space, layers, 0, cuts=[0.5])
    assert all(_overlapping_saving([])(c.ratios) != pytest.approx(505.0, abs=5.0) for c in unsized)  # sizing's work


def test_probe_params_and_levels():
    space = Space(ratio=FloatRange(0.0, 0.7, step=0.05))
    assert scan_levels(space, 2) == [0.35, 0.7] and scan_levels(space, 5) == [0.15, 0.3, 0.4, 0.55, 0.7]
    assert grid(space)[:3] == [0.0, 0.05, 0.1] and grid(space)[-1] == 0.7
    p = probe_params(LAYERS, "model.2", 0.35)
    assert p["ratio/model.2.cv1"] == p["ratio/model.2.m.0.cv1"] == 0.35 and p["ratio/model.0"] == 0.0
    assert set(probe_params(LAYERS, "*", 0.3).values()) == {0.3}
    assert set(probe_params(LAYERS, "-", 0.0).values()) == {0.0}
    attrs = records.probe_attrs("model.2", 0.35)

    class T:
        user_attrs = attrs

    assert records.probe(T()) == ("model.2", 0.35)


BASE = {"name": "s", "model": "m.pt", "data": "d.yaml"}


def test_sensitivity_section_defaults_and_errors():
    spec = parse_spec(BASE, "s.yaml")
    assert (spec.sensitivity.probes, spec.sensitivity.sweep, spec.sensitivity.candidates) == (2, 5, 8)
    assert spec.space.shape == "block"
    assert parse_spec({**BASE, "sensitivity": {"probes": 0}}, "s.yaml").sensitivity.probes == 0
    for bad, msg in [({"candidates": 1.5}, "sensitivity.candidates: expected an integer"),
                     ({"probes": -1}, "sensitivity.probes"), ({"sweeps": 3}, "sensitivity")]:
        with pytest.raises(SpecError, match=msg):
            parse_spec({**BASE, "sensitivity": bad}, "s.yaml")


def test_an_interrupted_probe_is_not_a_result_and_is_screened_again():
    import optuna
    from optuna.trial import TrialState

    from autoprune.model import records
    from autoprune.model.allocation import REFERENCE
    from autoprune.search.storage.study import was_interrupted
    from autoprune.search.strategy.sensitivity import read_scan

    scan = optuna.create_study(directions=["maximize", "minimize", "minimize"])

    def probe(block, ratio, reason=None, m=None):
        t = scan.ask()
        for k, v in records.probe_attrs(block, ratio).items():
            t.set_user_attr(k, v)
        if reason:
            records.set_fail_reason(t, reason)
            scan.tell(t, state=TrialState.FAIL)
        else:
            records.write_result(t, {}, {"map50_95": m, "params": 800.0, "macs": 1.0})
            scan.tell(t, [m, 800.0, 1.0])
    probe(REFERENCE, 0.0, reason="interrupted: the search run ended before this trial reported")
    probe("model.4", 0.35, reason="left RUNNING by autoprune process h:1 that is no longer running (killed or crashed)")
    probe("model.4", 0.35, m=0.7)
    probe("model.6", 0.35, reason="layer model.6.cv1 was pruned to nothing")  # a real failure: a result
    done = scan.get_trials()
    assert [was_interrupted(t) for t in done] == [True, True, False, False]
    sens = read_scan(scan, 1000.0)
    assert sorted((p.block, p.map50_95) for p in sens.probes) == [("model.4", 0.7), ("model.6", None)]


def test_fit_count_keeps_between_its_bounds():
    from autoprune.model.budget import fit_count

    assert fit_count(10.0, 3.0, most=5) == 3 and fit_count(100.0, 3.0, most=5) == 5
    assert fit_count(-4.0, 3.0, most=5) == 0 and fit_count(-4.0, 3.0, most=5, least=1) == 1
    assert fit_count(10.0, 0.0, most=5) == 5 and fit_count(1.0, 3.0, most=0, least=1) == 0  # most wins


def test_a_budgeted_scan_shrinks_to_its_share_from_a_probes_cost():
    """``seconds_left`` is a stand-in for the run's clock (a lambda returning fixed seconds)."""
    from autoprune.search.strategy.sensitivity import Scan, ScanBudget

    spec = parse_spec({**BASE, "budget": {"seconds": 300, "direct": True}, "targets": [{"params": 0.5},
                                                                                       {"params": 0.3}],
                       "sensitivity": {"probes": 2, "candidates": 8}}, "s.yaml")
    n_blocks = len(blocks(LAYERS))
    sizing = ScanBudget.of(spec, 0.25, lambda: 100.0)
    assert sizing.reserve == 2 * 2 + 2 * 2  # per target cut two sized allocations; factor x targets proposals
    def levels(probe_s):
        return sizing.levels(spec, LAYERS, probe_s)

    assert levels(None) == 2  # no cost measured: full size
    free = 100.0 - sizing.reserve * 1.3  # a probe of 1 s; a screen 1.3 probes
    assert levels(1.0) == min(2, int(free // n_blocks))
    assert levels(100.0) == 0  # not even one ratio per block fits: no block is probed (the share is a bound)
    assert n_blocks == 5 and levels(5.0) == 1  # 100 - 8 x 1.3 x 5 = 48 s: one ratio per block (25 s), not two
    assert sizing.allocations(spec, Scan(Sensitivity(0.5, 100.0, (), ()), set(), None, 0, 2.0)) == 0  # no probe
    scan = Scan(Sensitivity(0.5, 100.0, (Probe("model.0", 0.6, 0.4, 90.0),), ()), set(), None, 1, 2.0)
    assert sizing.allocations(spec, scan) == min(8, int((100.0 - sizing.reserve * 2.6) // 2.6))
    tight = ScanBudget.of(spec, 0.25, lambda: 5.0)
    assert tight.allocations(spec, scan) == 0  # with targets the spread may go: each target keeps its allocations
    untargeted = parse_spec({**BASE, "budget": 300}, "s.yaml")
    assert ScanBudget.of(untargeted, 0.25, lambda: 5.0).allocations(untargeted, scan) == 1
    assert ScanBudget.of(untargeted, 0.25, lambda: 5.0).allocations(
        untargeted, Scan(scan.sensitivity, set(), None, 2, None)) == 8


def test_a_latency_cut_is_allocated_on_macs_once_and_sized_on_timed_copies():
    """The same knapsack costed in MACs; a latency target gets one allocation (the fitted curve), sized by a
    saving that stands for pruned copies timed against the base (faked: the MACs saving, discounted as latency is);
    its source names latency."""
    space = Space(ratio=FloatRange(0.0, 0.7, step=0.05), shape="block")
    sweep = (Probe("*", 0.3, 0.8 - 0.045, 600.0), Probe("*", 0.6, 0.8 - 0.18, 300.0))
    sens = Sensitivity(0.8, 1000.0, (Probe("a", 0.7, 0.78, 580.0), Probe("b", 0.7, 0.3, 580.0)), sweep)
    layers = [Layer("a", 16), Layer("b", 16)]
    share = _overlapping_saving([])

    def timed(r):  # latency falls slower than MACs: 70% of the MACs saving
        return 0.7 * share(r) / 1000.0

    found = allocated_candidates(sens, space, layers, 0, cuts=[0.3], saving=timed, metric="latency_ratio", curves=1)
    assert len(found) == 1 and found[0].metric == "latency_ratio" and found[0].target == 0.3
    assert timed(found[0].ratios) >= 0.3  # meets the latency cut, not merely the MACs one
    assert found[0].source.startswith("allocation (loss ~ ratio^2.0): latency -30%")


def test_each_target_is_sized_on_what_it_bounds():
    from autoprune.model.budget import Target
    from autoprune.search.strategy.target_allocation import sized_on

    assert sized_on(Target((("params", 0.5),))) == ("params", pytest.approx(0.5))
    assert sized_on(Target((("macs", 0.4),))) == ("macs", pytest.approx(0.6))
    assert sized_on(Target((("latency_ratio", 0.5),))) == ("latency_ratio", pytest.approx(0.5))
    assert sized_on(Target((("latency_ratio", 0.5), ("params", 0.7)))) == ("params", pytest.approx(0.3))


def test_a_scan_without_block_probes_allocates_nothing_and_prunes_no_copy():
    from autoprune.search.strategy.sensitivity import Scan
    from autoprune.search.strategy.target_allocation import target_candidates

    spec = parse_spec({**BASE, "budget": 300, "targets": [{"params": 0.5}, {"latency_ratio": 0.5}]}, "s.yaml")
    sweep_only = Scan(Sensitivity(0.8, 1000.0, (), (Probe("*", 0.3, 0.7, 600.0),)), set(), None, 0, 3.0)
    assert target_candidates(spec, LAYERS, sweep_only, 4, "l2", 8, {"params": 1000.0, "macs": 5000.0}) == []
