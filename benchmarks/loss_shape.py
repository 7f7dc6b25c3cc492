"""How well does the allocation's loss curve predict a block's loss at a ratio it was not probed at?

A budgeted scan (``budget.scan_share``) may probe each block at its top ratio alone; the allocation then needs
the block's loss at every smaller ratio. This reads finished sensitivity scans that probed every block at two
or more ratios, hides all but each block's top probe, and predicts the hidden probes two ways: linearly from
ratio 0 (the rule before commit 8f0d7b6) and along ``ratio ** p`` with ``p`` fitted on the scan's own uniform
sweep (``loss_exponent``, the current rule). It reports each scan's ``p`` and the mean absolute error of both
predictions over the hidden probes (mAP50-95 points lost). No model is run: the scans are read as they are.

    python benchmarks/loss_shape.py fewcue11=/tmp/bench-cue/autoprune@direct-0/studies/autoprune.db \\
        demo=/tmp/demoscan/studies/autoprune.db --out benchmarks/results/loss_shape.json
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import commit, setup_logging, write_json  # noqa: E402
from autoprune.model.allocation import Sensitivity, block_options, loss_exponent  # noqa: E402


def hidden_probe_errors(sens: Sensitivity) -> dict[str, Any] | None:
    """Each block's top probe kept, the others predicted: rows and both rules' mean absolute errors; None when no
    block was probed at two ratios."""
    top = {}
    for p in sens.probes:
        if p.map50_95 is not None and p.ratio > top.get(p.block, 0.0):
            top[p.block] = p.ratio
    kept = dataclasses.replace(sens, probes=tuple(p for p in sens.probes if top.get(p.block) == p.ratio))
    hidden = [p for p in sens.probes if p.map50_95 is not None and p.block in top and p.ratio < top[p.block]]
    if not hidden:
        return None
    ratios = sorted({0.0, *(p.ratio for p in sens.probes)})
    fitted = block_options(kept, ratios)
    linear = block_options(dataclasses.replace(kept, sweep=()), ratios)  # no sweep: p = 1

    def loss_at(options: dict[str, Any], block: str, ratio: float) -> float:
        return next(o.loss for o in options[block] if abs(o.ratio - ratio) < 1e-9)

    rows = [{"block": p.block, "ratio": p.ratio, "top": top[p.block],
             "actual": max(0.0, sens.reference_map - float(p.map50_95 or 0.0)),
             "fitted": loss_at(fitted, p.block, p.ratio), "linear": loss_at(linear, p.block, p.ratio)}
            for p in hidden]
    return {"exponent": loss_exponent(sens), "hidden": len(rows),
            "mae_fitted": statistics.fmean(abs(r["fitted"] - r["actual"]) for r in rows),
            "mae_linear": statistics.fmean(abs(r["linear"] - r["actual"]) for r in rows), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dbs", nargs="+", help="[TASK=]PATH: SQLite files holding sensitivity scans (sensitivity-* studies)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "loss_shape.json")
    args = p.parse_args(argv)
    setup_logging()
    import optuna

    from autoprune.search.strategy.sensitivity import read_scan

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    scans = []
    for arg in args.dbs:
        task, _, path = arg.rpartition("=")
        db = Path(path)
        if not db.is_file():
            print(f"loss_shape: {db}: no such file", file=sys.stderr)
            return 2
        url = f"sqlite:///{db.resolve()}"
        for name in sorted(optuna.get_all_study_names(url)):
            if not name.startswith("sensitivity-"):
                continue
            scan = optuna.load_study(study_name=name, storage=url)
            result = hidden_probe_errors(read_scan(scan, 0.0))  # savings unused: losses only
            if result is not None:
                scans.append({"task": task or None, "db": str(db), "study": name, **result})
    if not scans:
        print("loss_shape: no scan in the given files probed a block at two ratios", file=sys.stderr)
        return 2
    summary = {"scans": len(scans), "exponent": [s["exponent"] for s in scans],
               "mae_fitted": statistics.fmean(s["mae_fitted"] for s in scans),
               "mae_linear": statistics.fmean(s["mae_linear"] for s in scans)}
    write_json(args.out, {"commit": commit(), "scans": scans, "summary": summary})
    print(f"{len(scans)} scan(s): p {min(summary['exponent']):.2f}..{max(summary['exponent']):.2f}; mean absolute "
          f"error of the hidden probes: fitted {summary['mae_fitted']:.4f}, linear {summary['mae_linear']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
