"""The demo searched for its deployment: pruning x precision x input size (issue 21), and what its front holds.

    python benchmarks/deploy_search.py                     # runs search_spaces/deploy_int8.yaml (~10 min here)
    python benchmarks/deploy_search.py --studies DIR       # only reads a study that spec already made in DIR

Writes ``results/deploy_int8_search.json``: every completed trial (its precision and size, FP32 mAP at the training
size, deployed mAP measured on its exported file, latency in ms and as a ratio to the base exported alike, timed
interleaved, and whether that timing stayed spread), the front, and the reference points (the base at each searched
deployment, timed one after another at the start). ``latency_ms`` compares across deployments but is not
interleaved across them; ``latency_ratio`` is (the base at the trial's own deployment, interleaved).
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=Path, default=None, help="read the study from this studies folder, do not run")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "deploy_int8_search.json")
    args = ap.parse_args(argv)
    setup_logging()
    raw = yaml.safe_load(SPEC.read_text())
    wall = None
    if args.studies is None:
        studies = Path(tempfile.mkdtemp(prefix="autoprune-deploy-")) / "studies"
        t0 = time.perf_counter()
        study = run_search(parse_spec(raw, SPEC.name, studies_dir=studies)).study
        wall = time.perf_counter() - t0
    else:
        url = f"sqlite:///{args.studies.resolve() / 'autoprune.db'}"
        study = optuna.load_study(study_name=raw["name"], storage=url)
    res = {"commit": commit(), "machine": machine(), "spec": SPEC.name, "wall_s": wall, **summarise(study)}
    write_json(args.out, res)
    for t in res["trials"]:
        print(t)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
