"""Which trial should a target deliver? Replays a ``search_vs_recipe.py`` run's autoprune arm with another winner rule.

A budgeted run delivers, per target, the trial with the best short-fine-tune proxy (val mAP50-95) among those that
meet it. Proxies of trials a few tenths of a point apart are within their noise, and the best of them is often the
most pruned (e.g. -55% for a -50% target), while the final fine-tune recovers more of a larger model. The rule
``tolerance`` (:func:`autoprune.search.strategy.targets.trial_for_target`) takes, of the trials within ``tolerance``
of the best proxy, the one with the most parameters. For each (seed, target) where it picks another trial, this
finalizes that trial with ``autoprune finalize`` for the delivered model's epochs and learning rate, and, as a control
for the noise of the replay itself, the delivered trial again with the same settings. Reported: test mAP50-95 of each
(the test split is read here only to report, as in the benchmark), and the paired difference alternative - control.

    python benchmarks/winner_replay.py --workdir /tmp/bench-d11c \\
        --results benchmarks/results/search_vs_recipe_dense11_base400.json --tolerance 0.005
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import commit, logger, machine, setup_logging, write_json  # noqa: E402


def _finalize(studies: Path, study: str, trial: int, epochs: int, lr: float, out: Path) -> dict[str, Any]:
    from autoprune.model.document import load_policy_file

    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "autoprune", "finalize", "--storage", f"sqlite:///{studies / 'autoprune.db'}",
           "--studies-dir", str(studies), "--study", study, "--trial", str(trial), "--epochs", str(epochs),
           "--lr", str(lr), "--out", str(out), "--no-onnx", "--force"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"finalize of trial {trial} failed: {r.stderr[-1500:]}")
    fin = load_policy_file(out / "policy.yaml").finalize or {}
    tuned = fin.get("finetuned") or fin["after"]
    return {"trial": trial, "test_map": fin["after"]["test"]["map50_95"], "val_map": fin["after"]["val"]["map50_95"],
            "start_test_map": fin["before"]["test"]["map50_95"], "start_val_map": fin["before"]["val"]["map50_95"],
            "finetuned_test_map": tuned["test"]["map50_95"], "finetuned_val_map": tuned["val"]["map50_95"],
            "kept": fin.get("kept", "fine-tuned"), "epochs": fin["epochs"], "train_s": fin.get("train_s"),
            "wall_s": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, required=True, help="the search_vs_recipe.py run's --workdir")
    p.add_argument("--results", type=Path, required=True, help="its results JSON")
    p.add_argument("--arm", default="autoprune")
    p.add_argument("--tolerance", type=float, default=0.005, help="val mAP50-95 below the best proxy still taken")
    p.add_argument("--lr", type=float, default=0.01, help="the final fine-tune's lr (budget.final_lr)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    setup_logging()
    import optuna

    from autoprune.model import records
    from autoprune.model.budget import Target
    from autoprune.search.strategy.targets import trial_for_target

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    bench = json.loads(args.results.read_text())
    out_path = args.out or args.results.with_name(args.results.stem.replace("search_vs_recipe", "winner_replay")
                                                  + ".json")
    res: dict[str, Any] = {"commit": commit(), "machine": machine(), "source": str(args.results.name),
                           "source_commit": bench.get("commit"), "arm": args.arm, "tolerance": args.tolerance,
                           "rows": []}
    for seed in bench["arms"][args.arm]["seeds"]:
        studies = args.workdir / f"{args.arm}-{seed}" / "studies"
        name = f"{args.arm}-s{seed}"
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{studies / 'autoprune.db'}")
        base = records.baseline_metrics(study)
        for label, d in sorted(records.deliveries(study).items()):
            if d.get("trial") is None:
                continue
            target = Target(tuple(sorted(d["target"].items())))
            alt = trial_for_target(study, target, args.tolerance)
            row: dict[str, Any] = {"seed": seed, "target": label, "delivered": d["trial"],
                                   "delivered_test_map": d["after"]["test"]["map50_95"], "epochs": d["epochs"],
                                   "alternative": alt.number if alt else None}
            if alt is not None and alt.number != d["trial"]:
                m = {t.number: records.trial(t).metrics for t in study.get_trials(deepcopy=False)}
                row["proxy"] = {"delivered": m[d["trial"]]["map50_95"], "alternative": m[alt.number]["map50_95"]}
                row["params_ratio"] = {"delivered": m[d["trial"]]["params"] / base["params"],
                                       "alternative": m[alt.number]["params"] / base["params"]}
                where = args.workdir / "replay" / f"{name}-{label}"
                row["alt"] = _finalize(studies, name, alt.number, d["epochs"], args.lr, where / "alt")
                row["control"] = _finalize(studies, name, d["trial"], d["epochs"], args.lr, where / "control")
                logger.info("seed %d %s: delivered trial %d (test %.4f, replayed %.4f) vs trial %d: %.4f", seed,
                            label, d["trial"], row["delivered_test_map"], row["control"]["test_map"], alt.number,
                            row["alt"]["test_map"])
            res["rows"].append(row)
            write_json(out_path, res)
    diffs = [r["alt"]["test_map"] - r["control"]["test_map"] for r in res["rows"] if "alt" in r]
    noise = [r["control"]["test_map"] - r["delivered_test_map"] for r in res["rows"] if "alt" in r]
    res["summary"] = {"differs": len(diffs), "of": len(res["rows"]),
                      "alt_minus_control_mean": statistics.fmean(diffs) if diffs else None,
                      "alt_wins": sum(x > 0 for x in diffs),
                      "control_minus_delivered_mean_abs": statistics.fmean(map(abs, noise)) if noise else None}
    write_json(out_path, res)
    print(json.dumps(res["summary"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
