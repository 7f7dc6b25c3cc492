"""Orchestration overhead (Ray Tune + Optuna + SQL): the share of the run's wall time in which no trial ran.

Runs a small real study and compares the wall time of the Ray Tune run with the sum of the
trials' own wall times (measured inside each trial).  Ray start-up is reported separately.

    python benchmarks/overhead.py --trials 8 --out benchmarks/results/overhead.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import logger, machine, run_arm, setup_logging, write_json  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--storage", help="study storage URL (default: SQLite in a temp dir)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/overhead.json"))
    args = p.parse_args(argv)
    setup_logging()
    workdir = Path(tempfile.mkdtemp(prefix="autoprune-overhead-"))
    raw = {"name": "bench-overhead", "model": "demo", "data": "demo", "imgsz": args.imgsz, "trials": args.trials,
           "space": {"ratio": {"low": 0.1, "high": 0.5}, "criteria": ["l1", "l2"], "iterations": 1, "epochs": 1},
           "finetune": {"batch": 16}, "latency": {"warmup": 5, "runs": 30}, "resources": {"cpus": 2},
           "screening": {"factor": 0}, "warm_start": {"uniform": 0, "from_fronts": False}}
    if args.storage:
        raw["storage"] = args.storage
    study, wall = run_arm(workdir, raw)
    run = study.user_attrs["runs"][-1]
    result = {"machine": machine(), "trials": args.trials, "imgsz": args.imgsz, "search_wall_s": wall, **run}
    write_json(args.out, result)
    print(f"{run['trials']} trials: Ray Tune run {run['run_s']:.1f}s, trials' own time {run['trial_s']:.1f}s, "
          f"overhead {run['overhead_share']:.1%} of the run's wall time (no trial running), "
          f"{run['trials_per_hour']:.0f} trials/hour (Ray start-up {run['ray_init_s']:.1f}s not included)")
    logger.info("done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
