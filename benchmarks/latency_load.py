"""Does a busy machine reorder the front? Latency ratios of pruned models timed under artificial load, ranked
against the same models timed on the quiet machine, with the old timing and the new one.

Pruned models: the demo base pruned (real channel removal, group L2) to uniform ratios 0.0 and 0.2-0.8 (0.1 times
within 0.5% of 0.0 on the quiet machine: a tie, not a ranking) and a few random per-layer policies; no
fine-tuning (it does not change latency). Each is timed against the base in interleaved rounds
(autoprune.engine.latency.measure_interleaved) with the spec's defaults (50 passes in 10 rounds):

- quiet: nothing else running (the load average is recorded), many rounds; the reference ranking.
- loaded: ``--busy`` processes spinning on the CPU all along (2 on this 2-core machine), each model timed twice,
  in alternating order: the old timing (the median round ratio of each round's median passes, one timing) and the
  new (the median round ratio of each round's fastest passes; a ratio whose rounds spread over ``--max-spread`` is
  timed again, up to ``--retries`` times, and pooled).

Kendall's tau of each loaded ranking against the quiet one is the result (1: same order). The raw passes of every
timing, the ratios, spreads, attempts and load averages are in the JSON, so other estimators can be compared on the
same passes.

    python benchmarks/latency_load.py --out benchmarks/results/latency_load.json
    python benchmarks/latency_load.py --compare benchmarks/results/latency_load.json \
        benchmarks/results/latency_load_runs/*.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import commit, logger, machine, setup_logging, write_json  # noqa: E402


def _spin(stop: Any) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def pruned_models(n_random: int, seed: int, ratios: list[float]) -> tuple[Any, list[tuple[str, Any, float]]]:
    """(the deployable base, [(label, deployable pruned model, MACs ratio)])."""
    from autoprune.adapters import pruning, yolo
    from autoprune.demo.baseline import resolve_demo_model
    from autoprune.engine.pipeline import TRACE_IMGSZ
    from autoprune.model import criteria
    from autoprune.model.sampling import target_keep

    path = resolve_demo_model()
    base = yolo.load_model(path)
    original = pruning.channel_counts(base, TRACE_IMGSZ)
    keeps = [(f"uniform {r:.2f}", target_keep(original, dict.fromkeys(original, r), 1, 1, 8)) for r in ratios]
    rng = random.Random(seed)
    for i in range(n_random):
        keeps.append((f"random {i}", target_keep(original, {k: rng.uniform(0.0, 0.7) for k in original}, 1, 1, 8)))
    base_macs = pruning.count_macs(base, TRACE_IMGSZ)
    out = []
    for label, keep in keeps:
        model = yolo.load_model(path)
        if any(keep[k] != original[k] for k in keep):
            pruning.prune_step(model, keep, pruning.importance(criteria.get("l2")), TRACE_IMGSZ)
        out.append((label, yolo.deploy_copy(model), pruning.count_macs(model, TRACE_IMGSZ) / base_macs))
    return yolo.deploy_copy(base), out


RATIOS = [0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]  # uniform ratios whose quiet latencies differ by >= 4% (0.1 ~ 0.0)


def run(imgsz: int = 320, busy: int = 2, n_random: int = 2, seed: int = 0, runs: int = 50, rounds: int = 10,
        quiet_runs: int = 60, threads: int = 2, max_spread: float = 0.25, retries: int = 2,
        ratios: list[float] | None = None) -> dict[str, Any]:
    from autoprune.config.sections import LatencySettings
    from autoprune.engine.latency import measure_interleaved
    from autoprune.model.pareto import kendall_tau

    base, models = pruned_models(n_random, seed, ratios or RATIOS)

    def timed(model: Any, new: bool, n: int, k: int) -> Any:
        timing = LatencySettings(warmup=3, runs=n, rounds=k, threads=threads, max_spread=max_spread,
                                 estimator="min" if new else "median", retries=retries if new else 0)
        return measure_interleaved(model, base, imgsz, timing=timing)

    rows: list[dict[str, Any]] = [{"policy": label, "macs_ratio": macs} for label, _, macs in models]
    load_quiet = [os.getloadavg()[0]]
    for row, (_, model, _) in zip(rows, models):
        q = timed(model, False, quiet_runs, rounds)
        row.update(quiet_ratio=q.ratio, quiet_ratio_min=q.estimate("min"), quiet_spread=q.ratio_spread,
                   quiet_samples=[[list(c), list(r)] for c, r in q.samples])
    load_quiet.append(os.getloadavg()[0])
    stop = mp.Event()
    procs = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(busy)]
    for p in procs:
        p.start()
    try:
        time.sleep(2.0)
        load_busy = [os.getloadavg()[0]]
        for i, (row, (_, model, _)) in enumerate(zip(rows, models)):
            for new in ((False, True) if i % 2 == 0 else (True, False)):
                t0 = time.perf_counter()
                il = timed(model, new, runs, rounds)
                key = "new" if new else "old"
                row.update({f"{key}_ratio": il.ratio, f"{key}_spread": il.ratio_spread,
                            f"{key}_attempts": il.attempts, f"{key}_unreliable": il.unreliable,
                            f"{key}_seconds": time.perf_counter() - t0,
                            f"{key}_samples": [[list(c), list(r)] for c, r in il.samples]})
            logger.info("%s: quiet x%.3f, loaded old x%.3f (spread %.2f), new x%.3f (spread %.2f, %d timing(s)%s)",
                        row["policy"], row["quiet_ratio"], row["old_ratio"], row["old_spread"], row["new_ratio"],
                        row["new_spread"], row["new_attempts"], ", unreliable" if row["new_unreliable"] else "")
        load_busy.append(os.getloadavg()[0])
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=10)
    quiet = [r["quiet_ratio"] for r in rows]
    return {
        "commit": commit(), "machine": machine(), "imgsz": imgsz, "threads": threads, "runs": runs,
        "rounds": rounds, "quiet_runs": quiet_runs, "max_spread": max_spread, "retries": retries,
        "policies": rows,
        "load": {"busy_processes": busy, "quiet_loadavg": load_quiet, "loaded_loadavg": load_busy},
        "tau_before": kendall_tau([r["old_ratio"] for r in rows], quiet),
        "tau_after": kendall_tau([r["new_ratio"] for r in rows], quiet),
        "tau_quiet_min_vs_median": kendall_tau([r["quiet_ratio_min"] for r in rows], quiet),
        "flagged_unreliable": sum(bool(r["new_unreliable"]) for r in rows),
        "seconds": {"old": sum(r["old_seconds"] for r in rows), "new": sum(r["new_seconds"] for r in rows)},
    }


def compare(paths: list[Path]) -> None:
    """Kendall tau vs the quiet ranking of every registered estimator, on the recorded passes of each file's
    old and new timings."""
    from autoprune.engine.latency import ESTIMATORS, ratio_of
    from autoprune.model.pareto import kendall_tau

    for path in paths:
        res = json.loads(path.read_text())
        quiet = [p["quiet_ratio"] for p in res["policies"]]
        for key in ("old", "new"):
            if f"{key}_samples" not in res["policies"][0]:
                continue
            taus = {e: kendall_tau([ratio_of(p[f"{key}_samples"], e) for p in res["policies"]], quiet)
                    for e in ESTIMATORS}
            print(f"{path.name} {key} passes: " + ", ".join(f"{e} {t:.3f}" for e, t in taus.items()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--busy", type=int, default=2, help="spinning processes during the loaded timings")
    p.add_argument("--random", type=int, default=2, help="random per-layer policies besides the 8 uniform ones")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", type=int, default=50, help="timed passes per model in a loaded timing (the spec's)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--quiet-runs", type=int, default=60, help="timed passes per model in the quiet reference")
    p.add_argument("--max-spread", type=float, default=0.25)
    p.add_argument("--retries", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "latency_load.json")
    p.add_argument("--compare", type=Path, nargs="+", help="print each estimator's tau on these results and exit")
    args = p.parse_args(argv)
    setup_logging()
    if args.compare:
        compare(args.compare)
        return 0
    res = run(args.imgsz, args.busy, args.random, args.seed, args.runs, args.rounds, args.quiet_runs,
              max_spread=args.max_spread, retries=args.retries)
    write_json(args.out, res)
    print(f"{len(res['policies'])} policies at {args.imgsz} px, {args.busy} busy processes (load "
          f"{res['load']['loaded_loadavg']}): Kendall tau vs quiet {res['tau_before']:.3f} (old timing) -> "
          f"{res['tau_after']:.3f} (new); {res['flagged_unreliable']} flagged unreliable; timing seconds "
          f"{res['seconds']['old']:.0f} -> {res['seconds']['new']:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
