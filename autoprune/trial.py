"""One trial: prune the base model by a policy in k steps, fine-tune between steps, measure."""

from __future__ import annotations

import logging
import math
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from autoprune import criteria
from autoprune.errors import AutopruneError, TrialError
from autoprune.measure import measure_interleaved, measure_latency
from autoprune.policy import Layer, Policy
from autoprune.spec import SearchSpec

logger = logging.getLogger(__name__)

__all__ = ["Measurement", "TrialResult", "measure_model", "run_trial", "run_trial_safely", "TRACE_IMGSZ"]

TRACE_IMGSZ = 64  # input size for dependency-graph tracing; channel structure does not depend on it


@dataclass(frozen=True)
class Measurement:
    map50_95: float
    map50: float
    params: int
    macs: int
    latency_ms: float
    latency: dict[str, Any]
    latency_ratio: float | None = None  # candidate / baseline, timed interleaved (None when not measured)

    def metrics(self) -> dict[str, float]:
        m = {"map50_95": self.map50_95, "map50": self.map50, "params": float(self.params),
             "macs": float(self.macs), "latency_ms": self.latency_ms}
        if self.latency_ratio is not None:
            m["latency_ratio"] = self.latency_ratio
        return m


@dataclass
class TrialResult:
    ok: bool
    metrics: dict[str, float] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


class _Phases:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t0, 3)


def measure_model(model: torch.nn.Module, spec: SearchSpec, data: str, phases: _Phases | None = None,
                  reference: torch.nn.Module | None = None) -> Measurement:
    """mAP from ultralytics' validator, parameter and MAC counts, and measured latency.

    With ``spec.latency.interleave`` the latency is timed alternately with ``reference`` (the
    unpruned base; ``model`` itself when None, giving a ratio near 1) and the ratio is reported.
    """
    from autoprune.adapters import tp, ultra

    phases = phases or _Phases()
    with phases("validate"):
        val = ultra.validate(model, data, spec.imgsz, device=spec.device, batch=spec.finetune.batch,
                             threads=spec.train_threads)
    ratio = None
    with phases("latency"):
        deployed = ultra.deploy_copy(model)
        lat_cfg = spec.latency
        if lat_cfg.interleave:
            ref = ultra.deploy_copy(reference if reference is not None else model)
            il = measure_interleaved(deployed, ref, spec.imgsz, spec.device, lat_cfg.warmup, lat_cfg.runs,
                                     lat_cfg.rounds, lat_cfg.threads)
            lat, ratio = il.candidate, il.ratio
            latency = {**asdict(lat), "spread": lat.spread, "ratio": il.ratio, "ratio_cv": il.ratio_cv,
                       "ratio_p10": il.ratio_p10, "ratio_p90": il.ratio_p90, "rounds": il.rounds,
                       "reference_median_ms": il.reference.median_ms}
        else:
            lat = measure_latency(deployed, spec.imgsz, spec.device, lat_cfg.warmup, lat_cfg.runs, lat_cfg.threads)
            latency = {**asdict(lat), "spread": lat.spread}
        macs = tp.count_macs(model, spec.imgsz)
    return Measurement(map50_95=val.map50_95, map50=val.map50, params=tp.count_params(model), macs=macs,
                       latency_ms=lat.median_ms, latency=latency, latency_ratio=ratio)


def _accumulate_gradients(model: torch.nn.Module, spec: SearchSpec, data: str) -> None:
    from autoprune.adapters import ultra

    model.train()
    model.zero_grad(set_to_none=True)
    for batch in ultra.training_batches(data, spec.imgsz, spec.finetune.batch, spec.finetune.gradient_batches,
                                        spec.device, spec.seed):
        loss = ultra.compute_loss(model, batch)
        if not torch.isfinite(loss):
            raise TrialError("training loss is not finite while computing gradients")
        loss.backward()


