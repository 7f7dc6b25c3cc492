"""Screening: how well adaptive-BatchNorm screening ranks the final mAP, and what it saves.

N random policies from the demo search space are each (a) screened: pruned to their final
channels, BatchNorm statistics re-estimated on a few batches, validated; (b) pruned without
BN recalibration and validated (to show what adaptive BN adds); (c) run as a full trial
(prune steps + fine-tuning, as in the demo spec).  Reports Kendall tau between the screen mAP
and the final mAP, and the compute ratio (full trial seconds / screen seconds).

    python benchmarks/screening.py --candidates 12 --out benchmarks/results/screening.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import logger, machine, setup_logging, write_json  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--candidates", type=int, default=12)
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--epochs", type=int, default=2, help="fine-tune epochs per prune step of a full trial")
    p.add_argument("--iterations", type=int, default=1)
    p.add_argument("--batches", type=int, default=8, help="BN recalibration batches")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/screening.json"))
    args = p.parse_args(argv)
    setup_logging()

    import optuna
    import torch

    from autoprune.adapters import pruning, yolo
    from autoprune.config.spec import parse_spec
    from autoprune.engine.pipeline import TRACE_IMGSZ
    from autoprune.engine.screen import screen_policy
    from autoprune.engine.trial import run_trial
    from autoprune.model import Layer, criteria
    from autoprune.model.pareto import kendall_tau
    from autoprune.model.sampling import sample_policy, target_keep
    from autoprune.search.inputs import prepare_inputs

    raw = {"name": "bench-screen", "model": "demo", "data": "demo", "imgsz": args.imgsz, "seed": args.seed,
           "space": {"ratio": {"low": 0.0, "high": 0.7, "step": 0.05}, "shape": "stage",
                     "criteria": ["l1", "l2", "bn_scale", "fpgm", "random"],
                     "iterations": args.iterations, "epochs": args.epochs, "round_to": [1, 8]},
           "finetune": {"batch": 16}, "latency": {"warmup": 2, "runs": 10, "rounds": 5}, "resources": {"cpus": 2}}
    spec = prepare_inputs(parse_spec(raw, "bench.yaml")).spec
    base = yolo.load_model(spec.model)
    layers = [Layer(p_.name, p_.channels, yolo.layer_stage(base, p_.name))
              for p_ in pruning.prunable_layers(base, TRACE_IMGSZ)]
    sampler_study = optuna.create_study(directions=["maximize", "minimize"],
                                        sampler=optuna.samplers.RandomSampler(seed=args.seed))
    rows = []
    workdir = Path(tempfile.mkdtemp(prefix="autoprune-screen-bench-"))
    for i in range(args.candidates):
        policy = sample_policy(sampler_study.ask(), spec.space, layers)
        screened = screen_policy(spec.trial_settings, policy, layers, args.batches)
        t0 = time.perf_counter()  # prune only, no BN recalibration
        model = yolo.load_model(spec.model)
        keep = target_keep({la.name: la.channels for la in layers}, policy.ratio_map, 1, 1, policy.round_to)
        torch.manual_seed(spec.seed)
        pruning.prune_step(model, keep, pruning.importance(criteria.get(policy.criterion)), TRACE_IMGSZ)
        plain = yolo.validate(model, spec.data, spec.imgsz, batch=16, threads=spec.train_threads).map50_95
        plain_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        full = run_trial(spec.trial_settings, policy, layers, workdir / f"c{i}")
        full_s = time.perf_counter() - t0
        row = {"criterion": policy.criterion, "round_to": policy.round_to,
               "mean_ratio": statistics.fmean(policy.ratio_map.values()),
               "screen_map50_95": screened.metrics["map50_95"], "screen_s": screened.attrs["screen_seconds"],
               "no_bn_map50_95": plain, "no_bn_s": plain_s,
               "final_map50_95": full.metrics["map50_95"], "full_s": full_s}
        rows.append(row)
        logger.info("candidate %d: screen %.3f (%.1fs), no-BN %.3f, final %.3f (%.1fs)", i,
                    row["screen_map50_95"], row["screen_s"], plain, row["final_map50_95"], full_s)
    final = [r["final_map50_95"] for r in rows]
    result = {
        "machine": machine(), "candidates": args.candidates, "imgsz": args.imgsz, "epochs": args.epochs,
        "iterations": args.iterations, "bn_batches": args.batches,
        "kendall_tau_screen": kendall_tau([r["screen_map50_95"] for r in rows], final),
        "kendall_tau_no_bn": kendall_tau([r["no_bn_map50_95"] for r in rows], final),
        "screen_s_mean": statistics.fmean(r["screen_s"] for r in rows),
        "full_s_mean": statistics.fmean(r["full_s"] for r in rows),
        "rows": rows,
    }
    result["compute_saved_x"] = result["full_s_mean"] / result["screen_s_mean"]
    write_json(args.out, result)
    print(f"Kendall tau: screen {result['kendall_tau_screen']:.3f} (no BN recalibration "
          f"{result['kendall_tau_no_bn']:.3f}); screen {result['screen_s_mean']:.1f}s vs full trial "
          f"{result['full_s_mean']:.1f}s = {result['compute_saved_x']:.1f}x less compute")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
