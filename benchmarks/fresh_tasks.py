"""Fresh tasks: is autoprune's delivery ever beaten by the hand recipe, on tasks drawn at run time that nobody tuned
to, judged on both axes (test mAP50-95 and latency on ONNX Runtime)?

A draw: ``--draw-seed`` (default: drawn from the OS at run time and recorded) picks ``--tasks`` task seeds never used
before; the regimes alternate (``converged``: the base trained until its val mAP stops rising, ultralytics' early
stopping with ``--patience``; ``early``: a base stopped after 15-40 epochs, as users' custom models often are). Each
task seed draws a synthetic detection task (object sizes, density, colour or shape cue, near-miss distractors, pixel
noise, training-set size, image size; YOLOv8n or YOLO11n from scratch) with a test split of ``--n-test`` images from
its own random stream, never used to select anything.

Arms, per target at equal wall-clock (each target's budget is what lets the recipe fine-tune ``--epoch-share`` of
the base's own training epochs, the usual advice after pruning, unless ``--target-s`` fixes it):

- ``recipe``: the smallest uniform channel ratio meeting the target (params: by pruning copies; a latency target: the
  smallest ratio of a 0.02 grid, by bisection, whose copy times at or under it on ONNX Runtime, interleaved with
  the base), group L2,
  channels rounded to 8, then ultralytics' time-budgeted fine-tune at its default lr 0.01 with all the time left
  (:func:`autoprune.deploy.finalize.final_finetune`). Everything is charged to its target.
- ``autoprune``: ``autoprune search`` with the demo spec's defaults, only model/data/imgsz, the budget (the targets'
  together), the targets and ``latency.runtime: onnxruntime`` changed, as a new user would.

After both arms, every delivered checkpoint is timed interleaved with the base on ONNX Runtime (batch 1, the
machine's 2 threads; 10 alternating rounds, the ratio of the rounds' fastest passes, its round spread recorded so
that load shows as noise). ``dominated``: the recipe's model is > 0.5 point better and not > 10% slower, or > 10%
faster and not > 0.5 point worse. The summary pairs the arms by task with t-intervals (scipy) per target and regime.
Each arm records the machine's load average while it ran (``load``: mean, max, samples), as the machine is shared:
an arm that ran busier than its rival got less compute in the same seconds, and the record shows it.

Results go to ``--out`` after every task; a re-run with the same ``--out`` continues the draw (its seeds, commit and
settings are read back). The draw is tied to the method's commit (``method_commit``: the last commit that changed
the package, the specs, the dependencies or this benchmark; documentation may be committed meanwhile): a checkout
whose method differs, or has uncommitted changes, is refused.

    python benchmarks/fresh_tasks.py --tasks 6 --out benchmarks/results/fresh_tasks_<draw>.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    METHOD_PATHS,
    LoadMonitor,
    commit,
    logger,
    machine,
    method_commit,
    setup_logging,
    write_json,
)

DEMO_SPEC = Path(__file__).resolve().parents[1] / "search_spaces" / "demo.yaml"
TARGETS = {"params-50": {"params": 0.5}, "params-70": {"params": 0.3}, "latency-50": {"latency_ratio": 0.5}}
MARGIN_MAP, MARGIN_LATENCY = 0.005, 0.10
REGIMES = ("converged", "early")  # the dominance test: half a point, a tenth of the latency


def draw_task(task_seed: int) -> dict[str, Any]:
    """The task a seed draws: synthetic-data settings, base model and image size."""
    rng = random.Random(task_seed)
    imgsz = rng.choice((128, 160))
    low = rng.randint(8, 20)
    return {"data": {"n_train": rng.choice((150, 200, 300)), "n_val": 60, "imgsz": imgsz, "min_size": low,
                     "max_size": low + rng.randint(8, 36), "max_objects": rng.randint(3, 12), "seed": task_seed,
                     "colour_by_class": rng.random() < 0.5, "distractors": rng.choice((0, 0, 3, 6)),
                     "grain": rng.choice((0.0, 0.0, 30.0, 60.0))},
            "model": rng.choice(("yolov8n.yaml", "yolo11n.yaml")), "imgsz": imgsz,
            "early_epochs": rng.randint(15, 40)}


def prepare_task(task: dict[str, Any], regime: str, workdir: Path, n_test: int, patience: int,
                 max_epochs: int) -> dict[str, Any]:
    """The task's data set (with its test split) and its base model, trained once in ``workdir``."""
    from autoprune.adapters import yolo
    from autoprune.demo.synthetic import SyntheticConfig, ensure_dataset

    cfg = SyntheticConfig(**task["data"])
    data = ensure_dataset(cfg, workdir / "data")
    test = ensure_dataset(SyntheticConfig(**{**task["data"], "n_train": 1, "n_val": 1, "n_test": n_test,
                                             "seed": cfg.seed + 4242}), workdir / "data")
    doc = yaml.safe_load(data.read_text())
    doc["test"] = str((test.parent / "images" / "test").resolve())  # ultralytics reads a relative one under path
    data_yaml = workdir / "task.yaml"
    data_yaml.write_text(yaml.safe_dump(doc, sort_keys=False))
    base = workdir / f"base-{regime}.pt"
    info_path = workdir / f"base-{regime}.json"
    if not base.exists():
        t0 = time.perf_counter()
        epochs = _train_base(task, regime, str(data_yaml), base, patience, max_epochs)
        info_path.write_text(json.dumps({"epochs": epochs, "train_s": time.perf_counter() - t0}))
    info = json.loads(info_path.read_text())
    model = yolo.load_model(base)
    return {"model": str(base), "data": str(data_yaml), "imgsz": task["imgsz"], "base_epochs": info["epochs"],
            "epoch_s": info["train_s"] / max(1, info["epochs"]),
            "base_val_map": yolo.validate(model, str(data_yaml), task["imgsz"]).map50_95,
            "base_test_map": yolo.validate(model, str(data_yaml), task["imgsz"], split="test").map50_95}


