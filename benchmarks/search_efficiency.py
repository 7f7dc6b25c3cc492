"""Search efficiency at equal compute: autoprune's search vs a uniform-ratio sweep vs random search.

Every arm prunes the packaged demo baseline on the demo data, with one prune step and one
fine-tune epoch per trial, so N trials = N fine-tune epochs in every arm.  The hypervolume
of each arm's front (mAP50-95 up, params down, latency ratio down) is computed against the
same reference point from the baseline (mAP 0, 1.1x its size and latency).

    python benchmarks/search_efficiency.py --trials 12 --out benchmarks/results/search_efficiency.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    complete,
    front_hypervolume,
    logger,
    machine,
    run_arm,
    setup_logging,
    write_json,
)

OBJECTIVES = ["map50_95", "params", "latency_ratio"]
ALL_CRITERIA = ["l1", "l2", "bn_scale", "taylor", "fpgm"]


def arms(trials: int, seed: int, imgsz: int) -> dict[str, dict]:
    common = {"model": "demo", "data": "demo", "imgsz": imgsz, "trials": trials, "seed": seed,
              "objectives": OBJECTIVES, "finetune": {"batch": 16},
              "latency": {"warmup": 5, "runs": 30, "rounds": 10}, "resources": {"cpus": 2}}
    full_space = {"ratio": {"low": 0.0, "high": 0.7, "step": 0.05}, "criteria": ALL_CRITERIA, "iterations": 1,
                  "epochs": 1, "lr": {"low": 0.0005, "high": 0.02, "log": True}, "ema": [True, False],
                  }
    return {
        # torch-pruning's example recipe: one global ratio for every layer, magnitude importance, fine-tune.
        "uniform": {**common, "name": f"bench-uniform-s{seed}", "screening": {"factor": 0},
                    "space": {"ratio": {"low": 0.0, "high": 0.7}, "shape": "global",
                              "multiplier": {"low": 1.0, "high": 1.0}, "criteria": ["l2"], "iterations": 1,
                              "epochs": 1, "lr": 0.005, "ema": [True], "round_to": [1]},
                    "warm_start": {"uniform": trials, "from_fronts": False}},
        "random": {**common, "name": f"bench-random-s{seed}", "sampler": {"name": "random"},
                   "space": {**full_space, "shape": "layer"}, "screening": {"factor": 0},
                   "warm_start": {"uniform": 0, "from_fronts": False}},
        # autoprune's defaults (sampler, shape, round_to, warm start, screening), on the same space.
        "autoprune": {**common, "name": f"bench-autoprune-s{seed}", "space": full_space,
                      "warm_start": {"from_fronts": False}},  # each arm starts cold: no earlier fronts
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=12, help="fine-tuned trials (= fine-tune epochs) per arm")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--workdir", type=Path, default=None, help="where the studies go (default: a temp dir)")
    p.add_argument("--only", nargs="+", choices=["uniform", "random", "autoprune"])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/search_efficiency.json"))
    args = p.parse_args(argv)
    setup_logging()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="autoprune-bench-"))
    results: dict = {"machine": machine(), "trials_per_arm": args.trials, "imgsz": args.imgsz, "seeds": {}}
    for seed in args.seeds:
        per_seed = {}
        for arm, raw in arms(args.trials, seed, args.imgsz).items():
            if args.only and arm not in args.only:
                continue
            logger.info("seed %d: arm %s", seed, arm)
            study, wall = run_arm(workdir, raw)
            trials = complete(study)
            run = (study.user_attrs.get("runs") or [{}])[-1]
            per_seed[arm] = {
                "hypervolume": front_hypervolume(study), "front_size": len(study.best_trials),
                "completed": len(trials), "failed": len(study.trials) - len(trials), "wall_s": wall,
                "finetune_epochs": sum(t.user_attrs["policy"]["epochs"] * t.user_attrs["policy"]["iterations"]
                                       for t in trials),
                "best_map50_95": max(t.user_attrs["metrics"]["map50_95"] for t in trials),
                "front": [dict(zip(OBJECTIVES, t.values)) for t in study.best_trials],
                "screening": study.user_attrs.get("screening"), "run": run,
            }
            logger.info("seed %d %s: hypervolume %.4f, front %d, wall %.0fs", seed, arm,
                        per_seed[arm]["hypervolume"], per_seed[arm]["front_size"], wall)
        if {"uniform", "autoprune"} <= set(per_seed):
            hv = per_seed["autoprune"]["hypervolume"]
            per_seed["ratio_vs_uniform"] = hv / max(per_seed["uniform"]["hypervolume"], 1e-12)
        if {"random", "autoprune"} <= set(per_seed):
            hv = per_seed["autoprune"]["hypervolume"]
            per_seed["ratio_vs_random"] = hv / max(per_seed["random"]["hypervolume"], 1e-12)
        results["seeds"][str(seed)] = per_seed
    write_json(args.out, results)
    for seed, r in results["seeds"].items():
        hvs = ", ".join(f"{k} HV {v['hypervolume']:.4f}" for k, v in r.items() if isinstance(v, dict))
        print(f"seed {seed}: " + hvs
              + "".join(f", {k} {v:.2f}x" for k, v in r.items() if k.startswith("ratio")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
