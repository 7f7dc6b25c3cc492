"""Measurements of a model: size and measured latency."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["LatencyStats", "measure_latency"]


@dataclass(frozen=True)
class LatencyStats:
    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    runs: int
    warmup: int
    threads: int
    device: str
    imgsz: int

    @property
    def spread(self) -> float:
        """(p90 - p10) / median: the relative spread of the timed passes."""
        return (self.p90_ms - self.p10_ms) / self.median_ms if self.median_ms else float("nan")


def _quantile(sorted_vals: list[float], q: float) -> float:
    idx = q * (len(sorted_vals) - 1)
    lo, hi = int(idx), min(int(idx) + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (idx - lo)


@torch.inference_mode()
def measure_latency(model: nn.Module, imgsz: int, device: str = "cpu", warmup: int = 10, runs: int = 50,
                    threads: int = 2) -> LatencyStats:
    """Median of ``runs`` timed batch-1 forward passes after ``warmup`` untimed ones.

    ``model`` should be the deployable form (eval mode, BN fused); it is not modified.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        dev = torch.device(device)
        model = model.to(dev).eval()
        x = torch.rand(1, 3, imgsz, imgsz, device=dev)
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        for _ in range(warmup):
            model(x)
        sync()
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            model(x)
            sync()
            times.append((time.perf_counter() - t0) * 1000.0)
    finally:
        torch.set_num_threads(previous)
    s = sorted(times)
    return LatencyStats(median_ms=statistics.median(s), p10_ms=_quantile(s, 0.1), p90_ms=_quantile(s, 0.9),
                        mean_ms=statistics.fmean(s), std_ms=statistics.pstdev(s), runs=runs, warmup=warmup,
                        threads=threads, device=str(device), imgsz=imgsz)
