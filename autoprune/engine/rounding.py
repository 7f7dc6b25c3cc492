"""Channel rounding for the target device, chosen from a measurement (``space.round_to: auto``).

Convolution kernels of many devices run channel counts off a multiple of 8 slower than the next
multiple up (vector widths, tensor cores), so light pruning can make a model slower. This
times 3x3 convolutions at every channel count from 8 below to a multiple of 8 (at two widths) and
picks 8 when counts off a multiple are slower than the multiple above by more than
``TOLERANCE``, else 1. The result is cached per (device name, runtime, threads) under
``$AUTOPRUNE_HOME/cache``. Measured with PyTorch on the device (an ONNX Runtime or TensorRT target
is approximated by it).
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from typing import Any

import torch
from torch import nn

from autoprune.engine.latency import device_lock, device_name
from autoprune.paths import home

logger = logging.getLogger(__name__)

__all__ = ["choose_round_to", "measure_alignment", "TOLERANCE", "WIDTHS"]

TOLERANCE = 0.03  # off-multiple counts up to 3% slower than the multiple above do not justify rounding
WIDTHS = (64, 128)
SIZE = 40  # feature map side of the timed convolutions


@torch.inference_mode()
def _time(c: int, device: torch.device, runs: int) -> float:
    conv = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.Conv2d(c, c, 3, padding=1, bias=False))
    conv = conv.to(device).eval()
    x = torch.rand(1, c, SIZE, SIZE, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        conv(x)
    sync()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        conv(x)
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_alignment(device: str = "cpu", threads: int = 2, runs: int = 15) -> dict[str, Any]:
    """Median over counts off a multiple of 8 of latency(count) / latency(next multiple of 8 up)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    dev = torch.device(device)
    ratios = []
    try:
        with device_lock(device):
            for width in WIDTHS:
                aligned = _time(width, dev, runs)
                for c in range(width - 7, width):
                    ratios.append(_time(c, dev, runs) / aligned)
    finally:
        torch.set_num_threads(previous)
    return {"ratio": statistics.median(ratios), "max_ratio": max(ratios), "counts": len(ratios)}


def choose_round_to(device: str, runtime: str, threads: int) -> tuple[int, dict[str, Any]]:
    """8 or 1 for this device (measured once, then cached) and the measurement behind it."""
    name = device_name(device)
    key = f"{name}|{torch.device(device).type}|{runtime}|{threads}|torch {torch.__version__}"
    path = home() / "cache" / "round_to.json"
    cache: dict[str, Any] = {}
    if path.is_file():
        try:
            cache = json.loads(path.read_text())
        except ValueError:
            cache = {}
    if key not in cache:
        m = measure_alignment(device, threads)
        cache[key] = {**m, "round_to": 8 if m["ratio"] > 1.0 + TOLERANCE else 1}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        tmp.replace(path)
    entry = cache[key]
    return int(entry["round_to"]), entry
