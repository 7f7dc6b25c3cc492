"""Exports through ultralytics' exporter and inference through its AutoBackend (latency runtimes, ONNX files).
Part of the ultralytics adapter (re-exported by :mod:`autoprune.adapters.yolo`)."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from autoprune.adapters import _offline

_offline.configure()

__all__ = ["export_model", "backend_runner", "export_onnx", "validate_exported", "train_image_count"]


def export_model(checkpoint: str | Path, fmt: str, imgsz: int, batch: int = 1, half: bool = False,
                 device: str = "cpu", int8_data: str | None = None, int8_images: int = 64) -> Path:
    """``checkpoint`` exported by ultralytics' exporter (``onnx``, ``openvino`` or ``engine``) for a fixed batch and
    size; returns the produced file or folder (beside the checkpoint). With ``int8_data`` (OpenVINO, TensorRT) the
    exporter quantizes to INT8 itself, calibrated on the first ``int8_images`` images of that data set's train
    split (OpenVINO through NNCF, with the detection head's decoding kept in floating point)."""
    from ultralytics import YOLO

    args: dict[str, Any] = dict(format=fmt, imgsz=imgsz, batch=batch, half=half, dynamic=False, verbose=False,
                                device=device if fmt == "engine" else "cpu")
    if fmt == "onnx":
        args["simplify"] = False  # onnxslim would try to pip-install
    if int8_data is not None:
        from autoprune.adapters.openvino_runtime import quiet_nncf

        quiet_nncf()
        n = train_image_count(int8_data)
        args.update(int8=True, half=False, data=int8_data, split="train", fraction=min(1.0, int8_images / max(n, 1)))
    # torch.jit.trace's deprecation notices (OpenVINO traces) and NNCF's progress bars (printed to stdout) stay out
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore", FutureWarning)
        return Path(YOLO(str(checkpoint)).export(**args))


def train_image_count(data: str) -> int:
    """How many images the train split of the data set YAML ``data`` lists (as ultralytics' loaders read it)."""
    from ultralytics.data.base import BaseDataset
    from ultralytics.data.utils import check_det_dataset

    info = check_det_dataset(str(data))
    return len(BaseDataset.get_img_files(_Lister(), info["train"]))


class _Lister:
    """The attributes ``BaseDataset.get_img_files`` reads of its instance: all the files, no log prefix."""

    prefix = ""
    fraction = 1.0


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
