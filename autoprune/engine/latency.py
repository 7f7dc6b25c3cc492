"""Measurements of a model: size and measured latency."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import platform
import re
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from autoprune.config.sections import LatencySettings
from autoprune.engine.runtimes import RunSpec, build_runner

logger = logging.getLogger(__name__)

DEFAULT_TIMING = LatencySettings()  # the spec's latency defaults (frozen)

__all__ = ["LatencyStats", "InterleavedLatency", "ROUND_STATISTICS", "measure_latency", "measure_interleaved",
           "device_lock", "device_name", "ratio_of", "round_ratios", "run_spec", "ESTIMATORS"]


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


def measure_latency(model: nn.Module, imgsz: int, device: str = "cpu", timing: LatencySettings = DEFAULT_TIMING,
                    calibration: str | None = None) -> LatencyStats:
    """Median of ``timing.runs`` timed forward passes (of ``timing.batch`` images, on ``timing.runtime``) after
    ``timing.warmup`` untimed ones.

    ``model`` should be the deployable form (eval mode, BN fused); it is not modified.
    The passes run under :func:`device_lock`, one measurement per device at a time.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(timing.threads)
    try:
        run = build_runner(model, timing.runtime, run_spec(device, imgsz, timing, calibration))
        with device_lock(device) as waited:
            _timed(run, timing.warmup)
            times = _timed(run, timing.runs)
    finally:
        torch.set_num_threads(previous)
    return _stats(times, timing.runs, timing, device, imgsz, waited)


def run_spec(device: str, imgsz: int, timing: LatencySettings, calibration: str | None = None) -> RunSpec:
    """How one timed pass runs: device, size and ``timing``'s batch, precision and threads (an INT8 model is
    calibrated on ``calibration``'s training images)."""
    return RunSpec(device, imgsz, timing.batch, timing.half, timing.threads, int8=timing.int8,
                   calibration=calibration)


# How a round's passes of one model become that round's time; a round's ratio is candidate / reference of it.
# "min": the fastest pass, the one other work on the machine disturbed least (load only ever adds time);
# "median": the typical pass (the estimator before load robustness; kept for comparison).
ROUND_STATISTICS: dict[str, Callable[[Sequence[float]], float]] = {"min": min, "median": statistics.median}
# The estimators of the ratio: the median round ratio under a round statistic, or "pooled_min": each model's fastest
# pass over all rounds. Under 2 spinning processes (benchmarks/latency_load.py, 10 timings of 8-10 models) "min"
# kept the quiet ranking within one swap in 10 of 10, "pooled_min" in 9, "median" in 7.
ESTIMATORS = ("pooled_min", *ROUND_STATISTICS)


@dataclass(frozen=True)
class InterleavedLatency:
    """A candidate timed alternately with a reference model (the unpruned baseline)."""

    candidate: LatencyStats
    reference: LatencyStats
    ratio: float  # by ``estimator`` (:func:`ratio_of`): fastest passes pooled, or the median round ratio
    ratio_cv: float  # coefficient of variation of the round ratios
    ratio_p10: float
    ratio_p90: float
    rounds: int
    estimator: str = "min"
    attempts: int = 1  # timed batches of rounds: 1 + the re-measurements a noisy ratio asked for
    unreliable: bool = False  # the round ratios stayed spread over ``max_spread`` after every re-measurement
    # per round, the (candidate, reference) pass times in ms (not stored with the trial)
    samples: tuple[tuple[tuple[float, ...], tuple[float, ...]], ...] = ()

    @property
    def ratio_spread(self) -> float:
        """(p90 - p10) / median of the round ratios: how far the rounds disagree."""
        return _spread(round_ratios(self.samples, self.estimator)) if self.samples else float("nan")

    def estimate(self, estimator: str) -> float:
        """The ratio from the same passes with another round statistic (e.g. ``median``)."""
        return ratio_of(self.samples, estimator)


def round_ratios(samples: Sequence[tuple[Sequence[float], Sequence[float]]], estimator: str) -> list[float]:
    """Each round's ratio (the pooled estimator's spread is judged on the rounds' fastest passes)."""
    stat = ROUND_STATISTICS["min" if estimator == "pooled_min" else estimator]
    return [stat(c) / stat(r) for c, r in samples]


def ratio_of(samples: Sequence[tuple[Sequence[float], Sequence[float]]], estimator: str) -> float:
    if estimator == "pooled_min":
        return min(x for c, _ in samples for x in c) / min(x for _, r in samples for x in r)
    return statistics.median(round_ratios(samples, estimator))


