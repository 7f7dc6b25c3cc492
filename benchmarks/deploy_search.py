"""The demo searched for its deployment: pruning x precision x input size (issue 21), and what its front holds.

    python benchmarks/deploy_search.py                     # runs search_spaces/deploy_int8.yaml (~10 min here)
    python benchmarks/deploy_search.py --studies DIR       # only reads a study that spec already made in DIR
    python benchmarks/deploy_search.py --studies DIR --scratch-seconds 573   # + the smaller-architecture reference

Writes ``results/deploy_int8_search.json``: every completed trial (its precision and size, FP32 mAP at the training
size, deployed mAP measured on its exported file, latency in ms and as a ratio to the base exported alike, timed
interleaved, and whether that timing stayed spread), the front, and the reference points (the base at each searched
deployment, timed one after another at the start). ``latency_ms`` compares across deployments but is not
interleaved across them; ``latency_ratio`` is (the base at the trial's own deployment, interleaved).

With ``--scratch-seconds S`` a smaller architecture is trained from scratch for S seconds (the search's own wall
time: equal compute) with the demo baseline's recipe: the next narrower YOLOv8 (width 0.125 instead of n's 0.25,
the same depth; 0.91 M parameters, -70%); it is measured at every deployment the search used, like the base, and
added to the study's reference points (so ``autoprune front``, the report and the dashboard note show it).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import commit, complete, machine, setup_logging, write_json  # noqa: E402
from autoprune.config.spec import parse_spec  # noqa: E402
from autoprune.model import records  # noqa: E402
from autoprune.search.run import run_search  # noqa: E402

SPEC = Path(__file__).resolve().parent.parent / "search_spaces" / "deploy_int8.yaml"


def summarise(study: optuna.Study) -> dict[str, Any]:
    front = {t.number for t in study.best_trials}
    trials = []
    for t in complete(study):
        rec = records.trial(t)
        p, m = rec.policy or {}, rec.metrics
        trials.append({"trial": t.number, "on_front": t.number in front, "precision": p.get("precision"),
                       "imgsz": p.get("deploy_imgsz"), "params": m.get("params"), "map50_95": m.get("map50_95"),
                       "deployed_map50_95": m.get("deployed_map50_95"), "latency_ms": m.get("latency_ms"),
                       "latency_ratio_vs_base_alike": m.get("latency_ratio"),
                       "unreliable": bool(rec.latency.get("unreliable"))})
    base = records.baseline(study)
    return {"baseline": {k: base.get(k) for k in ("map50_95", "deployed_map50_95", "latency_ms", "params")},
            "references": records.references(study), "trials": trials}


def narrow_yaml(folder: Path) -> Path:
    """YOLOv8 at width 0.125 (the next narrower than n's 0.25), depth 0.33: a model YAML in ``folder``."""
    import ultralytics

    d = yaml.safe_load((Path(ultralytics.__file__).parent / "cfg/models/v8/yolov8.yaml").read_text())
    d["scales"], d["scale"] = {"t": [0.33, 0.125, 1024]}, "t"
    path = folder / "yolov8t.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def scratch_references(study: optuna.Study, raw: dict[str, Any], seconds: float, studies: Path) -> dict[str, Any]:
    """Train the narrower model from scratch for ``seconds`` and add it at each searched deployment."""
    from autoprune.adapters import yolo
    from autoprune.search.inputs import prepare_inputs
    from autoprune.search.strategy.references import add_reference, deployments, measure_reference

    spec = prepare_inputs(parse_spec(raw, SPEC.name, studies_dir=studies)).spec
    folder = Path(tempfile.mkdtemp(prefix="autoprune-scratch-"))
    model = yolo.load_model(narrow_yaml(folder), nc=yolo.model_nc(yolo.load_model(spec.model)))
    cfg = yolo.FinetuneConfig(data=spec.data, imgsz=spec.imgsz, epochs=1000, seconds=seconds, lr=0.01, ema=True,
                               warmup_epochs=1.0, threads=spec.train_threads, seed=spec.seed, batch=16, nbs=64,
                               lrf=0.1)  # the demo baseline's recipe (autoprune.demo.baseline)
    t0 = time.perf_counter()
    stats = yolo.finetune(model, cfg, folder / "train")
    trained = yolo.load_model(folder / "train" / "weights" / "last.pt")
    wall = time.perf_counter() - t0
    val = yolo.validate(trained, spec.data, spec.imgsz, threads=spec.train_threads)
    base = records.baseline(study)
    out = []
    for precision, imgsz in deployments(spec):
        ref = measure_reference(trained, spec, precision, imgsz, f"scratch yolov8-w0.125 {precision} @{imgsz}", base)
        ref.update(map50_95=val.map50_95, map50=val.map50, trained_s=round(wall, 1), epochs=stats.epochs)
        add_reference(study, ref)
        out.append(ref)
    return {"seconds": seconds, "wall_s": wall, "epochs": stats.epochs, "map50_95": val.map50_95, "references": out}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=Path, default=None, help="read the study from this studies folder, do not run")
    ap.add_argument("--scratch-seconds", type=float, default=None,
                    help="train the narrower model from scratch this long and add it as a reference point")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "deploy_int8_search.json")
    args = ap.parse_args(argv)
    setup_logging()
    raw = yaml.safe_load(SPEC.read_text())
    wall = None
    studies = args.studies or Path(tempfile.mkdtemp(prefix="autoprune-deploy-")) / "studies"
    if args.studies is None:
        t0 = time.perf_counter()
        study = run_search(parse_spec(raw, SPEC.name, studies_dir=studies)).study
        wall = time.perf_counter() - t0
    else:
        url = f"sqlite:///{args.studies.resolve() / 'autoprune.db'}"
        study = optuna.load_study(study_name=raw["name"], storage=url)
    scratch = scratch_references(study, raw, args.scratch_seconds, studies) if args.scratch_seconds else None
    res = {"commit": commit(), "machine": machine(), "spec": SPEC.name, "wall_s": wall, **summarise(study),
           "scratch": scratch}
    write_json(args.out, res)
    for t in res["trials"]:
        print(t)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
