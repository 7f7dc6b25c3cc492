"""Promotion by the latency lookup table vs by MACs, for a search that targets ONNX Runtime at 640.

Two arms per seed, run one after the other (their order alternates by seed), the same spec
(``search_spaces/deploy_ort.yaml``: the demo, latency timed on ONNX Runtime at 640, objectives
mAP50-95, params and the interleaved latency ratio) and the same trial budget; they differ only
in ``latency.lut``: ``lut`` ranks screened candidates by the table's latency estimate, ``macs`` by
MACs (autoprune's rule without the table). Warm start from earlier fronts is off, so no arm sees
another's results; the sensitivity scan is cached per base model and shared (the first run pays it).

Each arm's feasible front (selected on the val split with the latency measured during the search)
is then evaluated on what selection did not use: mAP50-95 on the test split and a fresh
interleaved ORT latency ratio at 640. Reported per arm and seed: the hypervolume of (test mAP,
fresh latency ratio) normalised by the base (reference 0.5x the base's mAP, ratio 1.1), the same
with params (3-D), the lowest fresh latency ratio within 1 point of the base's test mAP, and the
search's wall time; then the paired lut / macs ratio of the means with a bootstrap interval.

    python benchmarks/lut_promotion.py --seeds 0 1 2 --trials 8 --out benchmarks/results/lut_promotion.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import logger, machine, setup_logging, write_json  # noqa: E402

SPEC = Path(__file__).resolve().parents[1] / "search_spaces" / "deploy_ort.yaml"
ARMS = ("macs", "lut")


def arm_spec(arm: str, seed: int, trials: int, imgsz: int | None, deploy_imgsz: int | None,
             scan: bool = True) -> dict[str, Any]:
    raw = yaml.safe_load(SPEC.read_text())
    raw.update(name=f"{arm}-s{seed}", seed=seed, trials=trials,
               warm_start={**raw.get("warm_start", {}), "from_fronts": False})
    raw["latency"] = {**raw["latency"], "lut": arm == "lut"}
    if imgsz:
        raw["imgsz"] = imgsz
    if deploy_imgsz:
        raw["latency"]["imgsz"] = deploy_imgsz
    if not scan:
        raw["sensitivity"] = {**raw.get("sensitivity", {}), "probes": 0}
    return raw


def evaluate(study: Any, runs: int, rounds: int) -> dict[str, Any]:
    """Test-split mAP and a fresh ORT latency ratio of each feasible front member; hypervolumes."""
    from autoprune.adapters import yolo
    from autoprune.config.sections import LatencySettings
    from autoprune.engine.latency import measure_interleaved
    from autoprune.model import pareto, records
    from autoprune.model.constraints import feasible

    base = records.baseline(study)
    lat = base["latency"]
    data, imgsz = base["data"], int(base["imgsz"])
    base_model = yolo.load_model(base["model"])
    base_test = yolo.validate(base_model, data, imgsz, split="test").map50_95
    reference = yolo.deploy_copy(base_model)
    members = []
    for t in study.best_trials:
        if not feasible(t.constraints):
            continue
        rec = records.trial(t)
        model = yolo.load_model(rec.checkpoint)
        test = yolo.validate(model, data, imgsz, split="test").map50_95
        il = measure_interleaved(yolo.deploy_copy(model), reference, int(lat["imgsz"]),
                                 timing=LatencySettings(warmup=2, runs=runs, rounds=rounds, threads=int(lat["threads"]),
                                                        runtime=str(lat["runtime"]), estimator="median", retries=0))
        members.append({"trial": t.number, "test_map50_95": test, "val_map50_95": rec.metrics["map50_95"],
                        "params": rec.metrics["params"], "search_latency_ratio": rec.metrics.get("latency_ratio"),
                        "latency_ratio": il.ratio, "latency_lut_ms": rec.metrics.get("latency_lut_ms")})
    two = [[-m["test_map50_95"] / base_test, m["latency_ratio"]] for m in members]
    three = [[-m["test_map50_95"] / base_test, m["params"] / base["params"], m["latency_ratio"]] for m in members]
    near = [m["latency_ratio"] for m in members if m["test_map50_95"] >= base_test - 0.01]
    return {"hv_latency": pareto.hypervolume(two, [-0.5, pareto.REFERENCE_MARGIN]),
            "hv_params_latency": pareto.hypervolume(three, [-0.5, pareto.REFERENCE_MARGIN, pareto.REFERENCE_MARGIN]),
            "best_latency_ratio_within_1pt": min(near) if near else None, "front": members,
            "base_test_map50_95": base_test}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--imgsz", type=int, help="training/validation size (default: the spec's)")
    p.add_argument("--deploy-imgsz", type=int, help="timed size (default: the spec's latency.imgsz)")
    p.add_argument("--runs", type=int, default=20, help="timed passes per model in the fresh latency ratio")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--no-scan", action="store_true", help="no sensitivity scan (a quick check of the script)")
    p.add_argument("--workdir", type=Path)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/lut_promotion.json"))
    args = p.parse_args(argv)
    setup_logging()

    from autoprune.config.spec import parse_spec
    from autoprune.search.run import run_search

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="autoprune-lut-"))
    per_arm: dict[str, dict[str, list[Any]]] = {a: {"hv_latency": [], "hv_params_latency": [], "best": [],
                                                     "wall_s": [], "runs": []} for a in ARMS}
    for i, seed in enumerate(args.seeds):
        for arm in ARMS if i % 2 == 0 else ARMS[::-1]:
            raw = arm_spec(arm, seed, args.trials, args.imgsz, args.deploy_imgsz, scan=not args.no_scan)
            spec = parse_spec(raw, f"{raw['name']}.yaml", studies_dir=workdir / "studies")
            t0 = time.perf_counter()
            outcome = run_search(spec)
            wall = time.perf_counter() - t0
            ev = evaluate(outcome.study, args.runs, args.rounds)
            rec = per_arm[arm]
            rec["hv_latency"].append(ev["hv_latency"])
            rec["hv_params_latency"].append(ev["hv_params_latency"])
            rec["best"].append(ev["best_latency_ratio_within_1pt"])
            rec["wall_s"].append(wall)
            rec["runs"].append({"seed": seed, **ev})
            logger.info("seed %d, %s: HV(test mAP, latency) %.4f, HV(+params) %.4f, best ratio within 1 pt %s, "
                        "%.0f s", seed, arm, ev["hv_latency"], ev["hv_params_latency"],
                        ev["best_latency_ratio_within_1pt"], wall)
    from search_efficiency import bootstrap_ratio

    lut, macs = per_arm["lut"], per_arm["macs"]
    summary = {key: {**bootstrap_ratio(lut[key], macs[key]),
                     "wins": sum(a > b for a, b in zip(lut[key], macs[key]))}
               for key in ("hv_latency", "hv_params_latency")}
    result = {"machine": machine(), "spec": str(SPEC.name), "seeds": args.seeds, "trials": args.trials,
              "arms": per_arm, "summary": summary,
              "mean_wall_s": {a: statistics.fmean(per_arm[a]["wall_s"]) for a in ARMS}}
    write_json(args.out, result)
    for key, s in summary.items():
        print(f"lut / macs {key}: {s['ratio']:.3f} [{s['lo95']:.3f}, {s['hi95']:.3f}], lut ahead on {s['wins']} of "
              f"{len(args.seeds)} seeds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
