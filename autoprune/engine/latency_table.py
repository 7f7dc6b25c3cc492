"""A per-device latency lookup table (as in HALP): what each convolution of a model costs on the runtime.

Every convolution of the deployable model (BN fused) is keyed by its shape: input and output
channels, groups, kernel, stride, padding, dilation, input height and width, and the activation that
follows it. An entry is timed once, as a one-layer model on the deployment runtime, device, batch and
precision, and cached under ``$AUTOPRUNE_HOME/cache/latency_table/`` (one JSON file per device,
runtime, threads, batch, precision and library versions). A model's estimate is the sum of its
convolutions' entries: deterministic once the entries are cached (no timing noise) and cheap to
compute. It leaves out what is not a convolution (concatenation, upsampling, the head's decoding),
so it is best read as a ratio to the base's estimate; ``benchmarks/latency.py --lut`` checks that
ratio against the measured one.

``torch``, ``onnxruntime`` and ``openvino`` time the layer on themselves; ``cuda-graph`` and ``tensorrt`` as a
captured CUDA graph (TensorRT is approximated by it).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import logging
import math
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.engine.latency import device_lock, device_name
from autoprune.engine.runtimes import RunSpec, build_layer_runner
from autoprune.paths import home

logger = logging.getLogger(__name__)

__all__ = ["ConvShape", "LatencyTable", "LutEstimate", "conv_shapes"]

SAMPLE_MS = 1.0  # a timed sample repeats a layer until it lasts about this long (sub-millisecond layers)


@dataclass(frozen=True)
class ConvShape:
    """One convolution as the table keys it (input ``height`` x ``width``; ``act``: the activation's class name)."""

    cin: int
    cout: int
    groups: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    height: int
    width: int
    act: str = ""

    @property
    def key(self) -> str:
        def pair(p: tuple[int, int]) -> str:
            return f"{p[0]}x{p[1]}"

        return (f"{self.cin}-{self.cout} g{self.groups} k{pair(self.kernel)} s{pair(self.stride)} "
                f"p{pair(self.padding)} d{pair(self.dilation)} {self.height}x{self.width} {self.act or '-'}")

    def layer(self) -> nn.Module:
        conv = nn.Conv2d(self.cin, self.cout, self.kernel, self.stride, self.padding, self.dilation, self.groups,
                         bias=True)  # fused BN leaves a bias
        act = getattr(nn, self.act, None) if self.act else None
        return nn.Sequential(conv, act()) if isinstance(act, type) and issubclass(act, nn.Module) else conv


@dataclass(frozen=True)
class LutEstimate:
    ms: float  # sum of the model's convolution entries
    layers: int  # convolutions in the model
    timed_now: int  # entries this estimate had to time (0 once the table knows the model's shapes)


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, tuple) else (int(v), int(v))