def _train_base(task: dict[str, Any], regime: str, data: str, out: Path, patience: int, max_epochs: int) -> int:
    """Train the base from scratch with ultralytics' own trainer (the demo baseline's settings): ``early`` for the
    task's drawn epochs, ``converged`` until val mAP stops rising (early stopping, best weights); its epochs."""
    from ultralytics import YOLO

    from autoprune.adapters import yolo  # configures ultralytics offline before it is imported

    converged = regime == "converged"
    with tempfile.TemporaryDirectory(prefix="fresh-base-") as tmp:
        model = YOLO(task["model"])
        model.add_callback("on_train_start", lambda tr: yolo.set_threads(2))
        model.train(data=data, imgsz=task["imgsz"], epochs=max_epochs if converged else task["early_epochs"],
                    patience=patience if converged else 0, val=converged, batch=16, workers=0, device="cpu",
                    lr0=0.01, lrf=0.1, nbs=64, warmup_epochs=1.0, mosaic=0.0, amp=False, plots=False,
                    seed=task["data"]["seed"], project=tmp, name="train", exist_ok=True, verbose=False)
        trainer = model.trainer
        weights = Path(trainer.best if converged and Path(trainer.best).exists() else trainer.last)
        shutil.copyfile(weights, out)
        return int(trainer.epoch) + 1


def _ratio_for_latency(model: Any, data: str, imgsz: int, bound: float) -> float:
    """The smallest uniform ratio (0.02 grid, bisection) whose pruned copy times at or under ``bound`` x the base on
    ONNX Runtime (interleaved): what a user tuning by hand for speed would settle on."""
    from autoprune.config.sections import LatencySettings, TrialSettings
    from autoprune.engine.uniform import uniform_ratio_for_latency

    settings = TrialSettings(model="", data=data, imgsz=imgsz, latency=LatencySettings(runtime="onnxruntime"))
    return uniform_ratio_for_latency(model, settings, bound)


def run_recipe(task: dict[str, Any], label: str, target_s: float, seed: int, out: Path) -> dict[str, Any]:
    from autoprune.adapters import yolo
    from autoprune.config.sections import TrialSettings
    from autoprune.deploy.finalize import FinalizeSettings, final_finetune
    from autoprune.engine import uniform
    from autoprune.model.budget import Target

    t0 = time.perf_counter()
    model, data, imgsz = task["model"], task["data"], task["imgsz"]
    limits = TARGETS[label]
    base = yolo.load_model(model)
    if "params" in limits:
        ratio, _ = uniform.uniform_ratio_for(base, TrialSettings(model=model, data=data, imgsz=imgsz, seed=seed),
                                             Target(tuple(limits.items())))
    else:
        ratio = _ratio_for_latency(base, data, imgsz, limits["latency_ratio"])
    pruned = yolo.load_model(model)
    uniform.uniform_prune(pruned, TrialSettings(model=model, data=data, imgsz=imgsz, seed=seed), ratio)
    rec = final_finetune(pruned, data, imgsz, FinalizeSettings(seconds=target_s - (time.perf_counter() - t0)),
                         lr=0.01, seed=seed)
    yolo.save_checkpoint(pruned, out)
    return {"test_map": rec["after"]["test"]["map50_95"], "val_map": rec["after"]["val"]["map50_95"],
            "params_kept": yolo.count_params(pruned) / yolo.count_params(base), "epochs": rec["epochs"],
            "wall_s": time.perf_counter() - t0, "policy": f"uniform {ratio:.2f} l2 round_to 8", "lr": 0.01,
            "checkpoint": str(out)}


