"""All contact with OpenVINO (and NNCF's logging): compiling an exported OpenVINO model (or an ONNX file: one plain
layer) for the CPU with a fixed number of threads, and one synchronous inference.

Models are exported, and quantized to INT8 with NNCF, by ultralytics' own exporter (``format=openvino``, ``int8``;
see :func:`autoprune.adapters.yolo_export.export_model`), which keeps the detection head's decoding in floating
point; this module only runs what it wrote.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

__all__ = ["compile_model", "infer", "model_file", "quiet_nncf"]


def _core() -> Any:
    import openvino

    return openvino.Core()


def _config(threads: int | None) -> dict[str, Any]:
    cfg: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
    if threads is not None:
        cfg["INFERENCE_NUM_THREADS"] = threads
    return cfg


def model_file(path: str | Path) -> Path:
    """The ``.xml`` of an exported OpenVINO model: ``path`` itself or the one inside the folder ``path``."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.xml"))
        if not found:
            raise FileNotFoundError(f"{path} holds no OpenVINO model (.xml)")
        return found[0]
    return path


def compile_model(path: str | Path, threads: int | None = None) -> Any:
    """An infer request over the model at ``path`` (an OpenVINO folder or .xml, or an ONNX file), compiled for the
    CPU with the latency hint and ``threads`` inference threads."""
    return _core().compile_model(str(model_file(path)), "CPU", _config(threads)).create_infer_request()


def infer(request: Any, x: Any) -> Any:
    """One synchronous inference of ``x`` (the model's first input)."""
    return request.infer({0: x})


def quiet_nncf() -> None:
    """NNCF logs every operation it leaves unquantized at INFO: warnings and errors only."""
    logging.getLogger("nncf").setLevel(logging.WARNING)
