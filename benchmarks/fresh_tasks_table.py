"""Render a fresh-task draw (``fresh_tasks.py``'s JSON) as Markdown: one row per task and target (each arm's test
mAP50-95, ONNX Runtime latency ratio against the base, epochs, wall seconds and the load while it ran; whether the
recipe's model dominated autoprune's), then the paired summary with its t-intervals.

    python benchmarks/fresh_tasks_table.py benchmarks/results/fresh_tasks_<draw>.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _num(v: Any, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def _arm(a: dict[str, Any]) -> str:
    load = (a.get("load") or {}).get("mean")
    return (f"{_num(a.get('test_map'), '.3f')} | ×{_num(a.get('latency_ratio'), '.2f')} | "
            f"{_num(a.get('epochs'), 'd')} | {_num(a.get('wall_s'), '.0f')} | {_num(load, '.1f')}")


def _source(a: dict[str, Any]) -> str:
    """Where the delivery came from (and, progressive, which delivery it continued from)."""
    cont = a.get("continued_from") or {}
    capped = " (capped)" if cont.get("capped_layers") else ""
    return (a.get("source") or a.get("reason") or "–") + (f", from {cont['target']}{capped}" if cont.get("target")
                                                          else "")


def render(result: dict[str, Any]) -> str:
    tasks = result.get("tasks") or []
    done = [t for t in tasks if t.get("done")]
    out = [f"Draw {result.get('draw_seed')} on method commit {str(result.get('method_commit'))[:7]}: "
           f"{len(done)} of {len(tasks)} tasks done.", "",
           "| task | regime | base test | budget a target | target | recipe test | ×latency | epochs | s | load "
           "| autoprune test | ×latency | epochs | s | load | source | dominated |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in done:
        for label, cell in t["targets"].items():
            auto = cell["autoprune"]
            verdict = {True: "**yes**", False: "no", None: "n/a"}[cell.get("dominated")]
            out.append(f"| {t['task_seed']} | {t['regime']} | {_num(t.get('base_test_map'), '.3f')} | "
                       f"{_num(t.get('budget_s'), '.0f')} s | {label} | {_arm(cell['recipe'])} | {_arm(auto)} | "
                       f"{_source(auto)} | {verdict} |")
    out += ["", "| regime/target | n | autoprune − recipe, test mAP50-95 (95% t-interval) | wins | losses "
            "| dominated | latency autoprune / recipe |", "|---|---|---|---|---|---|---|"]
    for key, c in (result.get("summary") or {}).items():
        if not c.get("n"):
            continue
        ci = c.get("ci95")
        interval = f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else ""
        out.append(f"| {key} | {c['n']} | {c.get('mean_test_map_diff', 0.0):+.3f}{interval} | {c.get('wins', 0)} | "
                   f"{c.get('losses', 0)} | {c.get('dominated', 0)} | "
                   f"×{_num(c.get('latency_ratio_autoprune_over_recipe'), '.2f')} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("result", type=Path)
    args = ap.parse_args(argv)
    try:
        result = json.loads(args.result.read_text())
    except (OSError, ValueError) as e:
        print(f"{args.result}: cannot be read as a fresh_tasks result ({e})", file=sys.stderr)
        return 2
    sys.stdout.write(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