def run_trial(spec: SearchSpec, policy: Policy, layers: Sequence[Layer], data: str, workdir: Path) -> TrialResult:
    """Run one trial for real; raises on failure (see :func:`run_trial_safely`)."""
    from autoprune.adapters import tp, ultra

    ultra.set_threads(spec.train_threads)
    torch.manual_seed(spec.seed)
    phases = _Phases()
    crit = criteria.get(policy.criterion)
    original = {layer.name: layer.channels for layer in layers}
    with phases("load"):
        model = ultra.load_model(spec.model).to(spec.device)
    channels: dict[str, int] = dict(original)
    for step in range(1, policy.iterations + 1):
        keep = tp.target_keep(original, policy.ratio_map, step, policy.iterations, policy.round_to)
        if crit.needs_gradients:
            with phases("gradients"):
                _accumulate_gradients(model, spec, data)
        if crit.regularize:
            with phases("regularize"):
                batches = ultra.training_batches(data, spec.imgsz, spec.finetune.batch,
                                                 spec.finetune.gradient_batches, spec.device, spec.seed + step)
                tp.group_norm_regularize(model, TRACE_IMGSZ, batches, ultra.compute_loss, policy.lr, reg=1e-3)
        with phases("prune"):
            channels = tp.prune_step(model, keep, tp.importance(crit.name), TRACE_IMGSZ)
            model.zero_grad(set_to_none=True)
        empty = [n for n, c in channels.items() if c < 1]
        if empty:
            raise TrialError(f"layer {empty[0]} was pruned to nothing")
        with phases("finetune"):
            cfg = ultra.FinetuneConfig(data=data, imgsz=spec.imgsz, epochs=policy.epochs, lr=policy.lr,
                                       ema=policy.ema, batch=spec.finetune.batch, device=spec.device,
                                       workers=spec.finetune.workers, threads=spec.train_threads,
                                       optimizer=spec.finetune.optimizer, seed=spec.seed)
            ultra.finetune(model, cfg, workdir / f"step{step}")
    reference = ultra.load_model(spec.model) if spec.latency.interleave else None
    measurement = measure_model(model, spec, data, phases, reference=reference)
    metrics = measurement.metrics()
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    if bad:
        raise TrialError(f"metric {bad[0]} is not finite")
    with phases("roundtrip"):
        checkpoint = workdir / "pruned.pt"
        roundtrip = verify_roundtrip(model, checkpoint, spec, data, measurement)
    attrs = {
        "policy": policy.to_dict(),
        "channels": channels,
        "latency": measurement.latency,
        "seconds": phases.seconds,
        "checkpoint": str(checkpoint),
        "roundtrip": roundtrip,
    }
    return TrialResult(ok=True, metrics=metrics, attrs=attrs)


ROUNDTRIP_TOLERANCE = 1e-3


def verify_roundtrip(model: torch.nn.Module, path: Path, spec: SearchSpec, data: str,
                     measured: Measurement) -> dict[str, float]:
    """Save ``model`` as a plain ultralytics checkpoint, reload it and validate it again.

    The trial's metrics count only if the reloaded checkpoint has the same parameter count
    and mAP (within ``ROUNDTRIP_TOLERANCE``); otherwise :class:`TrialError`.
    """
    from autoprune.adapters import tp, ultra

    ultra.save_checkpoint(model, path)
    reloaded = ultra.load_model(path).to(spec.device)
    params = tp.count_params(reloaded)
    if params != measured.params:
        raise TrialError(f"round trip: {path.name} reloads with {params} parameters, the trial measured "
                         f"{measured.params}")
    val = ultra.validate(reloaded, data, spec.imgsz, device=spec.device, batch=spec.finetune.batch,
                         threads=spec.train_threads)
    for name, got, want in (("mAP50-95", val.map50_95, measured.map50_95), ("mAP50", val.map50, measured.map50)):
        if abs(got - want) > ROUNDTRIP_TOLERANCE:
            raise TrialError(f"round trip: {path.name} validates to {name} {got:.4f}, the trial measured {want:.4f}")
    return {"map50_95": val.map50_95, "map50": val.map50, "params": float(params)}


def failure_reason(e: BaseException) -> str:
    """The one-line reason a failed trial records."""
    if isinstance(e, AutopruneError):
        return str(e)
    logger.debug("trial failed:\n%s", traceback.format_exc())
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}"[:500]


def run_trial_safely(spec: SearchSpec, policy: Policy, layers: Sequence[Layer], data: str,
                     workdir: Path) -> TrialResult:
    """Like :func:`run_trial`, but every failure becomes a failed result with a one-line reason."""
    t0 = time.perf_counter()
    try:
        result = run_trial(spec, policy, layers, data, workdir)
    except Exception as e:  # a trial must never take the study down
        result = TrialResult(ok=False, reason=failure_reason(e))
    result.attrs.setdefault("policy", policy.to_dict())
    result.attrs["wall_seconds"] = round(time.perf_counter() - t0, 3)
    return result


def metrics_from(mapping: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in mapping.items()}
