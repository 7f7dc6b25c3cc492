"""Wall-clock budgets and size targets: what a user asks for ("the best model at half the parameters within
30 minutes") and how a run's time is charged to its phases.

Pure data: the search layer keeps the clock, :class:`Ledger` adds up what each phase cost.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["parse_duration", "format_duration", "TARGET_METRICS", "Target", "Ledger", "PHASES", "fit_count"]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*$")


def parse_duration(v: object) -> float:
    """Seconds from ``90``, ``"90s"``, ``"30m"``, ``"1.5h"``; ValueError naming what is wrong."""
    if isinstance(v, bool):
        raise ValueError(f"expected a duration such as 300, '5m' or '2h', got {v}")
    if isinstance(v, (int, float)):
        seconds = float(v)
    elif isinstance(v, str) and (m := _DURATION_RE.match(v)):
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    else:
        shown = v[:40] if isinstance(v, str) else type(v).__name__
        raise ValueError(f"expected a duration such as 300, '5m' or '2h', got {shown!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"must be a positive duration, got {v}")
    if seconds > 30 * 24 * 3600:
        raise ValueError(f"{v} is more than 30 days")
    return seconds


def format_duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# metrics a target may bound, each as a fraction of the unpruned base's value
TARGET_METRICS = ("params", "macs", "latency_ratio")


@dataclass(frozen=True)
class Target:
    """A size the user will deploy at: every metric at most ``fraction`` of the base's (``params: 0.5`` is -50%)."""

    limits: tuple[tuple[str, float], ...]

    @property
    def label(self) -> str:
        """``params-50`` (file and column friendly): the cut in percent, per metric."""
        return "_".join(f"{k}-{round((1 - v) * 100):g}" for k, v in self.limits)

    @property
    def text(self) -> str:
        return " and ".join(f"{k} <= {v:g} x base" for k, v in self.limits)

    def base_value(self, metric: str, baseline: Mapping[str, float]) -> float:
        return 1.0 if metric == "latency_ratio" else float(baseline[metric])

    def meets(self, metrics: Mapping[str, float], baseline: Mapping[str, float]) -> bool:
        """Whether a model with ``metrics`` is at or under every limit (a metric it lacks does not meet it)."""
        for k, fraction in self.limits:
            if k not in metrics:
                return False
            if float(metrics[k]) > fraction * self.base_value(k, baseline) * (1 + 1e-9):
                return False
        return True

    @property
    def params_cut(self) -> float | None:
        """The share of parameters the target removes, if it bounds parameters."""
        return next((1 - v for k, v in self.limits if k == "params"), None)

    def to_dict(self) -> dict[str, float]:
        return dict(self.limits)


# the phases a budgeted run charges: everything from the command's start to its end belongs to one of them
PHASES = ("prepare", "recipe", "scan", "screens", "trials", "final", "other")


@dataclass
class Ledger:
    """Seconds a run spent, by phase; ``other`` is the wall time no phase claimed (orchestration, writes)."""

    budget_s: float | None = None
    charged: dict[str, float] = field(default_factory=dict)
    scan_reused: bool = False  # the sensitivity scan came from the cache: its cost was charged to the run that made it
    # how the run sized its scan to the budget: probe ratios per block and allocations screened (empty: full size)
    scan_size: dict[str, int] = field(default_factory=dict)
    search_skipped: str = ""  # why the run made no search (its share could not hold one), else empty
    recovery: dict[str, object] = field(default_factory=dict)  # the recovery probe's record, where one ran

    def charge(self, phase: str, seconds: float) -> None:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        self.charged[phase] = self.charged.get(phase, 0.0) + max(0.0, seconds)

    def close(self, wall_s: float) -> None:
        """Charge the rest of ``wall_s`` to ``other`` so the phases add up to the wall time."""
        claimed = sum(v for k, v in self.charged.items() if k != "other")
        self.charged["other"] = max(0.0, wall_s - claimed)

    @property
    def total(self) -> float:
        return sum(self.charged.values())

    def to_dict(self) -> dict[str, object]:
        return {"budget_s": self.budget_s, "charged_s": {k: round(self.charged.get(k, 0.0), 3) for k in PHASES},
                "total_s": round(self.total, 3), "scan_reused": self.scan_reused, "scan_size": dict(self.scan_size),
                "search_skipped": self.search_skipped, "recovery": dict(self.recovery)}


def fit_count(seconds: float, each_s: float, most: int, least: int = 0) -> int:
    """How many steps of ``each_s`` seconds fit in ``seconds``, at least ``least`` and at most ``most`` (``most``
    wins)."""
    if each_s <= 0 or not math.isfinite(seconds):
        return most
    return min(most, max(least, math.floor(max(0.0, seconds) / each_s)))
