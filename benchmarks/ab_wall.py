"""Wall time of one search, two versions of autoprune side by side (A B, B A, ... alternating runs).

Each run is a fresh study: ``python -m autoprune search SPEC --trials N`` in a temporary folder with the given
source tree first on ``PYTHONPATH`` (export a commit with ``git archive REV | tar -x -C DIR``). The spec is the demo
spec made small (one prune step of one epoch, light latency timing, a one-probe sensitivity scan) unless
``--spec`` names another. Reports each pair's wall-time ratio B/A and their median; raw walls go to the JSON.

    git archive afd7427 | tar -x -C /tmp/ab-a; git archive HEAD | tar -x -C /tmp/ab-b
    python benchmarks/ab_wall.py --a /tmp/ab-a --b /tmp/ab-b --pairs 3 --out benchmarks/results/session_ab.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import logger, machine, setup_logging, write_json  # noqa: E402

SMALL = {"sensitivity": {"probes": 1, "sweep": 3, "candidates": 2},
         "space": {"epochs": {"low": 1, "high": 1}, "iterations": {"low": 1, "high": 1}},
         "latency": {"runs": 5, "rounds": 2}}


def small_demo_spec(root: Path) -> dict[str, Any]:
    spec = yaml.safe_load((root / "search_spaces" / "demo.yaml").read_text())
    for key in ("budget", "targets"):  # a fixed trial count, not the demo's clock: the wall time is what is compared
        spec.pop(key, None)
    for key, over in SMALL.items():
        spec[key] = {**spec.get(key, {}), **over}
    return spec


def timed_search(tree: Path, spec: Path, trials: int) -> float:
    with tempfile.TemporaryDirectory(prefix="autoprune-ab-") as work:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "autoprune", "search", str(spec), "--trials", str(trials),
                        "--studies-dir", str(Path(work) / "studies")], cwd=work, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", type=Path, required=True, help="source tree of version A (the baseline)")
    p.add_argument("--b", type=Path, required=True, help="source tree of version B")
    p.add_argument("--spec", type=Path, help="search spec (default: the small demo spec)")
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/ab_wall.json"))
    args = p.parse_args(argv)
    setup_logging()
    with tempfile.TemporaryDirectory(prefix="autoprune-ab-spec-") as tmp:
        spec = args.spec
        if spec is None:
            spec = Path(tmp) / "small_demo.yaml"
            spec.write_text(yaml.safe_dump(small_demo_spec(Path(__file__).resolve().parent.parent)))
        timed_search(args.b, spec, 1)  # untimed: the data set and caches exist before the first timed run
        walls: dict[str, list[float]] = {"a": [], "b": []}
        for i in range(args.pairs):
            for arm in ("a", "b") if i % 2 == 0 else ("b", "a"):
                walls[arm].append(round(timed_search(getattr(args, arm), spec, args.trials), 2))
                logger.info("pair %d %s: %.1f s", i, arm, walls[arm][-1])
        spec_text = spec.read_text()
    ratios = [round(b / a, 4) for a, b in zip(walls["a"], walls["b"])]
    result = {"machine": machine(), "a": str(args.a), "b": str(args.b), "trials": args.trials, "spec": spec_text,
              "wall_s": walls, "ratio_b_over_a": ratios, "median_ratio": statistics.median(ratios)}
    write_json(args.out, result)
    print(f"B/A wall time per pair: {', '.join(f'{r:.3f}' for r in ratios)} (median {result['median_ratio']:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