def _stats(times: Sequence[float], runs: int, timing: LatencySettings, device: str, imgsz: int,
           waited: float) -> LatencyStats:
    s = sorted(times)
    return LatencyStats(median_ms=statistics.median(s), p10_ms=_quantile(s, 0.1), p90_ms=_quantile(s, 0.9),
                        mean_ms=statistics.fmean(s), std_ms=statistics.pstdev(s), runs=runs, warmup=timing.warmup,
                        threads=timing.threads, device=str(device), imgsz=imgsz, device_name=device_name(device),
                        host=socket.gethostname(), lock_wait_ms=round(waited * 1000.0, 3), runtime=timing.runtime,
                        batch=timing.batch, precision=timing.precision)


def _timed(run: Callable[[], object], n: int) -> tuple[float, ...]:
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        run()
        ts.append((time.perf_counter() - t0) * 1000.0)
    return tuple(ts)


def measure_interleaved(candidate: nn.Module, reference: nn.Module, imgsz: int, device: str = "cpu",
                        timing: LatencySettings = DEFAULT_TIMING, pause_s: float = 1.0,
                        calibration: str | None = None) -> InterleavedLatency:
    """Time ``candidate`` and ``reference`` in alternating rounds (A B, then B A, ...), both on ``timing.runtime``.

    Each of ``timing.rounds`` rounds times ``max(1, runs // rounds)`` passes of each model; the ratio is
    ``timing.estimator``'s (:func:`ratio_of`): by default the median over rounds of the candidate's fastest pass
    over the reference's (slow drifts of a shared machine cancel out), or each model's fastest pass over all
    rounds. When the round ratios
    spread by more than ``timing.max_spread`` ((p90 - p10) / median) the pair is timed again, up to
    ``timing.retries`` times, later (after ``pause_s`` times the attempt, with the device lock released) and pooled
    with the rounds before; a ratio still that spread is marked ``unreliable``. An INT8 pair (both models
    quantized alike) is calibrated on ``calibration``'s training images.
    """
    t = timing
    if t.estimator not in ESTIMATORS:
        raise ValueError(f"unknown latency estimator {t.estimator!r}; known: {', '.join(ESTIMATORS)}")
    previous = torch.get_num_threads()
    torch.set_num_threads(t.threads)
    rounds = max(1, min(t.rounds, t.runs))
    per_round = max(1, t.runs // rounds)
    samples: list[tuple[tuple[float, ...], tuple[float, ...]]] = []
    waited, attempts = 0.0, 0
    try:
        rs = run_spec(device, imgsz, t, calibration)
        runners = {"c": build_runner(candidate, t.runtime, rs), "r": build_runner(reference, t.runtime, rs)}
        while True:
            with device_lock(device) as w:
                waited += w
                for run in runners.values():
                    _timed(run, t.warmup if attempts == 0 else min(t.warmup, 2))
                for i in range(rounds):
                    got = {key: _timed(runners[key], per_round) for key in (("c", "r") if i % 2 == 0 else ("r", "c"))}
                    samples.append((got["c"], got["r"]))
            attempts += 1
            spread = _spread(round_ratios(samples, t.estimator))
            if spread <= t.max_spread or attempts > t.retries:
                break
            logger.info("latency ratio spread %.2f over %d rounds > %.2f: timing again (%d of %d)", spread,
                        len(samples), t.max_spread, attempts, t.retries)
            time.sleep(pause_s * attempts)
    finally:
        torch.set_num_threads(previous)
    ratios = round_ratios(samples, t.estimator)
    n = per_round * len(samples)
    mean = statistics.fmean(ratios)
    ordered = sorted(ratios)
    unreliable = _spread(ratios) > t.max_spread
    if unreliable and t.retries:
        logger.warning("latency ratio stays spread (%.2f > %.2f after %d timings): recorded as unreliable",
                       _spread(ratios), t.max_spread, attempts)
    return InterleavedLatency(
        candidate=_stats([x for c, _ in samples for x in c], n, t, device, imgsz, waited),
        reference=_stats([x for _, r in samples for x in r], n, t, device, imgsz, waited),
        ratio=ratio_of(samples, t.estimator), ratio_cv=statistics.pstdev(ratios) / mean if mean else float("nan"),
        ratio_p10=_quantile(ordered, 0.1), ratio_p90=_quantile(ordered, 0.9), rounds=len(samples),
        estimator=t.estimator, attempts=attempts, unreliable=unreliable, samples=tuple(samples))


def _spread(ratios: Sequence[float]) -> float:
    ordered = sorted(ratios)
    med = statistics.median(ordered)
    return (_quantile(ordered, 0.9) - _quantile(ordered, 0.1)) / med if med else float("inf")
