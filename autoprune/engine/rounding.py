"""Channel rounding for the target device, chosen from a measurement (``space.round_to: auto``).

Convolution kernels of many devices run channel counts off a multiple of 8 slower than the next
multiple up (vector widths, tensor cores), so light pruning can make a model slower. This
times 3x3 convolutions at every channel count from 8 below to a multiple of 8 (at two widths) and
picks 8 when counts off a multiple are slower than the multiple above by more than
``TOLERANCE``, else 1. The result is cached per (device name, runtime, precision, threads) under
``$AUTOPRUNE_HOME/cache``. Measured with PyTorch on the device (an ONNX Runtime or TensorRT target
is approximated by it). On a GPU the convolutions are replayed from a CUDA graph in the deployed
precision (fp16 in half, else fp32), as the GPU runtimes run them: timed eagerly, kernel launches
dilute the difference (on an H100, counts off a multiple of 8 took 1.29-1.42x the time of the
multiple above eagerly, 2.14-2.16x replayed; benchmarks/README.md, GPU section).
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Callable
from functools import partial
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
GRAPH_REPLAYS = 20  # graph replays per timed sample on a GPU (one replay is a few microseconds)


@torch.inference_mode()
def _time(c: int, device: torch.device, runs: int, dtype: torch.dtype = torch.float32, graph: bool = False) -> float:
    conv = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.Conv2d(c, c, 3, padding=1, bias=False))
    conv = conv.to(device, dtype).eval()
    x = torch.rand(1, c, SIZE, SIZE, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    call, per = (_graph_replay(conv, x), GRAPH_REPLAYS) if graph else (partial(conv, x), 1)
    for _ in range(3):
        call()
    sync()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        call()
        sync()
        times.append((time.perf_counter() - t0) / per)
    return statistics.median(times)


def _graph_replay(conv: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """A function replaying ``conv(x)`` from a CUDA graph ``GRAPH_REPLAYS`` times."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as torch.cuda.graph asks
        for _ in range(3):
            conv(x)
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        conv(x)

    def replay() -> None:
        for _ in range(GRAPH_REPLAYS):
            g.replay()
    return replay


def measure_alignment(device: str = "cpu", threads: int = 2, runs: int = 15, precision: str = "fp32",
                      graph: bool | None = None) -> dict[str, Any]:
    """Median over counts off a multiple of 8 of latency(count) / latency(next multiple of 8 up). On a GPU: in
    half precision when ``precision`` is fp16, replayed from a CUDA graph unless ``graph`` is False."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    dtype = torch.float16 if cuda and precision == "fp16" else torch.float32
    graph = cuda if graph is None else graph and cuda
    ratios = []
    try:
        with device_lock(device):
            for width in WIDTHS:
                aligned = _time(width, dev, runs, dtype, graph)
                for c in range(width - 7, width):
                    ratios.append(_time(c, dev, runs, dtype, graph) / aligned)
    finally:
        torch.set_num_threads(previous)
    return {"ratio": statistics.median(ratios), "max_ratio": max(ratios), "counts": len(ratios),
            "dtype": str(dtype).removeprefix("torch."), "graph": graph}


def choose_round_to(device: str, runtime: str, threads: int, precision: str = "fp32") -> tuple[int, dict[str, Any]]:
    """8 or 1 for this device and deployed precision (measured once, then cached) and the measurement behind it."""
    name = device_name(device)
    key = f"{name}|{torch.device(device).type}|{runtime}|{precision}|{threads}|torch {torch.__version__}"
    path = home() / "cache" / "round_to.json"
    cache: dict[str, Any] = {}
    if path.is_file():
        try:
            cache = json.loads(path.read_text())
        except ValueError:
            cache = {}
    if key not in cache:
        m = measure_alignment(device, threads, precision=precision)
        cache[key] = {**m, "round_to": 8 if m["ratio"] > 1.0 + TOLERANCE else 1}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        tmp.replace(path)
    entry = cache[key]
    return int(entry["round_to"]), entry
