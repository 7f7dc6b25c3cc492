"""The deployment formats ``autoprune export`` / ``finalize --format`` write: each one runtime's artifact at one
precision (measured on that artifact by :func:`autoprune.deploy.export.deployed_artifact`)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Format", "FORMATS"]


@dataclass(frozen=True)
class Format:
    """What ``--format`` writes besides the checkpoint: ``runtime``'s artifact at ``precision`` as ``file``."""

    name: str
    runtime: str | None  # None: only the plain FP32 ONNX every export writes (pruned.onnx)
    precision: str = "fp32"
    device: str = "cpu"
    file: str = ""


FORMATS = {f.name: f for f in (
    Format("onnx", None),
    Format("onnx-int8", "onnxruntime", "int8", file="pruned_int8.onnx"),
    Format("openvino", "openvino", file="pruned_openvino_model"),
    Format("openvino-int8", "openvino", "int8", file="pruned_int8_openvino_model"),
    Format("engine", "tensorrt", "fp16", "cuda", file="pruned.engine"),
)}
