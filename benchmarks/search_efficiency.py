"""Search efficiency at equal wall-clock: does autoprune's search beat the hand-tuned uniform recipe?

Every arm of a seed gets the same wall-clock budget, with screening, baseline measurement and
orchestration charged (one Ray session for the whole benchmark; the arms run one after another,
two fine-tuned trials per step until the budget is spent). The arms:

- ``uniform``: the hand recipe (torch-pruning's YOLOv8 example): one ratio for every layer, group
  L2, one prune step, lr 0.01 with EMA, cosine decay, different ratios tried at random.
- ``sweep``: the same uniform policies, screened with adaptive BN and promoted as autoprune does.
- ``random``: random search over autoprune's full space, no screening.
- ``autoprune``: autoprune's defaults. ``autoprune_recipe``: the same with the fine-tune knobs fixed
  to the recipe's. ``autoprune_noscreen``: the defaults without screening.

The sensitivity scan of the autoprune arms is cached per base model (as in use): it is run once per
task before the seeds (a throw-away one-trial study), its wall-clock recorded as ``scan_s`` and
charged in equal shares to the arms that use it (their budget is cut by ``scan_s`` / their runs).

Selection (the Pareto front, constraints) uses the val split; the reported hypervolume uses mAP50-95
on the test split (another random stream of the synthetic generator) of each arm's feasible front,
with params, normalised by the baseline: reference mAP 0 (``hv``) and 0.5x the baseline (``hv_half``),
params 1.1x the baseline.

    python benchmarks/search_efficiency.py --task demo --seeds 0 1 2 3 4 5 6 7 --budget 120
    python benchmarks/search_efficiency.py --task shapes11 --seeds 0 1 2 3 4 5 6 7 --budget 120
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import logger, machine, setup_logging, write_json  # noqa: E402

ARMS = ("uniform", "sweep", "random", "autoprune", "autoprune_recipe", "autoprune_noscreen")
OBJECTIVES = ["map50_95", "params"]
RECIPE_KNOBS = {"iterations": 1, "lr": 0.01, "ema": [True], "schedule": ["cosine"]}


def task_inputs(task: str, workdir: Path, imgsz: int) -> tuple[str, str]:
    """(model checkpoint, data set YAML) of a task; the second task's base model is trained once and cached."""
    from autoprune.demo.synthetic import SyntheticConfig, ensure_dataset

    if task == "demo":
        return "demo", "demo"
    # a second task of our own making: YOLO11n on denser scenes of smaller shapes
    cfg = SyntheticConfig(n_train=240, n_val=60, n_test=60, imgsz=160, min_size=18, max_size=44, max_objects=5,
                          seed=11)
    data = ensure_dataset(cfg, workdir / "data")
    model = workdir / "yolo11n_shapes11.pt"
    if not model.exists():
        from autoprune.demo.baseline import train_baseline

        train_baseline(model, epochs=60, model_yaml="yolo11n.yaml", data_cfg=cfg, data_root=workdir / "data",
                       imgsz=imgsz)
    return str(model), str(data)


def arm_specs(model: str, data: str, seed: int, imgsz: int) -> dict[str, dict[str, Any]]:
    common = {"model": model, "data": data, "imgsz": imgsz, "seed": seed, "trials": 10_000,
              "objectives": OBJECTIVES, "finetune": {"batch": 16}, "constraints": {"map_floor": 0.5},
              "latency": {"warmup": 1, "runs": 5, "rounds": 1, "interleave": False}, "resources": {"cpus": 2},
              "warm_start": {"from_fronts": False}}
    uniform_space = {"ratio": {"low": 0.05, "high": 0.7, "step": 0.05}, "shape": "global",
                     "multiplier": {"low": 1.0, "high": 1.0}, "criteria": ["l2"], "round_to": [1], "epochs": 1,
                     **RECIPE_KNOBS}
    full = {"ratio": {"low": 0.0, "high": 0.7, "step": 0.05}, "epochs": 1, "iterations": {"low": 1, "high": 2},
            "lr": {"low": 0.001, "high": 0.02, "log": True}}
    return {
        "uniform": {**common, "space": uniform_space, "sampler": {"name": "random"}, "screening": {"factor": 0},
                    "warm_start": {"uniform": 0, "from_fronts": False}},
        "sweep": {**common, "space": uniform_space, "sampler": {"name": "random"}, "sensitivity": {"probes": 0}},
        "random": {**common, "space": {**full, "shape": "layer"}, "sampler": {"name": "random"},
                   "screening": {"factor": 0}, "warm_start": {"uniform": 0, "from_fronts": False}},
        "autoprune": {**common, "space": full},
        "autoprune_recipe": {**common, "space": {**full, **RECIPE_KNOBS}},
        "autoprune_noscreen": {**common, "space": full, "screening": {"factor": 0}},
    }


