"""Policy or fine-tune length? Replays a ``search_vs_recipe.py`` run's search arm at the recipe's epochs.

At equal total time a search arm spends part of its budget searching (scan, screens), so its final fine-tunes are
shorter than the recipe's. Where it loses, this tells the two causes apart: for each (seed, target) it finalizes the
search arm's delivered trial with ``autoprune finalize`` for the *recipe's* epoch count of that seed and target (the
same final fine-tune recipe and learning rate), and reports its test mAP50-95 beside the recipe's. The replayed arm
is not charged its search here, so this is not an equal-time comparison: it measures the delivered policy against
the uniform one at equal fine-tuning. The test split is read only to report, as in the benchmark.

With ``--epochs-of delivered --lr LR`` it replays each delivery for its *own* epoch count at another learning rate
instead: whether the final fine-tune's lr, not its length, is what a delivery lacks (each row also records the
start, i.e. the pruned model after adaptive BN, and the fine-tuned weights beside the delivered ones).

    python benchmarks/epoch_replay.py --workdir /tmp/bench-cue \\
        --results benchmarks/results/search_vs_recipe_fewcue11.json --arm autoprune@direct --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import commit, logger, machine, setup_logging, write_json  # noqa: E402
from search_vs_recipe import bootstrap_diff  # noqa: E402
from winner_replay import _finalize  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, required=True, help="the search_vs_recipe.py run's --workdir")
    p.add_argument("--results", type=Path, required=True, help="its results JSON (with a recipe arm)")
    p.add_argument("--arm", default="autoprune@direct", help="the search arm whose deliveries are replayed")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default: every seed both arms ran")
    p.add_argument("--lr", type=float, default=0.01, help="the final fine-tune's lr (the recipe's and budget.final_lr)")
    p.add_argument("--epochs-of", choices=("recipe", "delivered"), default="recipe",
                   help="replay for the recipe's epoch count of the seed and target, or the delivery's own")
    p.add_argument("--targets", nargs="+", default=None, help="params cuts to replay (default: all of the run's)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    setup_logging()
    import optuna

    from autoprune.model import records
    from autoprune.model.budget import Target

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    bench = json.loads(args.results.read_text())
    recipe, arm = bench["arms"]["recipe"], bench["arms"][args.arm]
    seeds = [s for s in (args.seeds or arm["seeds"]) if s in recipe["seeds"] and s in arm["seeds"]]
    out_path = args.out or args.results.with_name(args.results.stem.replace("search_vs_recipe", "epoch_replay")
                                                  + ".json")
    res: dict[str, Any] = {"commit": commit(), "machine": machine(), "source": args.results.name,
                           "source_commit": bench.get("commit"), "arm": args.arm, "lr": args.lr,
                           "epochs_of": args.epochs_of, "rows": []}
    study_prefix = args.arm.split("@")[0]  # the benchmark names a search arm's study after the arm without its tags
    for seed in seeds:
        studies = args.workdir / f"{args.arm}-{seed}" / "studies"
        name = f"{study_prefix}-s{seed}"
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{studies / 'autoprune.db'}")
        deliveries = records.deliveries(study)
        for key in args.targets or bench["targets"]:
            d = deliveries.get(Target((("params", round(1 - float(key), 6)),)).label) or {}
            i_r, i_a = recipe["seeds"].index(seed), arm["seeds"].index(seed)
            if d.get("trial") is None or recipe["epochs"][key][i_r] is None:
                continue
            epochs = int(recipe["epochs"][key][i_r] if args.epochs_of == "recipe" else d["epochs"])
            row: dict[str, Any] = {"seed": seed, "target": key, "trial": d["trial"], "delivered_epochs": d["epochs"],
                                   "delivered_test_map": arm["test_map"][key][i_a],
                                   "recipe_epochs": int(recipe["epochs"][key][i_r]),
                                   "recipe_test_map": recipe["test_map"][key][i_r]}
            row["replay"] = _finalize(studies, name, d["trial"], epochs, args.lr,
                                      args.workdir / "epoch-replay" / f"{name}-{key}")
            logger.info("seed %d at -%s: trial %d, %d epochs test %.4f; replayed for %d at lr %g: %.4f (recipe %.4f)",
                        seed, key, d["trial"], d["epochs"], row["delivered_test_map"], epochs, args.lr,
                        row["replay"]["test_map"], row["recipe_test_map"])
            res["rows"].append(row)
            write_json(out_path, res)
    res["summary"] = {}
    for key in bench["targets"]:
        rows = [r for r in res["rows"] if r["target"] == key]
        if rows:
            replay = [r["replay"]["test_map"] for r in rows]
            res["summary"][key] = {"n": len(rows), "replay_minus_recipe": bootstrap_diff(replay, [
                r["recipe_test_map"] for r in rows]), "replay_minus_delivered": bootstrap_diff(replay, [
                r["delivered_test_map"] for r in rows]), "replay_minus_delivered_mean": statistics.fmean(
                a - r["delivered_test_map"] for a, r in zip(replay, rows))}
    write_json(out_path, res)
    print(json.dumps(res["summary"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
