"""Exports through ultralytics' exporter and inference through its AutoBackend (latency runtimes, ONNX files).
Part of the ultralytics adapter (re-exported by :mod:`autoprune.adapters.ultra`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from autoprune.adapters import _offline

_offline.configure()

__all__ = ["export_model", "backend_runner", "export_onnx", "validate_exported"]


def export_model(checkpoint: str | Path, fmt: str, imgsz: int, batch: int = 1, half: bool = False,
                 device: str = "cpu") -> Path:
    """``checkpoint`` exported by ultralytics' exporter (``onnx`` or ``engine``) for a fixed batch and size;
    returns the produced file (beside the checkpoint)."""
    from ultralytics import YOLO

    return Path(YOLO(str(checkpoint)).export(format=fmt, imgsz=imgsz, batch=batch, half=half, simplify=False,
                                             dynamic=False, device=device if fmt == "engine" else "cpu",
                                             verbose=False))


def backend_runner(weights: str | Path, device: str, batch: int, imgsz: int, half: bool) -> Callable[[], None]:
    """One synchronous forward pass of an exported model (e.g. a TensorRT engine) through ultralytics' AutoBackend."""
    from ultralytics.nn.autobackend import AutoBackend

    dev = torch.device(device)
    backend = AutoBackend(str(weights), device=dev, fp16=half, verbose=False)
    x = torch.rand(batch, 3, imgsz, imgsz, device=dev, dtype=torch.float16 if half else torch.float32)

    def run() -> None:
        with torch.inference_mode():
            backend(x)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    return run


def export_onnx(checkpoint: str | Path, imgsz: int, out: str | Path) -> Path:
    """ONNX export through ultralytics' exporter (no onnxslim: it would try to pip-install)."""
    from ultralytics import YOLO

    produced = Path(YOLO(str(checkpoint)).export(format="onnx", imgsz=imgsz, simplify=False, dynamic=False,
                                                 device="cpu", verbose=False))
    out = Path(out)
    if produced.resolve() != out.resolve():
        out.parent.mkdir(parents=True, exist_ok=True)
        produced.replace(out)
    return out


def validate_exported(path: str | Path, data: str, imgsz: int, task: str, device: str = "cpu",
                      split: str = "val") -> tuple[float, float]:
    """(mAP50, mAP50-95) of an exported file (an ONNX model, INT8 or not) on ``split``, by ultralytics' validator
    through its AutoBackend for the format: the artifact a user ships, not the torch model it came from."""
    from ultralytics import YOLO

    r = YOLO(str(path), task=task).val(data=str(data), imgsz=imgsz, device=device, split=split, plots=False,
                                       verbose=False, save_json=False, workers=0)
    return float(r.box.map50), float(r.box.map)