def run_arm(workdir: Path, name: str, raw: dict[str, Any], budget_s: float, step: int) -> tuple[Any, float, int]:
    """Run steps of ``step`` new trials until ``budget_s`` is spent; returns (outcome, wall seconds, steps)."""
    from autoprune.config.spec import parse_spec
    from autoprune.search.run import run_search

    spec = parse_spec({**raw, "name": name}, f"{name}.yaml", studies_dir=workdir / "studies")
    t0 = time.perf_counter()
    steps = 0
    outcome = None
    while steps == 0 or time.perf_counter() - t0 < budget_s:
        outcome = run_search(spec, max_new_trials=step)
        steps += 1
    return outcome, time.perf_counter() - t0, steps


def test_front(outcome: Any, data: str, imgsz: int) -> dict[str, Any]:
    """Test-split mAP of the arm's feasible (val) front, its hypervolumes, and the best mAP at <= half the params."""
    from optuna.trial import TrialState

    from autoprune.adapters import yolo
    from autoprune.model import pareto, records
    from autoprune.model.constraints import feasible

    study = outcome.study
    base = records.baseline(study)
    base_model = yolo.load_model(base["model"])
    base_test = yolo.validate(base_model, data, imgsz, split="test").map50_95
    points = []
    for t in study.best_trials:
        rec = records.trial(t)
        m = yolo.validate(yolo.load_model(rec.checkpoint), data, imgsz, split="test").map50_95
        points.append((m, rec.metrics["params"]))
    norm = [[-m / base_test, p / base["params"]] for m, p in points]
    half = [m for m, p in points if p <= 0.5 * base["params"]]
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return {"hv": pareto.hypervolume(norm, [0.0, pareto.REFERENCE_MARGIN]),
            "hv_half": pareto.hypervolume(norm, [-0.5, pareto.REFERENCE_MARGIN]),
            "best_map_at_half_params": max(half) if half else None, "front": points, "base_test_map50_95": base_test,
            "base_val_map50_95": base["map50_95"], "trials": len(done),
            "below_floor": sum(not feasible(t.constraints) for t in done)}


def bootstrap_ratio(a: list[float], b: list[float], n: int = 10_000, seed: int = 0) -> dict[str, float]:
    """Paired ratio mean(a) / mean(b) over seeds, with a bootstrap 95% interval (seeds resampled in pairs)."""
    rng = random.Random(seed)
    k = len(a)
    ratio = statistics.fmean(a) / max(statistics.fmean(b), 1e-12)
    boots = []
    for _ in range(n):
        idx = [rng.randrange(k) for _ in range(k)]
        boots.append(statistics.fmean(a[i] for i in idx) / max(statistics.fmean(b[i] for i in idx), 1e-12))
    boots.sort()
    return {"ratio": ratio, "lo95": boots[int(0.025 * n)], "hi95": boots[int(0.975 * n) - 1]}


