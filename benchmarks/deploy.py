"""Deploy what users run: each pruned member and the base on ONNX Runtime and OpenVINO (when installed), each in
FP32 and INT8, and on eager torch FP32, timed together and validated on the exported file itself.

Members: the demo base pruned uniformly (group L2, channels rounded to 8; real channel removal) at ``--ratios``,
each fine-tuned ``--epochs`` epochs at the demo's training size with the final fine-tune every delivered model gets
(autoprune.deploy.finalize.final_finetune), i.e. finalized, not proxies; a study's finalized deliveries can be
added with ``--model``. For every model and runtime/precision: the file exported by ultralytics (ONNX, INT8 by
ONNX Runtime's static quantization; OpenVINO, INT8 by ultralytics' exporter with NNCF; both calibrated on 64
training images, head decoding in floating point), its mAP50-95 measured on that file through ultralytics'
validator (val split) at ``--val-imgsz``, and its latency: all the runners of one batch size
timed in interleaved rounds (every model in every round, the order rotating), each round's fastest pass per model,
so a ratio is a median over rounds of two passes timed side by side. Ratios only; the absolute ms are recorded for
reference.

    python benchmarks/deploy.py --imgsz 640 --batch 1 8 --out benchmarks/results/deploy_demo.json
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import commit, logger, machine, setup_logging, write_json  # noqa: E402

SETUPS = (("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"),
          *((("openvino", "fp32"), ("openvino", "int8")) if importlib.util.find_spec("openvino") else ()))


def members(ratios: list[float], epochs: int, workdir: Path, extra: list[str]) -> tuple[str, str, list[dict]]:
    """(base checkpoint, data set, [{label, checkpoint, params_ratio}]) with each member finalized."""
    from autoprune.adapters import yolo
    from autoprune.config.spec import TrialSettings
    from autoprune.demo.baseline import resolve_demo_model
    from autoprune.demo.synthetic import ensure_dataset
    from autoprune.deploy.finalize import FinalizeSettings, final_finetune
    from autoprune.engine.uniform import RECIPE_CRITERION, RECIPE_ROUND_TO, uniform_prune

    base, data = str(resolve_demo_model()), str(ensure_dataset())
    base_params = yolo.count_params(yolo.load_model(base))
    settings = TrialSettings(model=base, data=data, imgsz=160)
    out = []
    for r in ratios:
        model = yolo.load_model(base)
        uniform_prune(model, settings, r, RECIPE_CRITERION, RECIPE_ROUND_TO)
        rec = final_finetune(model, data, 160, FinalizeSettings(epochs=epochs), lr=0.01, seed=0)
        path = yolo.save_checkpoint(model.cpu(), workdir / f"uniform{r:.2f}.pt")
        out.append({"label": f"uniform {r:.2f} + {epochs} epochs", "checkpoint": str(path),
                    "params_ratio": yolo.count_params(model) / base_params,
                    "finetune_val_map50_95_at_160": rec["after"]["val"]["map50_95"]})
    for p in extra:
        name = Path(p).parent.name if Path(p).name == "pruned.pt" else Path(p).stem  # a delivery: its folder
        out.append({"label": name, "checkpoint": p,
                    "params_ratio": yolo.count_params(yolo.load_model(p)) / base_params})
    return base, data, out


def runners(models: dict[str, Any], imgsz: int, batch: int, threads: int, data: str) -> dict[tuple[str, str, str], Any]:
    from autoprune.engine.runtimes import RunSpec, build_runner

    out = {}
    for name, model in models.items():
        for runtime, precision in SETUPS:
            rs = RunSpec("cpu", imgsz, batch, False, threads, int8=precision == "int8", calibration=data)
            out[(name, runtime, precision)] = build_runner(model, runtime, rs)
    return out


def interleaved(runs: dict[Any, Any], rounds: int, per_round: int, warmup: int) -> dict[Any, list[float]]:
    """Per runner, its fastest pass in each round; every runner in every round, the order rotating."""
    keys = list(runs)
    for k in keys:
        for _ in range(warmup):
            runs[k]()
    best: dict[Any, list[float]] = {k: [] for k in keys}
    for i in range(rounds):
        order = keys[i % len(keys):] + keys[:i % len(keys)]
        for k in order:
            ts = []
            for _ in range(per_round):
                t0 = time.perf_counter()
                runs[k]()
                ts.append((time.perf_counter() - t0) * 1000.0)
            best[k].append(min(ts))
    return best


def ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def deployed_map(model: Any, runtime: str, precision: str, imgsz: int, data: str) -> float:
    from autoprune.adapters import yolo
    from autoprune.engine.runtimes import RunSpec, export_deployed

    if runtime == "torch":
        return yolo.validate(model, data, imgsz, batch=8).map50_95
    path = export_deployed(model, RunSpec("cpu", imgsz, 1, False, 2, int8=precision == "int8", calibration=data),
                           runtime)
    try:
        return yolo.validate_exported(path, data, imgsz, "detect")[1]
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--val-imgsz", type=int, default=None,
                   help="size the exported files are validated at (default --imgsz; the demo model was trained at "
                        "160 on 160-px images and finds almost nothing at 640)")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    p.add_argument("--epochs", type=int, default=5, help="final fine-tune epochs of each uniform member")
    p.add_argument("--model", action="append", default=[], help="a finalized checkpoint to add (repeatable)")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--per-round", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "deploy_demo.json")
    args = p.parse_args(argv)
    setup_logging()
    from autoprune.adapters import yolo

    work = Path(tempfile.mkdtemp(prefix="autoprune-deploy-"))
    base_path, data, found = members(args.ratios, args.epochs, work, args.model)
    models = {"base": yolo.deploy_copy(yolo.load_model(base_path))}
    models.update({m["label"]: yolo.deploy_copy(yolo.load_model(m["checkpoint"])) for m in found})
    val_imgsz = args.val_imgsz or args.imgsz
    maps = {(n, rt, pr): deployed_map(model, rt, pr, val_imgsz, data) for n, model in models.items()
            for rt, pr in SETUPS}
    logger.info("deployed mAP50-95: %s", {f"{k[0]}/{k[1]}/{k[2]}": round(v, 4) for k, v in maps.items()})
    res: dict[str, Any] = {"commit": commit(), "machine": machine(), "imgsz": args.imgsz, "val_imgsz": val_imgsz,
                           "batch": args.batch,
                           "threads": args.threads, "base_map50_95": maps[("base", "onnxruntime", "fp32")],
                           "timing": {"rounds": args.rounds, "per_round": args.per_round, "statistic":
                                      "median over rounds of the ratio of each round's fastest pass"},
                           "runtimes": {}}
    for batch in args.batch:
        best = interleaved(runners(models, args.imgsz, batch, args.threads, data), args.rounds, args.per_round, 3)
        for rt, pr in SETUPS:
            key = f"{rt}-{pr}" if rt != "torch" else "torch"
            entry = res["runtimes"].setdefault(key, {"members": []})
            entry.setdefault("base_map50_95", maps[("base", rt, pr)])
            entry.setdefault("base_int8_map50_95", maps[("base", "onnxruntime" if rt == "torch" else rt, "int8")])
            fp32_base = best[("base", rt, "fp32")]  # each runtime against its own bases; torch against ORT INT8
            int8_base = best[("base", "onnxruntime" if rt == "torch" else rt, "int8")]
            for m in found:
                mine = best[(m["label"], rt, pr)]
                entry["members"].append({
                    "trial": m["label"], "precision": pr, "imgsz": args.imgsz, "batch": batch,
                    "params_ratio": m["params_ratio"], "map50_95": maps[(m["label"], rt, pr)],
                    "map_change_vs_fp32_base": maps[(m["label"], rt, pr)] - maps[("base", rt, "fp32")],
                    "speedup_vs_fp32_base": 1.0 / ratio(mine, fp32_base),
                    "speedup_vs_int8_base": 1.0 / ratio(mine, int8_base),
                    "speedup_vs_ort_fp32_base": 1.0 / ratio(mine, best[("base", "onnxruntime", "fp32")]),
                    "ms": statistics.median(mine)})
            if pr == "int8":
                entry.setdefault("base_int8_speedup_vs_fp32_base", {})[str(batch)] = 1.0 / ratio(int8_base,
                                                                                               best[("base", rt,
                                                                                                     "fp32")])
        logger.info("batch %d timed", batch)
    write_json(args.out, res)
    for key, entry in res["runtimes"].items():
        for m in entry["members"]:
            print(f"{key} batch {m['batch']} {m['trial']}: mAP50-95 {m['map50_95']:.4f} "
                  f"({m['map_change_vs_fp32_base'] * 100:+.2f} pts vs FP32 base), x{m['speedup_vs_fp32_base']:.2f} "
                  f"vs FP32 base, x{m['speedup_vs_int8_base']:.2f} vs INT8 base")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
