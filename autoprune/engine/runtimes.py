"""Latency on the runtime the user deploys with: one timed forward pass, built per runtime.

A runtime turns a deployable model (eval, BN fused) into a zero-argument callable that runs one
synchronous forward pass of a fixed ``batch`` at ``imgsz`` (fp16 with ``half``):

- ``torch``: eager PyTorch (the default).
- ``onnxruntime``: the model exported by ultralytics' exporter, run by ONNX Runtime (CPU execution
  provider; CUDA's when the device is CUDA and the provider is installed).
- ``openvino``: the model exported by ultralytics' exporter to OpenVINO (INT8: quantized by that exporter with
  NNCF), run by OpenVINO on the CPU with the latency hint and ``threads`` threads.
- ``cuda-graph``: PyTorch with the forward pass captured once in a CUDA graph and replayed (no
  per-kernel launch overhead: what batch-1 GPU deployments see).
- ``tensorrt``: a TensorRT engine built by ultralytics' exporter, run by ultralytics' AutoBackend;
  only where the ``tensorrt`` package and a GPU are present.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from autoprune.errors import InputError
from autoprune.registry import Registry

__all__ = ["RunSpec", "Runtime", "REGISTRY", "build_runner", "build_layer_runner", "check_runtime", "names",
           "export_deployed", "CALIBRATION_IMAGES"]

Runner = Callable[[], None]


@dataclass(frozen=True)
class RunSpec:
    device: str
    imgsz: int  # input height (and width unless ``width``)
    batch: int = 1
    half: bool = False
    threads: int = 2
    channels: int = 3  # input channels (3 for a model; a layer's own for one timed layer)
    width: int | None = None
    int8: bool = False  # onnxruntime, openvino: the model quantized to INT8 (post-training, static, calibrated)
    calibration: str | None = None  # the data set YAML whose training images calibrate an INT8 model

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return self.batch, self.channels, self.imgsz, self.width or self.imgsz


@dataclass(frozen=True)
class Runtime:
    name: str
    doc: str
    build: Callable[[nn.Module, RunSpec], Runner]
    unavailable: Callable[[str], str | None]  # why it cannot run on ``device`` here (None: it can)
    # one plain layer (autoprune.engine.latency_table); None: the model builder serves layers too
    build_layer: Callable[[nn.Module, RunSpec], Runner] | None = None
    # ultralytics' export format of the file this runtime runs (validated as deployed); None: the torch model itself
    artifact: str | None = None
    int8_tool: str | None = None  # the module that quantizes to INT8 for this runtime; None: no INT8 here


CALIBRATION_IMAGES = 64  # training images that calibrate an INT8 model's activation ranges


def _sync(dev: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)


def _input(rs: RunSpec, dev: torch.device) -> torch.Tensor:
    return torch.rand(*rs.shape, device=dev, dtype=torch.float16 if rs.half else torch.float32)


def _torch(model: nn.Module, rs: RunSpec) -> Runner:
    dev = torch.device(rs.device)
    m = model.to(dev).eval()
    m = m.half() if rs.half else m
    x, sync = _input(rs, dev), _sync(dev)

    def run() -> None:
        with torch.inference_mode():
            m(x)
        sync()

    return run


def _cuda_graph(model: nn.Module, rs: RunSpec) -> Runner:
    dev = torch.device(rs.device)
    m = model.to(dev).eval()
    m = m.half() if rs.half else m
    x = _input(rs, dev)
    with torch.inference_mode():
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):  # warm-up on a side stream before capture, as CUDA graphs require
            for _ in range(3):
                m(x)
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            m(x)

    def run() -> None:
        graph.replay()
        torch.cuda.synchronize(dev)

    return run


def _exported(model: nn.Module, rs: RunSpec, fmt: str, int8_data: str | None = None) -> Path:
    from autoprune.adapters import yolo

    folder = Path(tempfile.mkdtemp(prefix="autoprune-runtime-"))
    ckpt = yolo.save_checkpoint(model.float().cpu(), folder / "model.pt")
    return yolo.export_model(ckpt, fmt, rs.imgsz, rs.batch, rs.half, rs.device, int8_data=int8_data,
                              int8_images=CALIBRATION_IMAGES)


def _ort_runner(model: str | bytes, rs: RunSpec) -> Runner:
    """An ONNX Runtime session over an ONNX file (path) or its bytes, fed a fixed random input."""
    import numpy as np

    from autoprune.adapters import onnx_runtime

    sess = onnx_runtime.session(model, rs.threads, cuda=torch.device(rs.device).type == "cuda")
    x = np.random.default_rng(0).random(rs.shape).astype(np.float16 if rs.half else np.float32)

    def run() -> None:
        onnx_runtime.run(sess, x)

    return run


def export_deployed(model: nn.Module, rs: RunSpec, runtime: str = "onnxruntime") -> Path:
    """``model`` as ``runtime`` runs it: the file (ONNX, TensorRT engine) or folder (OpenVINO) ultralytics' exporter
    writes for ``rs`` (batch, size) and, with ``rs.int8``, quantized to INT8 on :data:`CALIBRATION_IMAGES` images of
    ``rs.calibration``'s train split (ONNX Runtime's static quantization; OpenVINO's by ultralytics' exporter with
    NNCF). It lies in a temporary folder of its own: the caller removes ``path.parent``."""
    fmt = REGISTRY.get(runtime).artifact
    if fmt is None:
        raise ValueError(f"runtime {runtime} runs the torch model, not an exported file")
    if rs.int8 and not rs.calibration:
        raise InputError("latency.precision: int8 needs a data set to calibrate on (its train split)")
    # OpenVINO (and TensorRT) quantize inside ultralytics' exporter; ONNX Runtime quantizes the exported file below
    path = _exported(model, rs, fmt, int8_data=rs.calibration if rs.int8 and fmt != "onnx" else None)
    if fmt != "onnx" or not rs.int8:
        return path
    assert rs.calibration is not None
    from autoprune.adapters import onnx_runtime, yolo

    n = max(1, -(-CALIBRATION_IMAGES // rs.batch))
    batches = [b["img"].numpy() for b in yolo.training_batches(rs.calibration, rs.imgsz, rs.batch, n)]
    return onnx_runtime.quantize_int8(path, path.with_name("model_int8.onnx"), batches)


def _onnxruntime(model: nn.Module, rs: RunSpec) -> Runner:
    path = export_deployed(model, rs)
    run = _ort_runner(str(path), rs)
    shutil.rmtree(path.parent, ignore_errors=True)  # the session holds the model
    return run


def _layer_onnx(layer: nn.Module, rs: RunSpec) -> bytes:
    """One plain layer (not a YOLO model, so not ultralytics' exporter) as ONNX bytes, by torch's ONNX export."""
    import warnings

    dev, dtype = torch.device(rs.device if rs.half else "cpu"), torch.float16 if rs.half else torch.float32
    layer = layer.to(dev, dtype).eval()
    with tempfile.TemporaryDirectory(prefix="autoprune-layer-") as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        path = Path(folder) / "layer.onnx"
        torch.onnx.export(layer, (torch.rand(*rs.shape, device=dev, dtype=dtype),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"])
        return path.read_bytes()


def _onnxruntime_layer(layer: nn.Module, rs: RunSpec) -> Runner:
    return _ort_runner(_layer_onnx(layer, rs), rs)


def _openvino(model: nn.Module, rs: RunSpec) -> Runner:
    import numpy as np

    from autoprune.adapters import openvino_runtime

    folder = export_deployed(model, rs, "openvino")
    request = openvino_runtime.compile_model(folder, rs.threads)
    shutil.rmtree(folder.parent, ignore_errors=True)  # the compiled model holds the network
    x = np.random.default_rng(0).random(rs.shape).astype(np.float32)

    def run() -> None:
        openvino_runtime.infer(request, x)

    return run


def _openvino_layer(layer: nn.Module, rs: RunSpec) -> Runner:
    """One plain layer, exported to ONNX (7x faster than OpenVINO's own torch converter, which traces) and compiled by
    OpenVINO (FP32)."""
    import numpy as np

    from autoprune.adapters import openvino_runtime

    with tempfile.TemporaryDirectory(prefix="autoprune-layer-") as folder:
        path = Path(folder) / "layer.onnx"
        path.write_bytes(_layer_onnx(layer, dataclasses.replace(rs, half=False)))
        request = openvino_runtime.compile_model(path, rs.threads)
    x = np.random.default_rng(0).random(rs.shape).astype(np.float32)

    def run() -> None:
        openvino_runtime.infer(request, x)

    return run


def _tensorrt(model: nn.Module, rs: RunSpec) -> Runner:
    from autoprune.adapters import yolo

    engine = export_deployed(model, rs, "tensorrt")
    run = yolo.backend_runner(engine, rs.device, rs.batch, rs.imgsz, rs.half)
    shutil.rmtree(engine.parent, ignore_errors=True)  # the backend holds the engine
    return run


def _needs_cuda(device: str) -> str | None:
    if torch.device(device).type != "cuda":
        return "needs device: cuda"
    if not torch.cuda.is_available():
        return "needs a CUDA GPU, and none is available"
    return None


def _tensorrt_unavailable(device: str) -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "needs the tensorrt package, which is not installed"
    return _needs_cuda(device)


def _onnxruntime_unavailable(device: str) -> str | None:
    return None if importlib.util.find_spec("onnxruntime") is not None else "needs the onnxruntime package"


def _openvino_unavailable(device: str) -> str | None:
    if importlib.util.find_spec("openvino") is None:
        return "needs the openvino package (pip install 'autoprune[openvino]')"
    return None if torch.device(device).type == "cpu" else "runs on device: cpu here"


REGISTRY: Registry[Runtime] = Registry("latency runtime")
REGISTRY.register(Runtime("torch", "eager PyTorch", _torch, lambda device: None))
REGISTRY.register(Runtime("onnxruntime", "ONNX Runtime (CPU EP; CUDA EP on CUDA when installed)", _onnxruntime,
                          _onnxruntime_unavailable, _onnxruntime_layer, artifact="onnx",
                          int8_tool="onnxruntime.quantization"))
REGISTRY.register(Runtime("openvino", "OpenVINO on the CPU (ultralytics' exporter; INT8 by NNCF)", _openvino,
                          _openvino_unavailable, _openvino_layer, artifact="openvino", int8_tool="nncf"))
REGISTRY.register(Runtime("cuda-graph", "PyTorch with CUDA graphs", _cuda_graph, _needs_cuda))
REGISTRY.register(Runtime("tensorrt", "TensorRT engine (ultralytics' exporter)", _tensorrt, _tensorrt_unavailable,
                          _cuda_graph, artifact="engine"))  # a layer on TensorRT is approximated by a CUDA graph
names = REGISTRY.names


def check_runtime(runtime: str, device: str, precision: str = "fp32") -> None:
    """One-line InputError when ``runtime`` cannot time on ``device`` at ``precision`` here (before any study is
    written)."""
    why = REGISTRY.get(runtime).unavailable(device)
    if why:
        raise InputError(f"latency.runtime: {runtime} {why}")
    if precision == "fp16" and torch.device(device).type != "cuda":
        raise InputError("latency.precision: fp16 timing needs device: cuda")
    tool = REGISTRY.get(runtime).int8_tool
    if precision == "int8" and tool is None:
        raise InputError(f"latency.precision: int8 is not quantized for runtime {runtime} here")
    if precision == "int8" and tool is not None and importlib.util.find_spec(tool) is None:
        raise InputError(f"latency.precision: int8 on {runtime} needs {tool.split('.')[0]}, which is not installed")


def build_runner(model: nn.Module, runtime: str, rs: RunSpec) -> Runner:
    return REGISTRY.get(runtime).build(model, rs)


def build_layer_runner(layer: nn.Module, runtime: str, rs: RunSpec) -> Runner:
    """A timed pass of one layer (input ``rs.shape``) on ``runtime``, or the nearest runtime that runs layers."""
    rt = REGISTRY.get(runtime)
    return (rt.build_layer or rt.build)(layer, rs)
