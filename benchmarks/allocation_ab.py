"""Allocation rules where they act: each target's allocations under three rules, screened alike.

For each finished sensitivity scan given (a ``search_vs_recipe.py`` workdir's, say), this allocates each target cut
from the same probes under the rules ``--rules`` names: ``linear`` (the loss interpolated linearly from ratio 0, the
rule before commit 8f0d7b6) and ``fitted`` (along ``ratio ** p``), both sized by the uniform sweep's calibration at
the cut and at the cut plus 4 points (the search's per-target allocations before true sizing), and ``sized`` (the
current search: per cut an allocation under the fitted and one under the linear loss curve, each sized on the pruned
model's true parameter count). It screens every allocation with adaptive BN on the same batches as a search's screen
(val mAP50-95, real channel removal), and per target keeps the best-screened one that meets the cut, as a direct run
delivers (none: NaN, the run would deliver another candidate). No fine-tune: it measures the allocation, not what a
final fine-tune then does with it. Paired differences fitted - linear and sized - fitted per (scan, target), over
the scans where both meet the cut. A row's ``exponent`` is the power of the loss curve its allocation used (files
made before commit 8017afc recorded the scan's fitted power on every row).

    python benchmarks/allocation_ab.py --model /tmp/bench-shape/yolo11n_fewcue11_e400.pt \\
        --data /tmp/bench-shape/fewcue11-bench.yaml --imgsz 160 /tmp/bench-shape/autoprune@direct-*/studies/autoprune.db
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import commit, logger, machine, setup_logging, write_json  # noqa: E402
from autoprune.config.spec import parse_spec  # noqa: E402
from autoprune.model.allocation import allocate, block_options, calibrated, loss_exponent  # noqa: E402
from autoprune.model.sampling import params_for_policy, sample_policy  # noqa: E402
from autoprune.model.space import Layer, blocks  # noqa: E402
from autoprune.search.strategy.sensitivity import allocated_candidates, grid, scan_knobs, true_saving  # noqa: E402
from search_vs_recipe import DEMO_SPEC, bootstrap_diff  # noqa: E402

RULES = ("linear", "fitted", "sized")
CALIBRATED_MARGINS = (0.0, 0.04)  # the calibrated rules' allocations per cut: at it and 4 points past it


def allocations(sens: Any, space: Any, layers: list[Layer], cuts: list[float], rule: str,
                saving: Any = None) -> list[dict[str, Any]]:
    """The search's per-target allocations under one rule (``saving``: the true share removed, for ``sized``); the
    calibration is the same for ``linear`` and ``fitted`` (it reads savings only)."""
    if rule == "sized":
        found = allocated_candidates(sens, space, layers, 0, cuts=cuts, saving=saving)
        return [{"cut": c.target, "margin": 0.0, "ratios": c.ratios, "predicted": c.predicted_map,
                 "exponent": c.exponent} for c in found]
    curve = sens if rule == "fitted" else dataclasses.replace(sens, sweep=())  # no sweep: p = 1, the linear rule
    options = block_options(curve, grid(space))
    targets = [(c + m) * sens.base_cost for c in cuts for m in CALIBRATED_MARGINS]
    grouped = blocks(layers)
    out = []
    for (c, m), summed in zip([(c, m) for c in cuts for m in CALIBRATED_MARGINS],
                              calibrated(sens, block_options(sens, grid(space)), targets)):
        a = allocate(options, sens.reference_map, summed)
        ratios = {layer.name: a.ratios.get(b, 0.0) for b, members in grouped.items() for layer in members}
        out.append({"cut": c, "margin": m, "ratios": ratios, "predicted": a.predicted_map,
                    "exponent": loss_exponent(curve)})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dbs", nargs="+", type=Path, help="SQLite files holding one sensitivity scan of --model each")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--cuts", type=float, nargs="+", default=[0.5, 0.7])
    p.add_argument("--rules", nargs="+", choices=RULES, default=list(RULES))
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "allocation_ab.json")
    args = p.parse_args(argv)
    setup_logging()
    import optuna

    from autoprune.adapters import pruning, yolo
    from autoprune.engine.criteria import TRACE_IMGSZ
    from autoprune.engine.screen import screen_safely
    from autoprune.model import records
    from autoprune.search.strategy.sensitivity import read_scan

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    raw = yaml.safe_load(DEMO_SPEC.read_text())
    raw.update({"name": "ab", "model": args.model, "data": args.data, "imgsz": args.imgsz, "budget": None,
                "targets": None, "objectives": ["map50_95", "params"],
                "latency": {"warmup": 0, "runs": 3, "rounds": 1, "interleave": False}})
    spec = parse_spec(raw, "ab.yaml")
    criterion, round_to = scan_knobs(spec.space)
    model = yolo.load_model(args.model)
    layers = [Layer(q.name, q.channels, yolo.layer_stage(model, q.name))
              for q in pruning.prunable_layers(model, TRACE_IMGSZ)]
    saving = true_saving(spec, layers, criterion, round_to) if "sized" in args.rules else None
    rows: list[dict[str, Any]] = []
    for db in args.dbs:
        url = f"sqlite:///{db.resolve()}"
        (name,) = [n for n in optuna.get_all_study_names(url) if n.startswith("sensitivity-")]
        scan = optuna.load_study(study_name=name, storage=url)
        base = max(records.trial(t).metrics.get("params", 0.0) for t in scan.get_trials(deepcopy=False)
                   if records.probe(t) is not None and records.probe(t)[1] == 0.0)  # type: ignore[index]
        sens = read_scan(scan, base)
        for rule in args.rules:
            for a in allocations(sens, spec.space, layers, args.cuts, rule, saving):
                # the search's path: the allocation's per-layer ratios projected onto the space, then sampled back
                params = params_for_policy(spec.space, layers, {"ratios": a["ratios"], "criterion": criterion,
                                                                "round_to": round_to})
                policy = sample_policy(optuna.trial.FixedTrial(params), spec.space, layers)
                r = screen_safely(spec.trial_settings, policy, layers, spec.screening.batches)
                m = r.metrics if r.ok else {}
                rows.append({"db": str(db), "rule": rule, "exponent": a["exponent"],
                             "cut": a["cut"], "margin": a["margin"], "predicted": a["predicted"],
                             "screen_map": m.get("map50_95"), "params_ratio": m.get("params", 0.0) / base,
                             "reason": r.reason})
                logger.info("%s %s -%.0f%%+%.0f: screen %s, params %.3f", db.parent.parent.name, rows[-1]["rule"],
                            100 * a["cut"], 100 * a["margin"], m.get("map50_95"), rows[-1]["params_ratio"])
    summary: dict[str, Any] = {}
    for cut in args.cuts:
        best: dict[str, list[float]] = {rule: [] for rule in args.rules}
        for db in args.dbs:
            for rule in best:
                ok = [r["screen_map"] for r in rows if r["db"] == str(db) and r["rule"] == rule and r["cut"] == cut
                      and r["screen_map"] is not None and r["params_ratio"] <= 1 - cut + 1e-9]
                best[rule].append(max(ok) if ok else float("nan"))
        s: dict[str, Any] = dict(best)
        for rule, v in best.items():
            s[f"mean_{rule}"] = statistics.fmean(v)
            s[f"meets_{rule}"] = sum(x == x for x in v)  # scans where an allocation meets the cut (NaN != NaN)
        for a, b in (("fitted", "linear"), ("sized", "fitted")):
            if a in best and b in best:  # over the scans where both rules meet the cut
                both = [(x, y) for x, y in zip(best[a], best[b]) if x == x and y == y]
                s[f"{a}-{b}"] = bootstrap_diff([x for x, _ in both], [y for _, y in both]) if both else None
                logger.info("-%.0f%%: best screen meeting the cut, %s - %s %s", 100 * cut, a, b, s[f"{a}-{b}"])
        summary[str(cut)] = s
    write_json(args.out, {"commit": commit(), "machine": machine(), "model": args.model, "data": args.data,
                          "imgsz": args.imgsz, "rows": rows, "summary": summary})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
