"""Measuring a model: mAP from ultralytics' validator, parameters, MACs and latency."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from autoprune.config.spec import TrialSettings
from autoprune.engine import runtimes
from autoprune.engine.latency import InterleavedLatency, measure_interleaved, measure_latency, run_spec
from autoprune.engine.latency_table import LatencyTable
from autoprune.engine.runtimes import export_deployed

__all__ = ["Measurement", "Phases", "measure_model", "interleaved_record"]


@dataclass(frozen=True)
class Measurement:
    map50_95: float
    map50: float
    params: int
    macs: int
    latency_ms: float
    latency: dict[str, Any]
    latency_ratio: float | None = None  # candidate / baseline, timed interleaved (None when not measured)
    extra: tuple[tuple[str, float], ...] = ()  # the task's own mAPs: mask_map50_95, pose_map50_95, ...
    latency_lut_ms: float | None = None  # the latency lookup table's estimate (None without latency.lut)

    def metrics(self) -> dict[str, float]:
        m = {"map50_95": self.map50_95, "map50": self.map50, "params": float(self.params),
             "macs": float(self.macs), "latency_ms": self.latency_ms, **dict(self.extra)}
        if self.latency_ratio is not None:
            m["latency_ratio"] = self.latency_ratio
        if self.latency_lut_ms is not None:
            m["latency_lut_ms"] = self.latency_lut_ms
        return m


class Phases:
    """Seconds spent per named phase of a trial."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t0, 3)


def interleaved_record(il: InterleavedLatency) -> dict[str, Any]:
    """The ``latency`` record of an interleaved timing: the candidate's pass statistics, the ratio with its spread,
    how many timings it took, whether it stayed unreliable, and the ratio the median estimator gives."""
    return {**asdict(il.candidate), "spread": il.candidate.spread, "ratio": il.ratio, "ratio_cv": il.ratio_cv,
            "ratio_p10": il.ratio_p10, "ratio_p90": il.ratio_p90, "ratio_spread": il.ratio_spread,
            "rounds": il.rounds, "reference_median_ms": il.reference.median_ms, "estimator": il.estimator,
            "ratio_median_estimator": il.estimate("median"), "attempts": il.attempts, "unreliable": il.unreliable}


def measure_model(model: nn.Module, settings: TrialSettings, phases: Phases | None = None,
                  reference: nn.Module | None = None,
                  before_latency: Callable[[], object] | None = None) -> Measurement:
    """mAP from ultralytics' validator, parameter and MAC counts, and measured latency.

    With ``settings.latency.interleave`` the latency is timed alternately with ``reference`` (the
    unpruned base; ``model`` itself when None, giving a ratio near 1) and the ratio is reported.
    ``before_latency`` is called before the timing starts (the driver waits there for other work on the CPU).
    """
    from autoprune.adapters import pruning, yolo

    s = settings
    phases = phases or Phases()
    with phases("validate"):
        val = yolo.validate(model, s.data, s.imgsz, device=s.device, batch=s.finetune.batch, threads=s.threads)
    ratio = None
    if before_latency is not None:
        before_latency()
    with phases("latency"):
        deployed = yolo.deploy_copy(model)
        lat_cfg = s.latency
        imgsz = lat_cfg.imgsz or s.imgsz
        if lat_cfg.interleave:
            ref = yolo.deploy_copy(reference if reference is not None else model)
            # timed against itself (the baseline), the ratio is 1 by definition and its spread only says how noisy
            # the machine is: recorded, never timed again for it
            own = lat_cfg if reference is not None else dataclasses.replace(lat_cfg, retries=0)
            il = measure_interleaved(deployed, ref, imgsz, s.device, own, calibration=s.data)
            lat, ratio = il.candidate, il.ratio
            latency = interleaved_record(il)
        else:
            lat = measure_latency(deployed, imgsz, s.device, lat_cfg, calibration=s.data)
            latency = {**asdict(lat), "spread": lat.spread}
        lut_ms = None
        if lat_cfg.lut:
            table = LatencyTable(lat_cfg.runtime, s.device, lat_cfg.threads, lat_cfg.batch, lat_cfg.half)
            est = table.estimate(deployed, imgsz)
            lut_ms = est.ms
            latency["lut"] = {**asdict(est), "table": str(table.path)}
        macs = pruning.count_macs(model, s.imgsz)
    extra = val.extra
    if lat_cfg.int8 or s.deployed_map:
        with phases("validate_deployed"):
            extra += deployed_map(deployed, s, imgsz)
    return Measurement(map50_95=val.map50_95, map50=val.map50, params=yolo.count_params(model), macs=macs,
                       latency_ms=lat.median_ms, latency=latency, latency_ratio=ratio, extra=extra,
                       latency_lut_ms=lut_ms)


def deployed_map(deployed: nn.Module, s: TrialSettings, imgsz: int) -> tuple[tuple[str, float], ...]:
    """``deployed_map50``/``deployed_map50_95``: the model as it is deployed, at the deployment size ``imgsz``,
    validated on the val split. On a runtime that runs an exported file (ONNX Runtime, OpenVINO, TensorRT): that
    file exported (and, in INT8, quantized) as it is timed, batch 1, through ultralytics' backend for the format; on
    the torch runtimes: the model itself at that size."""
    import shutil

    from autoprune.adapters import yolo

    if runtimes.REGISTRY.get(s.latency.runtime).artifact is None:
        val = yolo.validate(deployed, s.data, imgsz, device=s.device, batch=s.finetune.batch, threads=s.threads)
        return ("deployed_map50", val.map50), ("deployed_map50_95", val.map50_95)
    path = export_deployed(deployed, run_spec(s.device, imgsz, dataclasses.replace(s.latency, batch=1), s.data),
                           s.latency.runtime)
    try:
        m50, m = yolo.validate_exported(path, s.data, imgsz, yolo.model_task(deployed), device=s.device)
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)
    return ("deployed_map50", m50), ("deployed_map50_95", m)
