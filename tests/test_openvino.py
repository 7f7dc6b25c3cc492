"""OpenVINO as a second CPU runtime (issue 21): the model exported by ultralytics' exporter, INT8 quantized by that
exporter with NNCF on training images (never val), the head's decoding left in floating point; the exported folder
loads in OpenVINO alone and in ultralytics and validates; latency timed on it interleaved with the base exported
alike; a runtime or quantizer that is not installed is refused in one line (exit 2) before anything is written."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from autoprune import cli
from autoprune.adapters import yolo
from autoprune.config.sections import INT8_RUNTIMES, LatencySettings
from autoprune.engine import runtimes
from autoprune.engine.latency import measure_interleaved, run_spec
from autoprune.errors import InputError

pytest.importorskip("openvino")
pytest.importorskip("nncf")

TINY = 64


def test_the_int8_runtimes_of_the_spec_are_those_with_a_quantizer():
    assert tuple(n for n in runtimes.names() if runtimes.REGISTRY.get(n).int8_tool) == INT8_RUNTIMES
    assert runtimes.REGISTRY.get("openvino").artifact == "openvino"


@pytest.fixture(scope="module")
def ov_int8(tiny_data, tmp_path_factory):
    """The tiny model exported to OpenVINO INT8 as a trial is, with the images ultralytics' exporter calibrated on."""
    from ultralytics.engine.exporter import Exporter

    seen: list[str] = []
    real = Exporter.get_int8_calibration_dataloader

    def spy(self, prefix=""):
        loader = real(self, prefix)
        seen.extend(loader.dataset.im_files)
        return loader

    mp = pytest.MonkeyPatch()
    mp.setattr(Exporter, "get_int8_calibration_dataloader", spy)
    try:
        model = yolo.deploy_copy(yolo.load_model("yolov8n.yaml", nc=3))
        timing = LatencySettings(runtime="openvino", precision="int8", threads=1)
        path = runtimes.export_deployed(model, run_spec("cpu", TINY, timing, str(tiny_data)), "openvino")
    finally:
        mp.undo()
    keep = tmp_path_factory.mktemp("openvino_runtime") / path.name
    shutil.copytree(path, keep)
    shutil.rmtree(path.parent)
    return keep, seen


def test_an_openvino_int8_model_is_calibrated_on_training_images_only(ov_int8, tiny_data):
    folder, seen = ov_int8
    train = tiny_data.parent / "images" / "train"
    n_train = len(list(train.iterdir()))
    assert len(seen) == min(runtimes.CALIBRATION_IMAGES, n_train) == n_train  # 16 < 64: all of them
    assert all(Path(f).parent == train for f in seen)
    assert yolo.train_image_count(str(tiny_data)) == n_train


def test_the_openvino_int8_folder_is_quantized_with_the_head_decoding_in_floating_point(ov_int8):
    import openvino

    folder, _ = ov_int8
    assert folder.name.endswith("_int8_openvino_model")
    assert {p.suffix for p in folder.iterdir()} >= {".xml", ".bin", ".yaml"}
    model = openvino.Core().read_model(str(next(folder.glob("*.xml"))))
    ops = model.get_ordered_ops()
    fq = [op for op in ops if op.get_type_name() == "FakeQuantize"]
    assert len(fq) > 10
    # the DFL's softmax and the class sigmoid read unquantized inputs (NNCF's ignored scope, as ultralytics sets it)
    for op in ops:
        if op.get_type_name() in ("Softmax", "Sigmoid"):
            producer = op.input_value(0).get_node()
            assert producer.get_type_name() != "FakeQuantize", op.get_friendly_name()


def test_the_openvino_folder_runs_in_openvino_alone_and_validates_in_ultralytics(ov_int8, tiny_data):
    from autoprune.adapters import openvino_runtime

    folder, _ = ov_int8
    compiled = openvino_runtime.compile_model(folder, threads=1)
    out = openvino_runtime.infer(compiled, np.zeros((1, 3, TINY, TINY), np.float32))
    first = next(iter(out.values()))
    assert first.shape[0] == 1 and np.isfinite(first).all()
    m50, m = yolo.validate_exported(folder, str(tiny_data), TINY, "detect")
    assert 0.0 <= m <= m50 <= 1.0


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_openvino_times_the_exported_model_interleaved_with_the_base(yolov8n, tiny_data, precision):
    timing = LatencySettings(warmup=1, runs=6, rounds=3, threads=1, runtime="openvino", precision=precision,
                             retries=0)
    il = measure_interleaved(yolo.deploy_copy(yolov8n), yolo.deploy_copy(yolov8n), imgsz=TINY, timing=timing,
                             calibration=str(tiny_data))
    assert il.candidate.runtime == il.reference.runtime == "openvino"
    assert il.candidate.precision == precision and il.candidate.median_ms > 0
    assert 0.3 < il.ratio < 3.0  # the same model against itself


def test_a_plain_layer_times_on_openvino():
    import torch

    run = runtimes.build_layer_runner(torch.nn.Conv2d(8, 16, 3, padding=1), "openvino",
                                      runtimes.RunSpec("cpu", 32, channels=8, threads=1))
    run()
    run()


def _without(monkeypatch, missing: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else real(name, *a))


@pytest.mark.parametrize("missing,precision,message", [
    ("openvino", "fp32", "latency.runtime: openvino needs the openvino package"),
    ("nncf", "int8", "latency.precision: int8 on openvino needs nncf, which is not installed"),
])
def test_openvino_or_nncf_missing_is_refused_in_one_line(monkeypatch, missing, precision, message):
    _without(monkeypatch, missing)
    with pytest.raises(InputError) as e:
        runtimes.check_runtime("openvino", "cpu", precision)
    assert "\n" not in str(e.value) and message in str(e.value)


def test_a_search_on_openvino_without_nncf_is_refused_before_a_study_is_written(monkeypatch, tmp_path, tiny_data,
                                                                                 tiny_model_pt, capsys):
    _without(monkeypatch, "nncf")
    spec = {"name": "openvino_runtime", "model": str(tiny_model_pt), "data": str(tiny_data), "imgsz": TINY, "trials": 1,
            "latency": {"runtime": "openvino"}, "space": {"precision": ["fp32", "int8"]}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    code = cli.main(["search", str(tmp_path / "s.yaml"), "--studies-dir", str(tmp_path / "studies")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == ("autoprune: error: latency.precision: int8 on openvino needs nncf, which is not "
                                     "installed")
    assert not (tmp_path / "studies").exists() or not any((tmp_path / "studies").iterdir())


def test_the_spec_refuses_int8_on_a_runtime_without_a_quantizer():
    from autoprune.config.spec import parse_spec
    from autoprune.errors import SpecError

    with pytest.raises(SpecError, match="space.precision: int8 needs runtime: onnxruntime or openvino"):
        parse_spec({"name": "r", "model": "m.pt", "data": "d.yaml", "space": {"precision": ["fp32", "int8"]}},
                   "s.yaml")