@torch.inference_mode()
def conv_shapes(model: nn.Module, imgsz: int) -> list[ConvShape]:
    """The shape of every ``nn.Conv2d`` a forward pass at ``imgsz`` runs through (one pass of batch 1).

    A convolution's activation is that of the module holding it as ``conv`` next to an ``act``
    (ultralytics' ``Conv``, fused or not); a bare convolution has none.
    """
    acts: dict[int, str] = {}
    for m in model.modules():
        conv, act = getattr(m, "conv", None), getattr(m, "act", None)
        if isinstance(conv, nn.Conv2d) and isinstance(act, nn.Module) and not isinstance(act, nn.Identity):
            acts[id(conv)] = type(act).__name__
    shapes: list[ConvShape] = []

    def hook(conv: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        assert isinstance(conv, nn.Conv2d)
        _, _, h, w = inputs[0].shape
        shapes.append(ConvShape(conv.in_channels, conv.out_channels, conv.groups, _pair(conv.kernel_size),
                                _pair(conv.stride), _pair(conv.padding), _pair(conv.dilation), int(h), int(w),
                                acts.get(id(conv), "")))

    param = next(model.parameters())
    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    was_training = model.training
    try:
        model.eval()
        model(torch.zeros(1, 3, imgsz, imgsz, device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return shapes


def _versions(runtime: str) -> str:
    out = f"torch {torch.__version__}"
    if runtime in ("onnxruntime", "openvino"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out += f" {runtime} {importlib.metadata.version(runtime)}"
    return out


class LatencyTable:
    """The cached table of one (device, runtime, threads, batch, precision); entries timed on first need."""

    def __init__(self, runtime: str = "torch", device: str = "cpu", threads: int = 2, batch: int = 1,
                 half: bool = False, runs: int = 15, warmup: int = 3, folder: Path | None = None) -> None:
        self.runtime, self.device, self.threads, self.batch, self.half = runtime, device, threads, batch, half
        self.runs, self.warmup = runs, warmup
        self.context = {"device_name": device_name(device), "device": torch.device(device).type, "runtime": runtime,
                        "threads": threads, "batch": batch, "precision": "fp16" if half else "fp32",
                        "versions": _versions(runtime)}
        digest = hashlib.sha256(json.dumps(self.context, sort_keys=True).encode()).hexdigest()[:16]
        self.path = (folder or home() / "cache" / "latency_table") / f"{digest}.json"
        self.entries: dict[str, float] = {}
        self._load()

    def _load(self) -> None:
        if self.path.is_file():
            try:
                raw = json.loads(self.path.read_text())
                self.entries = {str(k): float(v) for k, v in raw.get("entries", {}).items()}
            except (ValueError, AttributeError, TypeError):
                logger.warning("latency table %s is unreadable; timing its entries again", self.path)
                self.entries = {}

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _save(self, new: dict[str, float]) -> None:
        """Merge ``new`` into the file (other processes may have added entries meanwhile)."""
        with self._file_lock():
            self._load()
            self.entries.update(new)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"context": self.context, "entries": self.entries}, indent=0, sort_keys=True))
            tmp.replace(self.path)

    def _time(self, shape: ConvShape) -> float:
        rs = RunSpec(self.device, shape.height, self.batch, self.half, self.threads, shape.cin, shape.width)
        run = build_layer_runner(shape.layer(), self.runtime, rs)
        for _ in range(self.warmup):
            run()
        t0 = time.perf_counter()
        run()
        once = max(time.perf_counter() - t0, 1e-6)
        reps = max(1, math.ceil(SAMPLE_MS / 1000.0 / once))
        samples = []
        for _ in range(self.runs):
            t0 = time.perf_counter()
            for _ in range(reps):
                run()
            samples.append((time.perf_counter() - t0) * 1000.0 / reps)
        return statistics.median(samples)

    def lookup(self, shapes: list[ConvShape]) -> tuple[list[float], int]:
        """Each shape's entry (timing the missing ones first) and how many were timed now."""
        missing = sorted({s.key: s for s in shapes if s.key not in self.entries}.values(), key=lambda s: s.key)
        if missing:
            previous = torch.get_num_threads()
            torch.set_num_threads(self.threads)
            try:
                with device_lock(self.device):
                    new = {s.key: self._time(s) for s in missing}
            finally:
                torch.set_num_threads(previous)
            self._save(new)
            logger.debug("latency table: timed %d new convolution shapes (%d known)", len(new), len(self.entries))
        return [self.entries[s.key] for s in shapes], len(missing)

    def estimate(self, model: nn.Module, imgsz: int) -> LutEstimate:
        """The sum of the table's entries over ``model``'s convolutions at ``imgsz`` (traced, not modified)."""
        shapes = conv_shapes(model, imgsz)
        values, timed = self.lookup(shapes)
        return LutEstimate(ms=float(sum(values)), layers=len(shapes), timed_now=timed)

    def describe(self) -> dict[str, Any]:
        return {**self.context, "entries": len(self.entries), "file": str(self.path)}
