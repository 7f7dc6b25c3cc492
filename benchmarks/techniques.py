"""Training-side techniques at equal fine-tune budget: how far can channel pruning cut within 1 point of mAP?

Issue 14. Four arms prune the same base with the same uniform channel ratios and fine-tune every pruned model
with the same budget (``--epochs`` epochs, lr 0.01 cosine, EMA), through autoprune's own trial pipeline:

- ``channel``: channel pruning alone (group L2).
- ``sparse``: network slimming: the base is first sparse-trained with an L1 penalty on BN scales
  (``--l1``, ``finetune.sparse_epochs`` epochs, trained once and cached, its cost reported apart), and
  channels are ranked by BN scale.
- ``kd``: channel pruning, fine-tuned with knowledge distillation from the unpruned base (ultralytics'
  ``distill_model``).
- ``layer``: layer pruning (``--depth`` of each block's repeated bottlenecks removed) plus channel pruning.

Every pruned model is validated on the data set's test split (drawn from its own stream, never used to select);
the result per arm and seed is the largest parameter cut whose test mAP50-95 is within ``--tolerance`` (1 point)
of the base's. Raw rows per seed go to ``results/techniques_<task>.json``.

    python benchmarks/techniques.py --task demo --seeds 0 1 --ratios 0.5 0.6 0.7 0.8 --epochs 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _common import logger, machine, setup_logging, write_json  # noqa: E402
from search_efficiency import task_inputs  # noqa: E402

ARMS = ("channel", "sparse", "kd", "layer")


def _policy(arm: str, ratio: float, layers: list[Any], epochs: int, l1: float, depth: float) -> Any:
    from autoprune.model.policy import Policy

    knobs: dict[str, Any] = {"sparse": {"sparsity": l1}, "kd": {"distill": True}, "layer": {"depth": depth}}.get(
        arm, {})
    return Policy(ratios=tuple((layer.name, ratio) for layer in layers),
                  criterion="bn_scale" if arm == "sparse" else "l2", iterations=1, lr=0.01, ema=True, epochs=epochs,
                  round_to=8, schedule="cosine", **knobs)


def best_cut(rows: list[dict[str, Any]], base_test: float, tolerance: float) -> float:
    """The largest parameter cut (share of the base's parameters removed) within ``tolerance`` of the base's mAP."""
    ok = [r["params_cut"] for r in rows if r["ok"] and r["test_map50_95"] >= base_test - tolerance]
    return max(ok, default=0.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=["demo", "shapes11"], default="demo")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    p.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8])
    p.add_argument("--epochs", type=int, default=3, help="fine-tune epochs of every pruned model (equal budget)")
    p.add_argument("--l1", type=float, default=0.5, help="sparse arm: BN-scale L1 strength (shrink lr x l1 a step)")
    p.add_argument("--sparse-epochs", type=int, default=5, help="sparse arm: epochs of sparse training of the base")
    p.add_argument("--depth", type=float, default=0.5, help="layer arm: share of repeated bottlenecks removed")
    p.add_argument("--tolerance", type=float, default=0.01, help="mAP50-95 below the base's that still counts")
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--workdir", type=Path)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    setup_logging()
    from autoprune.adapters import pruning, yolo
    from autoprune.config.spec import parse_spec
    from autoprune.engine.pipeline import TRACE_IMGSZ
    from autoprune.engine.trial import run_trial_safely
    from autoprune.model.space import Layer
    from autoprune.search.inputs import prepare_inputs

    out = args.out or Path(__file__).parent / "results" / f"techniques_{args.task}.json"
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="autoprune-techniques-"))
    model_path, data_path = task_inputs(args.task, workdir, args.imgsz)
    raw = {"name": "techniques", "model": model_path, "data": data_path, "imgsz": args.imgsz,
           "finetune": {"batch": 16, "sparse_epochs": args.sparse_epochs},
           "latency": {"warmup": 1, "runs": 5, "rounds": 1, "interleave": False}}
    spec = prepare_inputs(parse_spec(raw, "techniques.yaml", studies_dir=workdir / "studies")).spec
    base = yolo.load_model(spec.model)
    layers = [Layer(q.name, q.channels, yolo.layer_stage(base, q.name))
              for q in pruning.prunable_layers(base, TRACE_IMGSZ)]
    base_params = yolo.count_params(base)
    base_test = yolo.validate(base, spec.data, spec.imgsz, split="test").map50_95
    result: dict[str, Any] = {
        "task": args.task, "seeds": args.seeds, "ratios": args.ratios, "epochs": args.epochs, "l1": args.l1,
        "sparse_epochs": args.sparse_epochs, "depth": args.depth, "tolerance": args.tolerance, "imgsz": args.imgsz,
        "machine": machine(), "base_params": base_params, "base_test_map50_95": base_test,
        "arms": {a: {"best_cut": [], "rows": []} for a in args.arms}}
    for seed in args.seeds:
        settings = spec.trial_settings.replace(seed=seed)
        for arm in args.arms:
            rows = []
            for ratio in args.ratios:
                policy = _policy(arm, ratio, layers, args.epochs, args.l1, args.depth)
                t0 = time.perf_counter()
                res = run_trial_safely(settings, policy, layers, workdir / "trials" / f"{arm}-s{seed}-r{ratio}")
                row: dict[str, Any] = {"seed": seed, "ratio": ratio, "ok": res.ok, "reason": res.reason,
                                       "wall_s": round(time.perf_counter() - t0, 1)}
                if res.ok:
                    ckpt = yolo.load_model(res.attrs["checkpoint"])
                    row.update(params=res.metrics["params"], params_cut=1 - res.metrics["params"] / base_params,
                               val_map50_95=res.metrics["map50_95"],
                               test_map50_95=yolo.validate(ckpt, spec.data, spec.imgsz, split="test").map50_95,
                               kept=(res.attrs.get("finetune") or {}).get("kept"),  # finetuned | adaptive_bn
                               sparse=res.attrs.get("sparse"))
                rows.append(row)
                logger.info("%s seed %d %s ratio %.2f: %s", args.task, seed, arm, ratio,
                            f"params -{100 * row['params_cut']:.1f}%, test mAP50-95 {row['test_map50_95']:.3f} "
                            f"(base {base_test:.3f})" if res.ok else f"FAILED {res.reason}")
            rec = result["arms"][arm]
            rec["rows"].extend(rows)
            rec["best_cut"].append(best_cut(rows, base_test, args.tolerance))
            write_json(out, result)  # after every arm: a partial run still leaves its numbers
    for arm, rec in result["arms"].items():
        cuts = ", ".join(f"{100 * c:.1f}%" for c in rec["best_cut"])
        print(f"{arm}: largest params cut within {args.tolerance:.2f} mAP50-95 of the base, per seed: {cuts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
