"""Text renderings of a study's Pareto front (table, JSON, CSV) with the baseline for comparison."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

from autoprune.model import knobs, objectives
from autoprune.model.budget import PHASES, format_duration
from autoprune.model.policy import ratio_summary

__all__ = ["front_records", "reference_values", "render_front", "relative_change", "render_budget", "render_deliveries",
           "delivered_trials", "delivered_maps", "render_deployed"]


def relative_change(value: float, base: float | None) -> float | None:
    if base is None or base == 0:
        return None
    return (value - base) / abs(base)


def delivered_trials(deliveries: Mapping[str, Mapping[str, Any]]) -> dict[int, list[str]]:
    """``{trial number: [target labels]}`` of the trials finalized for a target."""
    out: dict[int, list[str]] = {}
    for label, d in deliveries.items():
        if d.get("trial") is not None and d.get("out_dir"):
            out.setdefault(int(d["trial"]), []).append(label)
    return out


def delivered_maps(deliveries: Mapping[str, Mapping[str, Any]]) -> dict[int, dict[str, float | None]]:
    """``{trial number: {"val": mAP50-95, "test": mAP50-95 or None}}`` of the models finalized for a target (what
    was delivered, after the final fine-tune; the trial's own values are the search's proxy)."""
    out: dict[int, dict[str, float | None]] = {}
    for d in deliveries.values():
        after = d.get("after") or {}
        if d.get("trial") is None or not d.get("out_dir") or "val" not in after:
            continue
        out[int(d["trial"])] = {"val": float(after["val"]["map50_95"]),
                                "test": float(after["test"]["map50_95"]) if "test" in after else None}
    return out


def reference_values(ref: Mapping[str, Any], name: str, baseline: Mapping[str, Any] | None) -> float | None:
    """A reference point's value of objective ``name``: what it measured (deployed mAP, latency), else the base's
    where the deployment does not change it (parameters, MACs, the validated mAP); None for a ratio."""
    if name in ref:
        return float(ref[name]) if ref[name] is not None else None
    if name in ("params", "macs", "map50_95", "map50") and baseline and name in baseline:
        return float(baseline[name])
    return None


def front_records(rows: Sequence[dict[str, Any]], names: Sequence[str],
                  baseline: dict[str, Any] | None,
                  targets: Mapping[int, Sequence[str]] | None = None,
                  checks: Mapping[int, Sequence[str]] | None = None,
                  references: Sequence[Mapping[str, Any]] = (),
                  delivered: Mapping[int, Mapping[str, float | None]] | None = None) -> list[dict[str, Any]]:
    """One flat record per front member (best first by the first objective), baseline first, then the reference
    points (the base at each searched deployment); ``target`` names the targets a member was finalized for,
    ``latency_check`` the reasons to doubt its latency (``checks``); a finalized member (``delivered``:
    :func:`delivered_maps`) has its delivered val and test mAP50-95 beside the search's proxy."""
    first = objectives.get(names[0])
    ordered = sorted(rows, key=lambda r: r["values"][first.name], reverse=first.direction == "maximize")
    out = []
    if baseline:
        rec: dict[str, Any] = {"trial": "baseline"}
        for n in names:
            rec[n] = baseline.get(n)
            rec[f"{n}_change"] = 0.0
        rec.update(criterion="", ratios="unpruned", deployment="", joined_at="", target="", latency_check="")
        out.append(rec)
    for ref in references:
        rec = {"trial": ref["name"]}
        for n in names:
            rec[n] = reference_values(ref, n, baseline)
            rec[f"{n}_change"] = relative_change(rec[n], (baseline or {}).get(n)) if rec[n] is not None else None
        rec.update(criterion="", ratios="unpruned",
                   deployment=deployment({"precision": ref["precision"], "deploy_imgsz": ref["imgsz"]}),
                   joined_at="", target="", latency_check="")
        out.append(rec)
    for r in ordered:
        rec = {"trial": r["trial_number"]}
        for n in names:
            v = r["values"][n]
            rec[n] = v
            rec[f"{n}_change"] = relative_change(v, (baseline or {}).get(n))
        policy = r.get("policy") or {}
        rec.update(criterion=policy.get("criterion", ""), ratios=ratio_summary(policy.get("ratios", {})),
                   deployment=deployment(policy), joined_at=r.get("joined_at", ""),
                   target=",".join((targets or {}).get(r["trial_number"], ())),
                   latency_check="; ".join((checks or {}).get(r["trial_number"], ())))
        done = (delivered or {}).get(r["trial_number"])
        if done is not None:
            rec.update(delivered_val_map50_95=done["val"], delivered_test_map50_95=done["test"])
        out.append(rec)
    return out


