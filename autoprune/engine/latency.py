"""Measurements of a model: size and measured latency."""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import re
import socket
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from autoprune.engine.runtimes import RunSpec, build_runner

__all__ = ["LatencyStats", "InterleavedLatency", "measure_latency", "measure_interleaved", "device_lock",
           "device_name"]


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
    device_name: str = ""
    host: str = ""
    lock_wait_ms: float = 0.0
    runtime: str = "torch"
    batch: int = 1
    precision: str = "fp32"

    @property
    def spread(self) -> float:
        """(p90 - p10) / median: the relative spread of the timed passes."""
        return (self.p90_ms - self.p10_ms) / self.median_ms if self.median_ms else float("nan")


def _quantile(sorted_vals: list[float], q: float) -> float:
    idx = q * (len(sorted_vals) - 1)
    lo, hi = int(idx), min(int(idx) + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (idx - lo)


def device_name(device: str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


@contextlib.contextmanager
def device_lock(device: str) -> Iterator[float]:
    """Hold this host's exclusive latency lock for ``device``; yields the seconds spent waiting.

    Trials running side by side on one machine (Ray workers are processes) take turns, so
    no two latency measurements on the same device overlap.
    """
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(torch.device(device)))
    path = os.path.join(tempfile.gettempdir(), f"autoprune-latency-{name}.lock")
    t0 = time.perf_counter()
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield time.perf_counter() - t0
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def measure_latency(model: nn.Module, imgsz: int, device: str = "cpu", warmup: int = 10, runs: int = 50,
                    threads: int = 2, runtime: str = "torch", batch: int = 1, half: bool = False) -> LatencyStats:
    """Median of ``runs`` timed forward passes (of ``batch`` images, on ``runtime``) after ``warmup`` untimed ones.

    ``model`` should be the deployable form (eval mode, BN fused); it is not modified.
    The passes run under :func:`device_lock`, one measurement per device at a time.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    times = []
    try:
        run = build_runner(model, runtime, RunSpec(device, imgsz, batch, half, threads))
        with device_lock(device) as waited:
            for _ in range(warmup):
                run()
            for _ in range(runs):
                t0 = time.perf_counter()
                run()
                times.append((time.perf_counter() - t0) * 1000.0)
    finally:
        torch.set_num_threads(previous)
    return _stats(times, runs, warmup, threads, device, imgsz, waited, runtime, batch, half)


@dataclass(frozen=True)
class InterleavedLatency:
    """A candidate timed alternately with a reference model (the unpruned baseline)."""

    candidate: LatencyStats
    reference: LatencyStats
    ratio: float  # median over rounds of candidate median / reference median
    ratio_cv: float  # coefficient of variation of the per-round ratios
    ratio_p10: float
    ratio_p90: float
    rounds: int


def _stats(times: list[float], runs: int, warmup: int, threads: int, device: str, imgsz: int,
           waited: float, runtime: str = "torch", batch: int = 1, half: bool = False) -> LatencyStats:
    s = sorted(times)
    return LatencyStats(median_ms=statistics.median(s), p10_ms=_quantile(s, 0.1), p90_ms=_quantile(s, 0.9),
                        mean_ms=statistics.fmean(s), std_ms=statistics.pstdev(s), runs=runs, warmup=warmup,
                        threads=threads, device=str(device), imgsz=imgsz, device_name=device_name(device),
                        host=socket.gethostname(), lock_wait_ms=round(waited * 1000.0, 3), runtime=runtime,
                        batch=batch, precision="fp16" if half else "fp32")


def measure_interleaved(candidate: nn.Module, reference: nn.Module, imgsz: int, device: str = "cpu",
                        warmup: int = 10, runs: int = 50, rounds: int = 10, threads: int = 2, runtime: str = "torch",
                        batch: int = 1, half: bool = False) -> InterleavedLatency:
    """Time ``candidate`` and ``reference`` in alternating rounds (A B, then B A, ...), both on ``runtime``.

    Each round times ``max(1, runs // rounds)`` passes of each model; a round's ratio is
    candidate median / reference median, so slow drifts of a shared machine cancel out.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    rounds = max(1, min(rounds, runs))
    per_round = max(1, runs // rounds)
    times: dict[str, list[float]] = {"c": [], "r": []}
    ratios: list[float] = []
    try:
        rs = RunSpec(device, imgsz, batch, half, threads)
        runners = {"c": build_runner(candidate, runtime, rs), "r": build_runner(reference, runtime, rs)}
        with device_lock(device) as waited:
            for run in runners.values():
                for _ in range(warmup):
                    run()
            for i in range(rounds):
                med = {}
                for key in ("c", "r") if i % 2 == 0 else ("r", "c"):
                    ts = []
                    for _ in range(per_round):
                        t0 = time.perf_counter()
                        runners[key]()
                        ts.append((time.perf_counter() - t0) * 1000.0)
                    times[key].extend(ts)
                    med[key] = statistics.median(ts)
                ratios.append(med["c"] / med["r"])
    finally:
        torch.set_num_threads(previous)
    n = per_round * rounds
    mean = statistics.fmean(ratios)
    ordered = sorted(ratios)
    return InterleavedLatency(
        candidate=_stats(times["c"], n, warmup, threads, device, imgsz, waited, runtime, batch, half),
        reference=_stats(times["r"], n, warmup, threads, device, imgsz, waited, runtime, batch, half),
        ratio=statistics.median(ratios), ratio_cv=statistics.pstdev(ratios) / mean if mean else float("nan"),
        ratio_p10=_quantile(ordered, 0.1), ratio_p90=_quantile(ordered, 0.9), rounds=rounds)
