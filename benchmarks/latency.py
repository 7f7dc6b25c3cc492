"""Real speed: latency reduction vs MACs reduction at imgsz 640 on this machine, and how stable
the interleaved latency ratio is compared with plain repeated medians.

Pruned models are made from policies (a study's front, or uniform ratios with and without
round_to=8) by pruning the demo base to their channel counts; fine-tuning does not change
latency, so none is done here.

    python benchmarks/latency.py --imgsz 640 --out benchmarks/results/latency.json
    python benchmarks/latency.py --storage sqlite:///studies/autoprune.db --study demo   # a front
    python benchmarks/latency.py --runtime torch --runtime onnxruntime                  # per runtime
    python benchmarks/latency.py --lut --random 8 --out benchmarks/results/latency_lut.json   # lookup table's error

Every model is timed against the base on the same runtime (interleaved rounds); per runtime the
result has the rows, the mean of the per-policy latency cut / MACs cut, the aggregate
(sum of latency cuts / sum of MACs cuts) and how many pruned models were slower than the base.
With ``--lut`` each model's latency is also estimated by the per-device lookup table
(autoprune.engine.latency_table) as a ratio to the base's estimate, and the error of that ratio
against the measured one is reported next to the error of the MACs ratio as a latency proxy.
``--random N`` adds N random per-layer policies (seeded) to the uniform ones.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import commit, logger, machine, setup_logging, write_json  # noqa: E402
from autoprune.model import criteria  # noqa: E402
from autoprune.model.sampling import target_keep  # noqa: E402


def _cv(xs: list[float]) -> float:
    return statistics.pstdev(xs) / statistics.fmean(xs)


def _proxy_errors(rows: list[dict]) -> dict:
    """How well the lookup table's ratio, and the MACs ratio, predict the measured latency ratio."""
    from autoprune.model.pareto import kendall_tau

    measured = [r["latency_ratio"] for r in rows]
    out = {}
    for proxy in ("lut_ratio", "macs_ratio"):
        errors = [abs(r[proxy] - r["latency_ratio"]) / r["latency_ratio"] for r in rows]
        out[proxy] = {"mean_abs_rel_error": statistics.fmean(errors), "max_abs_rel_error": max(errors),
                      "kendall_tau": kendall_tau([r[proxy] for r in rows], measured)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--runs", type=int, default=20, help="timed passes per model per measurement")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5, help="repeated measurements for the spread")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--storage", help="take the policies from this study storage's front ...")
    p.add_argument("--study", help="... of this study")
    p.add_argument("--runtime", action="append",
                   choices=("torch", "onnxruntime", "openvino", "cuda-graph", "tensorrt"),
                   help="runtime(s) to time on (repeatable; default torch)")
    p.add_argument("--device", default="cpu", help="cpu or cuda:N (cuda-graph and tensorrt need cuda)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16"), help="deployed precision")
    p.add_argument("--batch", type=int, default=1, help="images per timed pass")
    p.add_argument("--lut", action="store_true", help="also estimate each model with the latency lookup table")
    p.add_argument("--random", type=int, default=0, help="random per-layer policies to add (uniform ones only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/latency.json"))
    args = p.parse_args(argv)
    setup_logging()

    from autoprune.adapters import pruning, yolo
    from autoprune.config.sections import LatencySettings
    from autoprune.demo.baseline import resolve_demo_model
    from autoprune.engine.latency import measure_interleaved, measure_latency
    from autoprune.engine.latency_table import LatencyTable
    from autoprune.engine.pipeline import TRACE_IMGSZ

    # the spec's timing (its estimator, re-timing a spread ratio), with this script's passes and rounds
    timing = LatencySettings(warmup=3, runs=args.runs, rounds=args.rounds, threads=args.threads,
                             precision=args.precision, batch=args.batch)
    base_path = resolve_demo_model()
    base = yolo.load_model(base_path)
    original = pruning.channel_counts(base, TRACE_IMGSZ)
    policies: list[tuple[str, dict[str, int]]] = []
    if args.storage and args.study:
        import optuna

        study = optuna.load_study(study_name=args.study, storage=args.storage)
        policies += [(f"front trial {t.number}", t.user_attrs["channels"]) for t in study.best_trials]
    else:
        for ratio in (0.2, 0.3, 0.5):
            for round_to in (1, 8):
                keep = target_keep(original, dict.fromkeys(original, ratio), 1, 1, round_to)
                policies.append((f"uniform {ratio:.1f} round_to {round_to}", keep))
        rng = random.Random(args.seed)
        for i in range(args.random):
            round_to = rng.choice((1, 8))
            ratios = {name: rng.uniform(0.0, 0.7) for name in original}
            policies.append((f"random {i} round_to {round_to}", target_keep(original, ratios, 1, 1, round_to)))
    base_deployed = yolo.deploy_copy(base)
    base_macs = pruning.count_macs(base, args.imgsz)
    runtimes = args.runtime or ["torch"]
    pruned_models = []
    for label, keep in policies:
        model = yolo.load_model(base_path)
        pruning.prune_step(model, keep, pruning.importance(criteria.get("l2")), TRACE_IMGSZ)
        pruned_models.append((label, yolo.deploy_copy(model), pruning.count_macs(model, args.imgsz) / base_macs))
    per_runtime = {}
    for runtime in runtimes:
        rows = []
        table = LatencyTable(runtime, args.device, args.threads) if args.lut else None
        base_lut = table.estimate(base_deployed, args.imgsz).ms if table else None
        for label, deployed, macs_ratio in pruned_models:
            il = measure_interleaved(deployed, base_deployed, args.imgsz, args.device,
                                     timing=replace(timing, runtime=runtime))
            row = {"policy": label, "macs_ratio": macs_ratio, "latency_ratio": il.ratio,
                   "latency_ms": il.candidate.median_ms, "baseline_ms": il.reference.median_ms,
                   "ratio_cv_within": il.ratio_cv,
                   "latency_reduction_per_macs_reduction": (1 - il.ratio) / (1 - macs_ratio)}
            if table and base_lut:
                t0 = time.perf_counter()
                est = table.estimate(deployed, args.imgsz)
                row.update(lut_ms=est.ms, lut_ratio=est.ms / base_lut, lut_seconds=time.perf_counter() - t0,
                           lut_timed_now=est.timed_now)
            rows.append(row)
            logger.info("%s, %s: MACs x%.3f, latency x%.3f (%.1f vs %.1f ms)", runtime, label, macs_ratio, il.ratio,
                        il.candidate.median_ms, il.reference.median_ms)
        per_runtime[runtime] = {
            "rows": rows,
            "mean_latency_reduction_per_macs_reduction": statistics.fmean(
                r["latency_reduction_per_macs_reduction"] for r in rows),
            "aggregate_latency_reduction_per_macs_reduction": sum(1 - r["latency_ratio"] for r in rows)
            / sum(1 - r["macs_ratio"] for r in rows),
            "slower_than_base": sum(r["latency_ratio"] > 1.0 for r in rows),
        }
        if table:
            per_runtime[runtime]["lut"] = _proxy_errors(rows) | {"table": table.describe(), "base_lut_ms": base_lut}
    # Stability: the same candidate measured `repeats` times, interleaved ratio vs plain medians (torch).
    probe = pruned_models[len(pruned_models) // 2][1]
    ratios, plain = [], []
    for _ in range(args.repeats):
        ratios.append(measure_interleaved(probe, base_deployed, args.imgsz, args.device, timing=timing).ratio)
        plain.append(measure_latency(probe, args.imgsz, args.device, timing=timing).median_ms)
    first = per_runtime[runtimes[0]]
    result = {
        "commit": commit(), "machine": machine(), "device": args.device, "precision": args.precision,
        "batch": args.batch, "imgsz": args.imgsz, "runs": args.runs, "rounds": args.rounds,
        "source": f"front of study {args.study}" if args.study else "uniform policies",
        "rows": first["rows"],  # the first runtime's (kept for readers of the earlier layout)
        "mean_latency_reduction_per_macs_reduction": first["mean_latency_reduction_per_macs_reduction"],
        "runtimes": per_runtime,
        "stability": {"policy": policies[len(policies) // 2][0], "interleaved_ratios": ratios,
                      "interleaved_ratio_cv": _cv(ratios), "plain_medians_ms": plain, "plain_median_cv": _cv(plain),
                      "plain_median_spread": (max(plain) - min(plain)) / min(plain)},
    }
    write_json(args.out, result)
    for runtime, r in per_runtime.items():
        print(f"{runtime}: latency cut / MACs cut: mean {r['mean_latency_reduction_per_macs_reduction']:.2f}, "
              f"aggregate {r['aggregate_latency_reduction_per_macs_reduction']:.2f}; "
              f"{r['slower_than_base']} of {len(r['rows'])} slower than the base")
        for proxy, e in r.get("lut", {}).items():
            if isinstance(e, dict) and "mean_abs_rel_error" in e:
                print(f"  {proxy} as the latency ratio: mean error {e['mean_abs_rel_error']:.1%}, "
                      f"max {e['max_abs_rel_error']:.1%}, Kendall tau {e['kendall_tau']:.2f}")
    print(f"interleaved ratio CV {result['stability']['interleaved_ratio_cv']:.1%} vs plain median CV "
          f"{result['stability']['plain_median_cv']:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
