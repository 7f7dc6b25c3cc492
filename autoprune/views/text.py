"""Text renderings of a study's Pareto front (table, JSON, CSV) with the baseline for comparison."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from autoprune.model import objectives
from autoprune.model.policy import ratio_summary

__all__ = ["front_records", "render_front", "relative_change"]


def relative_change(value: float, base: float | None) -> float | None:
    if base is None or base == 0:
        return None
    return (value - base) / abs(base)


def front_records(rows: Sequence[dict[str, Any]], names: Sequence[str],
                  baseline: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One flat record per front member (best first by the first objective), baseline first."""
    first = objectives.get(names[0])
    ordered = sorted(rows, key=lambda r: r["values"][first.name], reverse=first.direction == "maximize")
    out = []
    if baseline:
        rec: dict[str, Any] = {"trial": "baseline"}
        for n in names:
            rec[n] = baseline.get(n)
            rec[f"{n}_change"] = 0.0
        rec.update(criterion="", ratios="unpruned", joined_at="")
        out.append(rec)
    for r in ordered:
        rec = {"trial": r["trial_number"]}
        for n in names:
            v = r["values"][n]
            rec[n] = v
            rec[f"{n}_change"] = relative_change(v, (baseline or {}).get(n))
        policy = r.get("policy") or {}
        rec.update(criterion=policy.get("criterion", ""), ratios=ratio_summary(policy.get("ratios", {})),
                   joined_at=r.get("joined_at", ""))
        out.append(rec)
    return out


def _fmt(name: str, v: Any) -> str:
    if v is None:
        return "-"
    return objectives.get(name).format(v)


def _pct(v: float | None) -> str:
    return "" if v is None else f"({v * 100:+.1f}%)"


def render_front(records: Sequence[dict[str, Any]], names: Sequence[str], fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps(list(records), indent=1, default=str)
    if fmt == "csv":
        buf = io.StringIO()
        fields = ["trial", *[x for n in names for x in (n, f"{n}_change")], "criterion", "ratios", "joined_at"]
        w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(records)
        return buf.getvalue().rstrip("\n")
    header = ["trial", *[objectives.get(n).label for n in names], "criterion", "ratios"]
    table = [header]
    for r in records:
        cells = [str(r["trial"])]
        for n in names:
            change = "" if r["trial"] == "baseline" else _pct(r.get(f"{n}_change"))
            cells.append(f"{_fmt(n, r[n])} {change}".strip())
        cells += [r["criterion"] or "-", r["ratios"]]
        table.append(cells)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = []
    for row in table:
        lines.append("  ".join(c.rjust(w) if 0 < i <= len(names) else c.ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths))).rstrip())
    return "\n".join(lines)
