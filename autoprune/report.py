"""Text rendering of a study's Pareto front."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from autoprune.policy import ratio_summary
from autoprune.study import FrontRow

__all__ = ["front_table"]

_COLUMNS = (("trial", 6), ("mAP50-95", 9), ("mAP50", 7), ("params", 11), ("latency_ms", 11),
            ("criterion", 10), ("ratios", 24))


def _fmt_row(cells: Sequence[str]) -> str:
    return "  ".join(c.rjust(w) if i < 5 else c.ljust(w) for i, (c, (_, w)) in enumerate(zip(cells, _COLUMNS)))


def front_table(rows: Sequence[FrontRow], baseline: dict[str, Any] | None = None) -> str:
    lines = [_fmt_row([c for c, _ in _COLUMNS])]
    if baseline:
        lines.append(_fmt_row(["base", f"{baseline['map50_95']:.4f}", f"{baseline['map50']:.4f}",
                               f"{int(baseline['params']):,}", f"{baseline['latency_ms']:.2f}", "-", "unpruned"]))
    for r in rows:
        v = r.values
        lines.append(_fmt_row([str(r.number), f"{v.get('map50_95', float('nan')):.4f}",
                               f"{v.get('map50', float('nan')):.4f}", f"{int(v.get('params', 0)):,}",
                               f"{v.get('latency_ms', float('nan')):.2f}", r.criterion, ratio_summary(r.ratios)]))
    return "\n".join(lines)
