"""The registry of objectives a study can optimise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from autoprune.registry import Registry

__all__ = ["Objective", "REGISTRY", "register", "get", "names", "DEFAULT", "signs"]


@dataclass(frozen=True)
class Objective:
    name: str  # key in a trial's metrics
    direction: Literal["maximize", "minimize"]
    label: str  # shown in the dashboard and reports
    fmt: str = "{:.4f}"

    def format(self, value: float) -> str:
        return self.fmt.format(value)

    @property
    def sign(self) -> float:
        """Multiplies a value into a loss (smaller is better): -1 for maximised objectives."""
        return -1.0 if self.direction == "maximize" else 1.0


REGISTRY: Registry[Objective] = Registry("objective")
register, get, names = REGISTRY.register, REGISTRY.get, REGISTRY.names


def signs(objective_names: Sequence[str]) -> list[float]:
    return [get(n).sign for n in objective_names]


register(Objective("map50_95", "maximize", "mAP50-95"))
register(Objective("map50", "maximize", "mAP50"))
register(Objective("mask_map50_95", "maximize", "mask mAP50-95"))  # segmentation models (map50_95 stays box mAP)
register(Objective("mask_map50", "maximize", "mask mAP50"))
register(Objective("pose_map50_95", "maximize", "pose mAP50-95"))  # pose models (OKS-based keypoint mAP)
register(Objective("pose_map50", "maximize", "pose mAP50"))
# mAP of the artifact a user ships (latency.precision: int8): the INT8 ONNX model validated through ultralytics
register(Objective("deployed_map50_95", "maximize", "deployed mAP50-95"))
register(Objective("deployed_map50", "maximize", "deployed mAP50"))
register(Objective("params", "minimize", "params", "{:,.0f}"))
register(Objective("macs", "minimize", "MACs", "{:,.0f}"))
register(Objective("latency_ms", "minimize", "latency_ms", "{:.2f}"))
register(Objective("latency_ratio", "minimize", "latency ratio", "{:.3f}"))  # vs the baseline, timed interleaved
# the per-device latency lookup table's estimate (latency.lut): deterministic, convolutions only
register(Objective("latency_lut_ms", "minimize", "latency (lookup table) ms", "{:.2f}"))

DEFAULT: tuple[str, ...] = ("map50_95", "params", "latency_ms")
