"""All contact with ONNX Runtime and ``onnx``: inference sessions, and post-training static quantization of an
exported FP32 ONNX model to INT8 (QDQ, per-channel weights), calibrated on images the caller hands over (training
images: never val or test).

The detection head's decoding (the DFL, box decoding, the class sigmoid: the nodes of the last module outside its
box and class branches) stays in FP32, as ultralytics' own INT8 OpenVINO export keeps it: quantizing it costs mAP
for no speed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["quantize_int8", "head_decode_nodes", "session", "run"]

_MODULE = re.compile(r"^/model\.(\d+)/")


def session(model: str | bytes | Path, threads: int | None = None, cuda: bool = False) -> Any:
    """An ONNX Runtime session over an ONNX file or its bytes: CPU execution provider (CUDA's with ``cuda`` where
    installed), ``threads`` intra-op threads and one inter-op thread when given."""
    import onnxruntime

    so = onnxruntime.SessionOptions()
    if threads is not None:
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    cuda = cuda and "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    src = str(model) if isinstance(model, Path) else model
    return onnxruntime.InferenceSession(src, so, providers=["CUDAExecutionProvider" if cuda else
                                                             "CPUExecutionProvider"])


def run(sess: Any, x: Any) -> list[Any]:
    """The session's outputs for input ``x`` (its first input)."""
    return list(sess.run(None, {sess.get_inputs()[0].name: x}))


def head_decode_nodes(model: Any) -> list[str]:
    """Names of the nodes of the graph's last module (the head) outside its box and class branches (cv2, cv3 ...
    and one2one_cv*): the decoding that stays in FP32."""
    numbered = [(int(m.group(1)), n.name) for n in model.graph.node if (m := _MODULE.match(n.name))]
    if not numbered:
        return []
    head = max(i for i, _ in numbered)
    prefix = f"/model.{head}/"
    branch = re.compile(re.escape(prefix) + r"(one2one_)?cv\d")
    return [name for i, name in numbered if i == head and not branch.match(name)]


def _quiet_ort(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR or "onnxruntime" not in record.pathname


def quantize_int8(fp32: str | Path, out: str | Path, calibration: Iterable[Any]) -> Path:
    """``fp32`` quantized to INT8 at ``out`` (QDQ, per-channel int8 weights, uint8 activations) from the
    ``calibration`` arrays (each one input batch as the model takes it); ultralytics' metadata (stride, names,
    imgsz, task) is carried over so ``ultralytics.YOLO(out)`` loads it."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    fp32, out = Path(fp32), Path(out)
    model = onnx.load(str(fp32))
    name = model.graph.input[0].name
    exclude = head_decode_nodes(model)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(calibration)

        def get_next(self) -> dict[str, Any] | None:
            x = next(self._batches, None)
            return None if x is None else {name: x}

    root = logging.getLogger()
    root.addFilter(_quiet_ort)  # its advice to pre-process and its notes on biases go to the root logger
    try:
        quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude)
    finally:
        root.removeFilter(_quiet_ort)
    q = onnx.load(str(out))
    have = {p.key for p in q.metadata_props}
    for p in model.metadata_props:
        if p.key not in have:
            q.metadata_props.add(key=p.key, value=p.value)
    onnx.save(q, str(out))
    logger.debug("quantized %s to INT8 (%d head decoding nodes kept in FP32)", fp32.name, len(exclude))
    return out