def run_autoprune(task: dict[str, Any], budget_s: float, seed: int, workdir: Path) -> dict[str, Any]:
    from autoprune.config.spec import parse_spec
    from autoprune.deploy.deliver import run
    from autoprune.model import records

    started = time.perf_counter()
    raw = yaml.safe_load(DEMO_SPEC.read_text())
    spec_budget = raw.get("budget") if isinstance(raw.get("budget"), dict) else {}
    raw.update({"name": f"fresh-s{seed}", "model": task["model"], "data": task["data"], "imgsz": task["imgsz"],
                "seed": seed, "budget": {**spec_budget, "seconds": budget_s},
                "targets": list(TARGETS.values()),
                "latency": {**raw.get("latency", {}), "runtime": "onnxruntime"}})
    spec = parse_spec(raw, "fresh.yaml", studies_dir=workdir / "studies")
    res = run(spec, started)
    wall = time.perf_counter() - started
    deliveries = records.deliveries(res.search.study)
    by_trial = {t.number: t for t in res.search.study.get_trials(deepcopy=False)}
    out: dict[str, Any] = {}
    for label, target in zip(TARGETS, spec.targets):
        d = deliveries.get(target.label) or {}
        after = d.get("after") or {}
        t = by_trial.get(d["trial"]) if d.get("trial") is not None else None
        out[label] = {"test_map": after.get("test", {}).get("map50_95"),
                      "val_map": after.get("val", {}).get("map50_95"),
                      "params_kept": d.get("params_ratio"), "epochs": d.get("epochs"), "wall_s": wall / len(TARGETS),
                      "lr": d.get("lr"), "source": d.get("source"), "race": d.get("race"), "reason": d.get("reason"),
                      "continued_from": d.get("continued_from"),
                      "policy": records.trial(t).policy if t is not None else None, "ledger": res.ledger.to_dict(),
                      "checkpoint": str(Path(d["out_dir"]) / "pruned.pt") if d.get("out_dir") else None}
    return out


def time_deliveries(base: str, imgsz: int, arms: dict[str, dict[str, Any]]) -> None:
    """Each delivered checkpoint timed interleaved with the base on ONNX Runtime (in place: latency_ratio and its
    round spread)."""
    from autoprune.adapters import yolo
    from autoprune.config.sections import LatencySettings
    from autoprune.engine.latency import measure_interleaved

    timing = LatencySettings(runtime="onnxruntime", rounds=10, runs=100, warmup=10)
    reference = yolo.deploy_copy(yolo.load_model(base))
    for arm in arms.values():
        if arm.get("checkpoint"):
            il = measure_interleaved(yolo.deploy_copy(yolo.load_model(arm["checkpoint"])), reference, imgsz, "cpu",
                                     timing)
            arm.update(latency_ratio=il.ratio, latency_spread=il.ratio_spread, latency_unreliable=il.unreliable,
                       latency_ms=il.candidate.median_ms, base_latency_ms=il.reference.median_ms)


def dominated(auto: dict[str, Any], recipe: dict[str, Any]) -> bool | None:
    """Whether the recipe's model dominates autoprune's (None: one of them is missing)."""
    a, r = auto.get("test_map"), recipe.get("test_map")
    la, lr = auto.get("latency_ratio"), recipe.get("latency_ratio")
    if None in (a, r, la, lr):
        return None if r is not None else False
    return bool((r - a > MARGIN_MAP and (lr - la) / lr <= MARGIN_LATENCY)
                or ((la - lr) / la > MARGIN_LATENCY and a - r <= MARGIN_MAP))