def _mergeable(out: Path, fresh: dict[str, Any]) -> dict[str, Any]:
    """The results already in ``out``, checked to pair with this run (same seeds, budget, step, image size)."""
    old = json.loads(out.read_text())
    for key in ("task", "budget_s", "seeds", "step", "imgsz"):
        if old.get(key) != fresh[key]:
            raise SystemExit(f"--merge: {out} has {key} {old.get(key)!r}, this run {fresh[key]!r}")
    old.setdefault("merged_runs", []).append({"machine": fresh["machine"], "arms": []})
    return old


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=["demo", "shapes11"], default="demo")
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    p.add_argument("--budget", type=float, default=120.0, help="wall-clock seconds per arm and seed")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    p.add_argument("--step", type=int, default=2, help="fine-tuned trials per search call")
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--workdir", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--merge", action="store_true",
                   help="add these arms to the arms already in --out (same seeds, budget, step and imgsz)")
    args = p.parse_args(argv)
    setup_logging()
    import ray

    out = args.out or Path(__file__).parent / "results" / f"search_efficiency_{args.task}.json"
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="autoprune-bench-"))
    model, data = task_inputs(args.task, workdir, args.imgsz)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    result: dict[str, Any] = {"task": args.task, "budget_s": args.budget, "seeds": args.seeds, "step": args.step,
                              "imgsz": args.imgsz, "machine": machine(), "arms": {}}
    if args.merge:
        result = _mergeable(out, result)
        result["merged_runs"][-1]["arms"] = list(args.arms)
    result["arms"].update({a: {k: [] for k in ("hv", "hv_half", "best_map_at_half_params", "below_floor", "trials",
                                               "wall_s", "front")} for a in args.arms})
    scanned = [a for a in args.arms if a.startswith("autoprune") and a != "autoprune_noscreen"]
    share = 0.0
    if scanned:  # the scan, cached per base model, paid once and charged in shares
        t0 = time.perf_counter()
        run_arm(workdir, f"{args.task}-scan", arm_specs(model, data, 0, args.imgsz)["autoprune"], 0.0, 1)
        scan_s = time.perf_counter() - t0
        share = scan_s / (len(scanned) * len(args.seeds))
        result["scan_s" if not args.merge else f"scan_s_{'_'.join(scanned)}"] = scan_s
        result["scan_share_s" if not args.merge else f"scan_share_s_{'_'.join(scanned)}"] = share
        logger.info("%s: sensitivity scan %.0fs, charged %.1fs to each autoprune arm run", args.task,
                    result["scan_s"], share)
    for seed in args.seeds:
        specs = arm_specs(model, data, seed, args.imgsz)
        for arm in args.arms:
            budget = args.budget - (share if arm in scanned else 0.0)
            outcome, wall, steps = run_arm(workdir, f"{args.task}-{arm}-s{seed}", specs[arm], budget, args.step)
            res = test_front(outcome, outcome.spec.data, args.imgsz)
            rec = result["arms"][arm]
            for key in ("hv", "hv_half", "best_map_at_half_params", "below_floor", "trials", "front"):
                rec[key].append(res[key])
            rec["wall_s"].append(wall)
            result["base_test_map50_95"] = res["base_test_map50_95"]
            logger.info("%s seed %d %s: %d trials in %.0fs, test HV %.4f (half %.4f), best mAP at <=50%% params %s",
                        args.task, seed, arm, res["trials"], wall, res["hv"], res["hv_half"],
                        res["best_map_at_half_params"])
        write_json(out, result)  # after every seed: a partial run still leaves its numbers
    arms = result["arms"]
    summary = {}
    for mine in ("autoprune", "autoprune_recipe", "autoprune_noscreen"):
        for other in ("uniform", "random", "sweep"):
            if mine in arms and other in arms and len(args.seeds) >= 2:
                summary[f"{mine}/{other}"] = bootstrap_ratio(arms[mine]["hv"], arms[other]["hv"])
    result["summary"] = summary
    write_json(out, result)
    for arm, rec in arms.items():
        print(f"{arm}: HV {statistics.fmean(rec['hv']):.4f} (per seed {', '.join(f'{v:.3f}' for v in rec['hv'])}), "
              f"trials {rec['trials']}")
    for k, v in summary.items():
        print(f"{k}: HV ratio {v['ratio']:.3f} [95% {v['lo95']:.3f}, {v['hi95']:.3f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
