"""Spec validation: every bad input names its field; good input becomes frozen typed objects."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from autoprune.config.spec import Overrides, load_spec, parse_spec
from autoprune.errors import SpecError
from autoprune.model import criteria

REPO = Path(__file__).resolve().parents[1]
BASE = {"name": "s", "model": "m.pt", "data": "d.yaml"}


def _parse(**changes):
    return parse_spec({**BASE, **changes}, "spec.yaml")


BAD = [
    ({"trials": 0}, "trials: must be >= 1"),
    ({"trials": -3}, "trials: must be >= 1"),
    ({"trials": "many"}, "trials: expected an integer"),
    ({"imgsz": 100}, "imgsz: 100 is not a multiple of 32"),
    ({"space": {"ratio": {"low": 0.1, "high": 1.0}}}, "space.ratio.high: 1 is outside [0, 1)"),
    ({"space": {"ratio": {"low": -0.1, "high": 0.5}}}, "space.ratio.low: -0.1 is outside [0, 1)"),
    ({"space": {"ratio": {"low": 0.6, "high": 0.5}}}, "space.ratio: low (0.6) is greater than high (0.5)"),
    ({"space": {"criteria": []}}, "space.criteria: empty list"),
    ({"space": {"criteria": ["l1", "magic"]}}, "unknown criterion 'magic'"),
    ({"space": {"iterations": {"low": 0, "high": 2}}}, "space.iterations.low: must be >= 1"),
    ({"space": {"lr": {"low": 0, "high": 0.1, "log": True}}}, "space.lr.low"),
    ({"space": {"ema": "yes"}}, "space.ema: expected a non-empty list of true/false"),
    ({"space": {"bogus": 1}}, "space.bogus: unknown key"),
    ({"colour": "red"}, "colour: unknown key"),
    ({"objectives": ["map50_95", "speed"]}, "objectives: unknown objective 'speed'"),
    ({"objectives": ["map50_95"]}, "objectives: a multi-objective study needs at least two"),
    ({"objectives": ["map50", "map50"]}, "objectives: 'map50' listed twice"),
    ({"name": "../../etc"}, "name: '../../etc' must be"),
    ({"storage": "redis://localhost"}, "storage: 'redis://localhost' is not a supported URL"),
    ({"device": "tpu"}, "device: 'tpu' is not"),
    ({"resources": {"cpus": 0}}, "resources.cpus: must be > 0"),
    ({"latency": {"runs": 1}}, "latency.runs: must be >= 3"),
    ({"finetune": {"optimizer": "Lion"}}, "finetune.optimizer"),
]


@pytest.mark.parametrize("changes,message", BAD, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(BAD)])
def test_bad_spec_names_field(changes, message):
    with pytest.raises(SpecError) as e:
        _parse(**changes)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_model_and_data():
    with pytest.raises(SpecError, match="^model: missing"):
        parse_spec({"name": "x", "data": "d.yaml"}, "s.yaml")
    with pytest.raises(SpecError, match="^data: missing"):
        parse_spec({"name": "x", "model": "m.pt"}, "s.yaml")


def test_cuda_on_cpu_machine_is_rejected():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from autoprune.engine.devices import check_device

    spec = _parse(device="cuda")  # parsing checks the text only; commands that use the device check it exists
    with pytest.raises(SpecError, match="device: 'cuda' requested but no CUDA device"):
        check_device(spec.device)


def test_defaults_are_frozen_and_complete():
    spec = _parse()
    assert spec.objectives == ("map50_95", "params", "latency_ms")
    assert set(spec.space.criteria) == set(criteria.DEFAULT) and set(criteria.DEFAULT) < set(criteria.names())
    assert spec.storage_url.startswith("sqlite:///") and spec.storage_url.endswith("studies/autoprune.db")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.trials = 3  # type: ignore[misc,unused-ignore]


def test_overrides_replace_spec_values():
    spec = parse_spec(BASE, "s.yaml", Overrides(trials=7, storage="sqlite:///x.db", study_name="other", seed=5))
    assert (spec.trials, spec.storage, spec.name, spec.seed) == (7, "sqlite:///x.db", "other", 5)


def test_dataset_yaml_is_accepted_as_spec(tmp_path):
    data = tmp_path / "VOC.yaml"
    data.write_text("path: /data/VOC\ntrain: images/train\nval: images/val\nnames: {0: cat, 1: dog}\n")
    spec = load_spec(data, Overrides(model="best.pt"))
    assert spec.name == "VOC" and spec.data == str(data.resolve()) and spec.model == "best.pt"
    with pytest.raises(SpecError, match="^model: missing"):
        load_spec(data)


def test_malformed_yaml_reports_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nspace: [1, 2\n")
    with pytest.raises(SpecError, match=r"bad.yaml: malformed YAML \(line \d+"):
        load_spec(bad)


def test_shipped_specs_are_valid():
    demo = load_spec(REPO / "search_spaces" / "demo.yaml")
    assert demo.model == "demo" and demo.data == "demo" and demo.trials >= 8
    voc = load_spec(REPO / "search_spaces" / "voc.yaml", Overrides(device="cpu", gpus_per_trial=0))
    assert voc.imgsz == 640 and voc.resources.gpus == 0 and voc.resources.cpus == 4
    tech = load_spec(REPO / "search_spaces" / "techniques.yaml")  # every training-side technique searched
    assert tech.space.distill == (False, True) and tech.space.sparsity == (0.0, 1.0)
    assert tech.space.depth.high > 0 and tech.space.lr_step.low < 1 and tech.space.lrf is not None
    ort = load_spec(REPO / "search_spaces" / "deploy_ort.yaml")  # searched for ONNX Runtime at 640, with the table
    assert (ort.latency.runtime, ort.latency.imgsz, ort.latency.lut, ort.imgsz) == ("onnxruntime", 640, True, 160)
    ov = load_spec(REPO / "search_spaces" / "deploy_openvino.yaml")  # the same for OpenVINO
    assert ov.replace(name=ort.name, latency=ort.latency) == ort and ov.latency.runtime == "openvino"


@pytest.mark.parametrize("content,needle", [
    ("name: x\nmodel: m.pt\ndata: d.yaml\ntrials: 0\n", "trials: must be >= 1"),
    ("name: [unclosed\n", "malformed YAML"),
    ("name: x\nmodel: /nonexistent/m.pt\ndata: demo\n", "model: /nonexistent/m.pt: file not found"),
    ("name: x\nmodel: demo\ndata: /nonexistent/d.yaml\n", "data: /nonexistent/d.yaml: data set YAML not found"),
])
def test_cli_bad_input_exit_2_one_line_nothing_written(tmp_path, content, needle):
    spec = tmp_path / "spec.yaml"
    spec.write_text(content)
    studies = tmp_path / "studies"
    r = subprocess.run([sys.executable, "-m", "autoprune", "search", str(spec), "--studies-dir", str(studies)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines and needle in lines[-1], r.stderr
    assert "Traceback" not in r.stderr
    assert not (studies / "autoprune.db").exists()


def test_cli_bad_flag_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "autoprune", "search", "x.yaml", "--trials", "0"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "--trials: must be >= 1" in r.stderr
