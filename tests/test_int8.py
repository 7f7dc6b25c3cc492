"""INT8 on ONNX Runtime: calibration from the train split, the head's decoding kept in FP32, the quantized file
loads in ONNX Runtime alone and in ultralytics, an INT8 trial records the mAP of its quantized file, and a runtime
whose quantization tools are missing is refused in one line before anything runs."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from autoprune.adapters import onnx_runtime, yolo
from autoprune.config.sections import LatencySettings
from autoprune.engine import runtimes
from autoprune.engine.latency import run_spec
from autoprune.errors import InputError

TINY = 64


def test_training_batches_come_from_the_train_split_only(tiny_data):
    files = [f for b in yolo.training_batches(str(tiny_data), TINY, 4, 8) for f in b["im_file"]]
    assert files and all(Path(f).parent == tiny_data.parent / "images" / "train" for f in files)


@pytest.fixture(scope="module")
def int8_file(tiny_data, tmp_path_factory):
    """The tiny model exported and quantized as an INT8 trial is; which data set the calibration read is recorded."""
    seen = []
    real = yolo.training_batches

    def spy(data, imgsz, batch, n, *a, **k):
        seen.append((data, imgsz, batch, n))
        return real(data, imgsz, batch, n, *a, **k)

    mp = pytest.MonkeyPatch()
    mp.setattr(yolo, "training_batches", spy)
    try:
        model = yolo.deploy_copy(yolo.load_model("yolov8n.yaml", nc=3))
        timing = LatencySettings(runtime="onnxruntime", precision="int8", threads=1)
        path = runtimes.export_deployed(model, run_spec("cpu", TINY, timing, str(tiny_data)))
    finally:
        mp.undo()
    keep = tmp_path_factory.mktemp("int8") / "model_int8.onnx"
    keep.write_bytes(path.read_bytes())
    shutil.rmtree(path.parent)
    return keep, seen


def test_an_int8_model_is_calibrated_on_the_data_sets_training_images(int8_file, tiny_data):
    _, seen = int8_file
    assert seen == [(str(tiny_data), TINY, 1, runtimes.CALIBRATION_IMAGES)]  # 64 batches of one image


def test_the_int8_file_quantizes_the_convolutions_and_keeps_the_head_decoding_in_fp32(int8_file):
    import onnx

    model = onnx.load(str(int8_file[0]))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 10 and "DequantizeLinear" in ops
    decode = onnx_runtime.head_decode_nodes(model)
    assert any("/dfl/" in n for n in decode) and not any("/cv2" in n or "/cv3" in n for n in decode)
    quantized_inputs = {i for n in model.graph.node if n.op_type == "DequantizeLinear" for i in n.output}
    dfl = [n for n in model.graph.node if "/dfl/" in n.name and n.op_type == "Conv"]
    assert dfl and not set(dfl[0].input) & quantized_inputs  # the DFL convolution reads FP32, not INT8
    assert {p.key for p in model.metadata_props} >= {"stride", "names", "imgsz", "task"}  # ultralytics' metadata


def test_the_int8_file_runs_in_onnxruntime_and_loads_in_ultralytics(int8_file, tiny_data):
    import onnxruntime

    sess = onnxruntime.InferenceSession(str(int8_file[0]), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: np.zeros((1, 3, TINY, TINY), np.float32)})
    assert out[0].shape[0] == 1 and np.isfinite(out[0]).all()
    m50, m = yolo.validate_exported(int8_file[0], str(tiny_data), TINY, "detect")
    assert 0.0 <= m <= m50 <= 1.0


def test_int8_without_onnxruntimes_quantization_tools_is_refused_in_one_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime.quantization" else real(name, *a))
    with pytest.raises(InputError) as e:
        runtimes.check_runtime("onnxruntime", "cpu", "int8")
    assert "\n" not in str(e.value) and "latency.precision: int8 on onnxruntime needs onnxruntime" in str(e.value)


@pytest.mark.slow
def test_an_int8_trial_records_the_map_of_its_quantized_file(tmp_path, tiny_data, tiny_model_pt):
    from autoprune.config.spec import parse_spec
    from autoprune.engine.measure import measure_model

    spec = parse_spec({"name": "q", "model": str(tiny_model_pt), "data": str(tiny_data), "imgsz": TINY,
                       "objectives": ["map50_95", "deployed_map50_95", "params"],
                       "latency": {"runtime": "onnxruntime", "precision": "int8", "warmup": 1, "runs": 4,
                                   "rounds": 2, "threads": 1, "retries": 0}}, "s.yaml")
    model = yolo.load_model(tiny_model_pt)
    m = measure_model(model, spec.trial_settings).metrics()
    assert 0.0 <= m["deployed_map50_95"] <= m["deployed_map50"] <= 1.0
    assert m["latency_ratio"] > 0 and m["map50_95"] >= 0


@pytest.mark.parametrize("space,latency,message", [
    ({"precision": ["fp32", "int8"]}, {}, "space.precision: int8 needs runtime: onnxruntime or openvino"),
    ({"precision": ["fp16"]}, {"runtime": "onnxruntime"}, "space.precision: fp16 timing needs device: cuda"),
    ({"precision": ["int4"]}, {"runtime": "onnxruntime"}, "space.precision: 'int4' is not one of fp32, fp16, int8"),
    ({"imgsz": [96, 100]}, {}, "space.imgsz: 100 is not a multiple of 32"),
    ({"imgsz": [16]}, {}, "space.imgsz: must be >= 32"),
    ({"precision": ["int8"]}, {"runtime": "onnxruntime", "lut": True}, "latency.lut: the lookup table times FP32"),
])
def test_deployment_knobs_are_checked_when_the_spec_is_read(space, latency, message):
    from autoprune.config.spec import parse_spec
    from autoprune.errors import SpecError

    with pytest.raises(SpecError, match=message):
        parse_spec({"name": "d", "model": "m.pt", "data": "d.yaml", "space": space, "latency": latency}, "s.yaml")


def test_deployed_map_objectives_need_a_deployment_other_than_the_validated_model():
    from autoprune.config.spec import parse_spec
    from autoprune.errors import SpecError

    base = {"name": "d", "model": "m.pt", "data": "d.yaml", "objectives": ["deployed_map50_95", "params"]}
    with pytest.raises(SpecError, match="objectives: deployed mAP needs a deployment other than the validated"):
        parse_spec(base, "s.yaml")
    spec = parse_spec({**base, "space": {"imgsz": [96, 128]}}, "s.yaml")
    assert spec.space.deploy_imgsz == (96, 128) and spec.trial_settings.deployed_map


@pytest.mark.slow
def test_a_search_over_precision_and_deployment_size_measures_each_trial_as_deployed(tmp_path, tiny_data,
                                                                                     tiny_model_pt):
    """`space: {precision: [fp32, int8], imgsz: [32, 64]}` end to end (real CLI, Ray Tune, SQLite, ONNX Runtime):
    each trial is exported (and quantized) at its own precision and size, validated on that file, timed on it
    interleaved with the base exported alike; the front shows how each member is deployed."""
    import subprocess
    import sys

    import optuna
    import yaml

    spec = {"name": "dep", "model": str(tiny_model_pt), "data": str(tiny_data), "imgsz": TINY, "trials": 4,
            "seed": 3, "objectives": ["deployed_map50_95", "params", "latency_ratio"],
            "space": {"ratio": {"low": 0.1, "high": 0.5}, "criteria": ["l1"], "iterations": 1, "epochs": 1,
                      "round_to": [1], "precision": ["fp32", "int8"], "imgsz": [32, 64]},
            "finetune": {"batch": 8}, "resources": {"cpus": 1}, "sensitivity": {"probes": 0},
            "warm_start": {"uniform": 0}, "screening": {"factor": 0},
            "latency": {"runtime": "onnxruntime", "warmup": 1, "runs": 4, "rounds": 2, "threads": 1, "retries": 0}}
    path = tmp_path / "dep.yaml"
    path.write_text(yaml.safe_dump(spec))
    r = subprocess.run([sys.executable, "-m", "autoprune", "search", str(path)], capture_output=True, text=True,
                       cwd=tmp_path, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    study = optuna.load_study(study_name="dep", storage=f"sqlite:///{tmp_path}/studies/autoprune.db")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4
    for t in done:
        policy, lat, m = t.user_attrs["policy"], t.user_attrs["latency"], t.user_attrs["metrics"]
        assert policy["precision"] in ("fp32", "int8") and policy["deploy_imgsz"] in (32, 64)
        assert t.params["precision"] == policy["precision"] and t.params["deploy_imgsz"] == policy["deploy_imgsz"]
        assert lat["precision"] == policy["precision"] and lat["imgsz"] == policy["deploy_imgsz"]
        assert lat["runtime"] == "onnxruntime" and lat["ratio"] > 0
        assert 0.0 <= m["deployed_map50_95"] <= m["deployed_map50"] <= 1.0 and t.values[0] == m["deployed_map50_95"]
    front = subprocess.run([sys.executable, "-m", "autoprune", "front", "--storage",
                            f"sqlite:///{tmp_path}/studies/autoprune.db", "--study", "dep"], capture_output=True,
                           text=True, cwd=tmp_path, timeout=300)
    assert front.returncode == 0 and "deployed as" in front.stdout and "precision=" in front.stdout
    # the reference points: the base at every searched deployment, measured once, shown beside the front
    refs = study.user_attrs["references"]
    assert [(r["precision"], r["imgsz"]) for r in refs] == [("fp32", 32), ("fp32", 64), ("int8", 32), ("int8", 64)]
    assert all(0.0 <= r["deployed_map50_95"] <= 1.0 and r["latency_ms"] > 0 for r in refs)
    assert all(f"base {p} @{z}" in front.stdout for p in ("fp32", "int8") for z in (32, 64))
    # another model as a reference point (the benchmark's smaller architecture trained from scratch): here the base
    # itself under another name, measured at one deployment and added to the study; the front lists it
    from autoprune.config.spec import parse_spec
    from autoprune.search.strategy.references import add_reference, measure_reference

    parsed = parse_spec(spec, "dep.yaml", studies_dir=tmp_path / "studies")
    ref = measure_reference(yolo.load_model(tiny_model_pt), parsed, "int8", 64, "other int8 @64",
                            study.user_attrs["baseline"])
    assert ref["params"] == study.user_attrs["baseline"]["params"] and 0 <= ref["deployed_map50_95"] <= 1
    add_reference(study, ref)
    add_reference(study, ref)  # replaced, not doubled
    assert [r["name"] for r in optuna.load_study(study_name="dep", storage=f"sqlite:///{tmp_path}/studies/"
                                                 "autoprune.db").user_attrs["references"]].count("other int8 @64") == 1
    front = subprocess.run([sys.executable, "-m", "autoprune", "front", "--storage",
                            f"sqlite:///{tmp_path}/studies/autoprune.db", "--study", "dep"], capture_output=True,
                           text=True, cwd=tmp_path, timeout=300)
    assert "other int8 @64" in front.stdout


def test_reference_points_are_listed_beside_the_front_in_the_table_report_and_dashboard_note(tmp_path):
    """A real SQLite study with made-up trial results (conftest.make_study) and made-up reference points: the
    front table, the report's data and the dashboard's note show them; a user's own note is never overwritten."""
    import optuna_dashboard

    from autoprune.config.spec import parse_spec
    from autoprune.search.storage.study import get_storage
    from autoprune.search.strategy.references import deployments
    from autoprune.views.dashboard import annotate_references, reference_note
    from autoprune.views.report_data import pareto_data
    from autoprune.views.text import front_records, render_front
    from conftest import make_study

    spec = parse_spec({"name": "d", "model": "m.pt", "data": "d.yaml", "imgsz": 160,
                       "latency": {"runtime": "onnxruntime"},
                       "space": {"precision": ["fp32", "int8"], "imgsz": [96, 128]}}, "s.yaml")
    assert deployments(spec) == [("fp32", 96), ("fp32", 128), ("int8", 96), ("int8", 128)]
    assert deployments(parse_spec({"name": "d", "model": "m.pt", "data": "d.yaml"}, "s.yaml")) == []
    study, url = make_study(tmp_path, n=12)
    refs = [{"name": "base int8 @96", "precision": "int8", "imgsz": 96, "deployed_map50_95": 0.8,
             "deployed_map50": 0.9, "latency_ms": 4.0}]
    study.set_user_attr("references", refs)
    names = ["map50_95", "params", "latency_ms"]
    base = study.user_attrs["baseline"]
    rows = front_records([], names, base, references=refs)
    assert rows[1]["trial"] == "base int8 @96" and rows[1]["params"] == base["params"]
    assert rows[1]["latency_ms"] == 4.0 and rows[1]["latency_ms_change"] == pytest.approx(4.0 / 10.0 - 1)
    table = render_front(rows, names)
    assert "base int8 @96" in table and "precision=int8 deploy_imgsz=96" in table
    assert pareto_data(study).references == (("base int8 @96", (0.9, 3.0e6, 4.0)),)
    assert "| base int8 @96 |" in reference_note(study)
    store = get_storage(url).rdb
    assert annotate_references(store) == 1 and annotate_references(store) == 0  # written once, then current
    assert optuna_dashboard.get_note(study).startswith("<!-- autoprune")
    optuna_dashboard.save_note(study, "my own note")
    assert annotate_references(store) == 0 and optuna_dashboard.get_note(study) == "my own note"
