"""The final phase's race, as data: which candidate models and learning rates (arms) go on after a rung of short
fine-tunes, and which one is delivered, judged on val mAP50-95 **and** latency together.

An arm dominates another when it is more than ``map_points`` better and not more than ``latency_share`` slower, or
more than ``latency_share`` faster and not more than ``map_points`` worse (the test a skeptical reviewer applies to
two delivered models). A delivery is never dominated by an arm that raced beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Arm", "Dominance", "DOMINANCE", "undominated", "survivors", "winner", "lr_grid"]


@dataclass(frozen=True)
class Dominance:
    map_points: float = 0.005  # mAP50-95 (half a point)
    latency_share: float = 0.10  # of the slower one's latency ratio

    def dominates(self, a: Arm, b: Arm) -> bool:
        """Whether ``a`` beats ``b`` on one axis by more than the margin without losing the other by more."""
        better = a.score - b.score
        if a.latency is None or b.latency is None:  # no timing to compare: mAP alone
            return better > self.map_points
        faster = (b.latency - a.latency) / b.latency if b.latency > 0 else 0.0
        slower = (a.latency - b.latency) / a.latency if a.latency > 0 else 0.0
        return ((better > self.map_points and slower <= self.latency_share)
                or (faster > self.latency_share and -better <= self.map_points))


DOMINANCE = Dominance()


@dataclass
class Arm:
    """One candidate model (a trial of the study) fine-tuned at one learning rate."""

    trial: int
    source: str  # "search" (the search's pick for the target) or "recipe" (the hand recipe's model)
    lr: float
    latency: float | None  # the candidate's latency ratio to the base (None: not timed)
    start: float  # val mAP50-95 before the race
    vals: list[float] = field(default_factory=list)  # val mAP50-95 after each rung it ran
    train_s: list[float] = field(default_factory=list)  # seconds it trained in each rung

    @property
    def score(self) -> float:
        """Its latest val mAP50-95."""
        return self.vals[-1] if self.vals else self.start

    def to_dict(self) -> dict[str, Any]:
        return {"trial": self.trial, "source": self.source, "lr": self.lr, "latency_ratio": self.latency,
                "start_val_map50_95": round(self.start, 5), "val_map50_95": [round(v, 5) for v in self.vals],
                "train_s": [round(s, 2) for s in self.train_s]}


def undominated(arms: Sequence[Arm], rule: Dominance = DOMINANCE) -> list[Arm]:
    """The arms no other arm dominates (all of them when domination runs in a circle)."""
    out = [a for a in arms if not any(b is not a and rule.dominates(b, a) for b in arms)]
    return out or list(arms)


def survivors(arms: Sequence[Arm], rule: Dominance = DOMINANCE) -> list[Arm]:
    """Who runs the next rung: each candidate's best learning rate, then those candidates no other dominates (a
    faster candidate stays while it is worth its speed: the recipe's model is carried while it is on the front)."""
    best: dict[int, Arm] = {}
    for a in arms:
        if a.trial not in best or a.score > best[a.trial].score:
            best[a.trial] = a
    return undominated(list(best.values()), rule)


def winner(arms: Sequence[Arm], rule: Dominance = DOMINANCE) -> Arm:
    """The delivery: the best val mAP50-95 among the undominated arms (of equals, the faster)."""
    if not arms:
        raise ValueError("a race needs at least one arm")
    return max(undominated(arms, rule), key=lambda a: (a.score, -(a.latency if a.latency is not None else math.inf)))


def lr_grid(high: float, low: float, n: int) -> list[float]:
    """``n`` learning rates from ``high`` down to ``low``, evenly spaced on a log scale (``n`` = 1: ``high``)."""
    if n <= 1 or low >= high:
        return [high]
    return [high * (low / high) ** (i / (n - 1)) for i in range(n)]