def deployment(policy: Mapping[str, Any]) -> str:
    """A policy's deployment knobs that it sets (``precision=int8 deploy_imgsz=128``; "" when it sets none)."""
    return " ".join(f"{k.name}={policy[k.name]}" for k in knobs.knobs()
                    if k.stage == "deploy" and policy.get(k.name) is not None)


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
        fields = ["trial", *[x for n in names for x in (n, f"{n}_change")], "criterion", "ratios", "deployment",
                  "joined_at", "target", "latency_check", "delivered_val_map50_95", "delivered_test_map50_95"]
        w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(records)
        return buf.getvalue().rstrip("\n")
    marked = any(r.get("target") for r in records)
    checked = any(r.get("latency_check") for r in records)
    deployed = any(r.get("deployment") for r in records)
    finalized = any(r.get("delivered_val_map50_95") is not None for r in records)
    header = ["trial", *[objectives.get(n).label for n in names], "criterion", "ratios"]
    header += ["deployed as"] if deployed else []
    header += ["target"] if marked else []
    header += ["delivered mAP50-95 val / test"] if finalized else []
    header += ["latency check"] if checked else []
    table = [header]
    for r in records:
        cells = [str(r["trial"])]
        for n in names:
            change = "" if r["trial"] == "baseline" else _pct(r.get(f"{n}_change"))
            change = "" if r[n] is None else change
            cells.append(f"{_fmt(n, r[n])} {change}".strip())
        cells += [r["criterion"] or "-", r["ratios"], *([r.get("deployment") or "-"] if deployed else []),
                  *([r.get("target") or ""] if marked else []),
                  *([_delivered(r)] if finalized else []),
                  *([r.get("latency_check") or ""] if checked else [])]
        table.append(cells)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = []
    for row in table:
        lines.append("  ".join(c.rjust(w) if 0 < i <= len(names) else c.ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths))).rstrip())
    if finalized:
        lines.append("delivered: the target's finalized model (after its final fine-tune); the mAP50-95 column is the "
                     "search's measurement before it")
    if checked:
        lines.append("latency check: these timings look off (a busy machine?); `autoprune remeasure` times the front "
                     "again")
    return "\n".join(lines)


def _delivered(r: Mapping[str, Any]) -> str:
    val, test = r.get("delivered_val_map50_95"), r.get("delivered_test_map50_95")
    if val is None:
        return ""
    return f"{val:.4f} / {test:.4f}" if test is not None else f"{val:.4f} / -"


def render_budget(ledger: Mapping[str, Any]) -> str:
    """One line: the budget and the seconds charged to each phase."""
    charged = ledger.get("charged_s") or {}
    parts = [f"{k} {format_duration(float(charged[k]))}" for k in PHASES if charged.get(k)]
    scan = " (sensitivity scan reused from the cache)" if ledger.get("scan_reused") else ""
    if ledger.get("search_skipped"):
        scan += f" (no search: {ledger['search_skipped']})"
    budget = ledger.get("budget_s")
    return (f"budget {format_duration(float(budget)) if budget else '-'}: spent {format_duration(ledger['total_s'])}"
            f" = {', '.join(parts) or 'nothing'}{scan}")


def render_deliveries(deliveries: Mapping[str, Mapping[str, Any]], labels: Sequence[str]) -> list[str]:
    """One line per target: its finalized model (trial, size, val and test mAP50-95 before -> after, folder), or
    why there is none."""
    lines = []
    for label in labels:
        d = deliveries.get(label)
        if d is None:
            continue
        if not d.get("out_dir"):
            lines.append(f"target {label}: not delivered: {d.get('reason')}")
            continue
        splits = []
        for split, after in (d.get("after") or {}).items():
            before = (d.get("before") or {}).get(split, {})
            splits.append(f"{split} mAP50-95 {before.get('map50_95', float('nan')):.4f} -> {after['map50_95']:.4f}")
        size = f" params {d['params_ratio'] - 1:+.0%}" if d.get("params_ratio") is not None else ""
        undone = (" (no time left for it: delivered as measured)" if d.get("epochs") == 0
                  else " (undone: it lowered val)" if d.get("kept") == "start" else "")
        cont = d.get("continued_from") or {}
        if cont.get("target"):
            undone += f" (continued from the {cont['target']} delivery)"
        lines.append(f"target {label}: trial {d['trial']}{size}, {d.get('epochs')} final epochs{undone}; "
                     f"{'; '.join(splits)}; {d['out_dir']}")
    return lines


def render_deployed(d: Mapping[str, Any]) -> list[str]:
    """The line of an export's ``deployed`` record (none without one)."""
    if not d:
        return []
    ratio = d.get("latency_ratio_vs_base", d.get("latency_ratio_vs_int8_base"))  # the latter: files before openvino
    return [f"{d['file']} ({d['precision']} on {d['runtime']}, {d['imgsz']} px): {d['split']} mAP50-95 "
            f"{d['map50_95']:.4f}; {d['latency_ms']:.2f} ms, x{ratio:.3f} of the base model's, exported alike"]
