"""Do two criteria choose different channels? Channel-selection overlap per pair of criteria.

On the demo baseline every unit keeps the same number of channels (uniform ratio); for each
pair of criteria the Jaccard overlap of the kept channel sets is averaged over the units.
1.0 means the two criteria are the same knob in a one-shot prune (as in a screen).

    python benchmarks/criteria_overlap.py [--ratio 0.3] [--out benchmarks/results/criteria_overlap.json]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import logger, machine, setup_logging, write_json  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ratio", type=float, nargs="+", default=[0.3, 0.5])
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "criteria_overlap.json")
    args = p.parse_args(argv)
    setup_logging()

    import torch

    from autoprune.adapters import pruning, yolo
    from autoprune.config.spec import parse_spec
    from autoprune.engine.pipeline import TRACE_IMGSZ, accumulate_gradients
    from autoprune.model import criteria
    from autoprune.model.sampling import target_keep
    from autoprune.search.inputs import prepare_inputs

    spec = prepare_inputs(parse_spec({"name": "overlap", "model": "demo", "data": "demo", "imgsz": 160},
                                     "overlap.yaml")).spec
    results: dict[str, dict[str, float]] = {}
    for ratio in args.ratio:
        kept: dict[str, dict[str, list[int]]] = {}
        for name in criteria.names():
            torch.manual_seed(0)
            model = yolo.load_model(spec.model)
            crit = criteria.get(name)
            if "gradients" in crit.prepare:
                accumulate_gradients(model, spec.trial_settings)
            original = {la.name: la.channels for la in pruning.prunable_layers(model, TRACE_IMGSZ)}
            keep = target_keep(original, dict.fromkeys(original, ratio), 1, 1)
            kept[name] = pruning.kept_channels(model, keep, pruning.importance(crit), TRACE_IMGSZ)
        pairs = {}
        for a, b in itertools.combinations(criteria.names(), 2):
            units = sorted(set(kept[a]) & set(kept[b]))
            jac = [len(set(kept[a][u]) & set(kept[b][u])) / len(set(kept[a][u]) | set(kept[b][u])) for u in units]
            pairs[f"{a}/{b}"] = round(statistics.fmean(jac), 4)
            logger.info("ratio %.2f %s vs %s: mean Jaccard overlap %.3f over %d units", ratio, a, b, pairs[f"{a}/{b}"],
                        len(units))
        results[f"{ratio:g}"] = pairs
    write_json(args.out, {"machine": machine(), "model": "demo yolov8n (packaged)", "ratios": args.ratio,
                          "mean_jaccard": results})
    for ratio, pairs in results.items():
        same = [k for k, v in pairs.items() if v >= 0.999]
        print(f"ratio {ratio}: identical selections: {', '.join(same) or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