def summarise(tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """Paired autoprune - recipe differences per target (and regime), with 95% t-intervals (scipy)."""
    from scipy import stats

    out: dict[str, Any] = {}
    for regime in ("all", "converged", "early"):
        rows = [t for t in tasks if t.get("done") and (regime == "all" or t["regime"] == regime)]
        for label in TARGETS:
            pairs = [(t["targets"][label]["autoprune"], t["targets"][label]["recipe"]) for t in rows]
            diffs = [a["test_map"] - r["test_map"] for a, r in pairs if a.get("test_map") is not None]
            speed = [a["latency_ratio"] / r["latency_ratio"] for a, r in pairs
                     if a.get("latency_ratio") and r.get("latency_ratio")]
            cell: dict[str, Any] = {"n": len(diffs), "dominated": sum(bool(dominated(a, r)) for a, r in pairs),
                                    "undelivered": sum(a.get("test_map") is None for a, _ in pairs)}
            if diffs:
                mean = statistics.fmean(diffs)
                cell.update(mean_test_map_diff=mean, wins=sum(d > MARGIN_MAP for d in diffs),
                            losses=sum(d < -MARGIN_MAP for d in diffs))
                if len(diffs) > 1:
                    lo, hi = stats.t.interval(0.95, len(diffs) - 1, loc=mean, scale=stats.sem(diffs))
                    cell["ci95"] = [float(lo), float(hi)]
            if speed:
                cell["latency_ratio_autoprune_over_recipe"] = statistics.fmean(speed)
            out[f"{regime}/{label}"] = cell
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--draw-seed", type=int, default=None, help="default: drawn from the OS now (recorded)")
    ap.add_argument("--tasks", type=int, default=6)
    ap.add_argument("--target-s", type=float, default=None, help="seconds per target (default: --epoch-share)")
    ap.add_argument("--epoch-share", type=float, default=0.4, help="of the base's epochs a target's budget buys")
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--patience", type=int, default=20)
    ap.add_argument("--max-epochs", type=int, default=300)
    ap.add_argument("--workdir", type=Path, default=Path("runs/fresh_tasks"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tiny", action="store_true", help="a smoke run: 16 training images at 64 px, 1-2 epoch bases")
    ap.add_argument("--first-regime", choices=("converged", "early"), default="converged",
                    help="the regime of the draw's first task (they alternate)")
    args = ap.parse_args(argv)
    if args.tasks < 1:
        print("--tasks: must be at least 1", file=sys.stderr)
        return 2
    setup_logging()
    result: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    method, clean = method_commit()
    if not clean and not args.tiny:
        print(f"the method ({', '.join(METHOD_PATHS)}) has uncommitted changes: a draw runs on one frozen commit",
              file=sys.stderr)
        return 2
    if result and result.get("method_commit", result.get("commit")) != method:
        print(f"--out: {args.out} was drawn on method commit {result.get('method_commit', result.get('commit'))}; "
              f"this checkout's is {method} (a draw is run on one frozen commit)", file=sys.stderr)
        return 2
    if not result:
        draw = args.draw_seed if args.draw_seed is not None else int.from_bytes(os.urandom(4), "big")
        seeds = random.Random(draw).sample(range(10**6, 10**7), args.tasks)
        result = {"benchmark": "fresh_tasks", "commit": commit(), "method_commit": method, "draw_seed": draw,
                  "machine": machine(),
                  "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                  "targets": TARGETS,
                  "tasks": [{"task_seed": s, "regime": REGIMES[(i + REGIMES.index(args.first_regime)) % 2],
                             "done": False} for i, s in enumerate(seeds)]}
        write_json(args.out, result)
    for entry in result["tasks"]:
        if entry.get("done"):
            continue
        seed, regime = entry["task_seed"], entry["regime"]
        workdir = args.workdir.resolve() / f"task-{seed}"  # data set YAMLs name absolute paths
        workdir.mkdir(parents=True, exist_ok=True)
        task = draw_task(seed)
        if args.tiny:
            task = {**task, "imgsz": 64, "early_epochs": 1, "data": {**task["data"], "n_train": 16, "n_val": 8,
                                                                      "imgsz": 64, "min_size": 16, "max_size": 30}}
        logger.info("task %d (%s): %s", seed, regime, task)
        prepared = prepare_task(task, regime, workdir, args.n_test, args.patience, args.max_epochs)
        target_s = args.target_s or args.epoch_share * prepared["base_epochs"] * prepared["epoch_s"] + 30.0
        recipe = {}
        for label in TARGETS:
            with LoadMonitor() as load:
                recipe[label] = run_recipe(prepared, label, target_s, seed, workdir / f"recipe-{label}.pt")
            recipe[label]["load"] = load.summary()
        shutil.rmtree(workdir / "autoprune", ignore_errors=True)
        with LoadMonitor() as load:
            auto = run_autoprune(prepared, target_s * len(TARGETS), seed, workdir / "autoprune")
        for arm in auto.values():
            arm["load"] = load.summary()  # the three targets' run together
        entry.update({"task": task, "base_epochs": prepared["base_epochs"], "base_val_map": prepared["base_val_map"],
                      "base_test_map": prepared["base_test_map"], "budget_s": target_s, "targets": {}})
        for label in TARGETS:
            arms = {"recipe": recipe[label], "autoprune": auto[label]}
            time_deliveries(prepared["model"], prepared["imgsz"], arms)
            entry["targets"][label] = {**arms, "dominated": dominated(auto[label], recipe[label])}
        entry["done"] = True
        result["summary"] = summarise(result["tasks"])
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
