"""Issue 14, item 5: segmentation and pose models end to end, and one-trial searches of the detection families.

Real ultralytics models built from its own YAMLs, the packaged synthetic data (demo, demo-seg, demo-pose), real
torch-pruning; the exports are loaded by plain ultralytics in a fresh interpreter without autoprune.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from autoprune.adapters import pruning, yolo
from autoprune.demo.synthetic import KPT_SHAPE, SyntheticConfig, ensure_dataset
from autoprune.model import criteria, records
from autoprune.model.sampling import target_keep

TRACE = 64


def test_the_synthetic_data_comes_with_masks_or_keypoints_and_detection_keeps_its_folder(tmp_path):
    assert SyntheticConfig().key == "shapes-d52e28a0c8"  # the demo data set the packaged baseline was trained on
    small = {"n_train": 4, "n_val": 2, "n_test": 0, "imgsz": 64, "min_size": 16, "max_size": 30, "seed": 5}
    det = ensure_dataset(SyntheticConfig(**small), tmp_path)
    seg = ensure_dataset(SyntheticConfig(**small, task="segment"), tmp_path)
    pose = ensure_dataset(SyntheticConfig(**small, task="pose"), tmp_path)
    assert len({det.parent, seg.parent, pose.parent}) == 3
    assert seg.parent.name.startswith("shapes-seg-") and pose.parent.name.startswith("shapes-pose-")

    def rows(data, split="train"):
        out = []
        for f in sorted((data.parent / "labels" / split).glob("*.txt")):
            out += [line.split() for line in f.read_text().splitlines() if line.strip()]
        return out
    d, s, p = rows(det), rows(seg), rows(pose)
    assert len(d) == len(s) == len(p) > 0  # the same objects: images are drawn from the same stream
    assert all(len(r) == 5 for r in d)
    assert all(len(r) % 2 == 1 and len(r) >= 7 for r in s)  # class + at least 3 (x, y) vertices
    assert {len(r) for r in s if r[0] == "1"} <= {9} and {len(r) for r in s if r[0] == "2"} <= {7}  # square, triangle
    assert all(len(r) == 5 + KPT_SHAPE[0] * KPT_SHAPE[1] for r in p)
    assert all(0.0 <= float(v) <= 1.0 for r in s for v in r[1:])
    kpts = [r[5:][i:i + 3] for r in p for i in range(0, 9, 3)]
    assert all(0.0 <= float(x) <= 1.0 and 0.0 <= float(y) <= 1.0 and v == "2" for x, y, v in kpts)
    meta = yaml.safe_load(pose.read_text())
    assert meta["kpt_shape"] == [3, 3] and meta["flip_idx"] == [0, 2, 1]
    assert "kpt_shape" not in yaml.safe_load(seg.read_text())


@pytest.mark.parametrize("yaml_name,task,outputs", [
    ("yolov8n-seg.yaml", "segment", {"proto.cv3.conv": 32, "cv4.0.2": 32}),
    ("yolo26n-seg.yaml", "segment", {"proto.cv3.conv": 32, "cv4.0.2": 32, "proto.semseg.2": 3}),
    ("yolov8n-pose.yaml", "pose", {"cv4.0.2": 9}),
    ("yolo26n-pose.yaml", "pose", {"cv4_kpts.0": 9, "cv4_sigma.0": 6}),
])
def test_mask_prototypes_and_keypoint_outputs_keep_their_channels(yaml_name, task, outputs, tmp_path):
    torch.manual_seed(0)
    model = yolo.load_model(yaml_name, nc=3, kpt_shape=KPT_SHAPE)
    assert yolo.model_task(model) == task
    layers = pruning.prunable_layers(model, TRACE)
    original = {lay.name: lay.channels for lay in layers}
    keep = target_keep(original, dict.fromkeys(original, 0.3), 1, 1)
    pruning.prune_step(model, keep, pruning.importance(criteria.get("l2")), TRACE)
    head = model.model[-1]
    for path, channels in outputs.items():
        assert head.get_submodule(path).out_channels == channels, path
    model.eval()
    model(torch.rand(1, 3, TRACE, TRACE))
    path = yolo.save_checkpoint(model, tmp_path / "p.pt")
    reloaded = yolo.load_model(path)
    assert yolo.model_task(reloaded) == task and yolo.count_params(reloaded) == yolo.count_params(model)
    assert yolo.count_params(model) < yolo.count_params(yolo.load_model(yaml_name, nc=3, kpt_shape=KPT_SHAPE))


def test_a_mask_objective_on_a_detection_model_is_refused_in_one_line(tmp_path, tiny_data, tiny_model_pt):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({
        "name": "m", "model": str(tiny_model_pt), "data": str(tiny_data), "imgsz": 64,
        "objectives": ["map50_95", "mask_map50_95", "params"]}))
    r = subprocess.run([sys.executable, "-m", "autoprune", "search", "s.yaml"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr[-2000:]
    assert "objectives: mask_map50_95 needs a segment model" in r.stderr and "is a detect model" in r.stderr
    assert not (tmp_path / "studies" / "autoprune.db").exists()


_PLAIN = textwrap.dedent("""
    import json, sys
    sys.modules["autoprune"] = None  # an installed autoprune must not be needed
    from ultralytics import YOLO
    ckpt, data, image = sys.argv[1:4]
    model = YOLO(ckpt)
    r = model.val(data=data, imgsz=64, batch=16, plots=False, device="cpu", workers=0, verbose=False)
    pred = model.predict(image, imgsz=64, device="cpu", save=False, verbose=False)[0]
    extra = {"segment": lambda: r.seg.map, "pose": lambda: r.pose.map}.get(model.task, lambda: None)()
    print(json.dumps({"task": model.task, "params": sum(p.numel() for p in model.model.parameters()),
                      "map50_95": float(r.box.map), "extra": extra,
                      "masks": pred.masks is not None, "keypoints": pred.keypoints is not None}))
""")


@pytest.mark.slow
@pytest.mark.parametrize("yaml_name,data,task", [
    ("yolo26n.yaml", "demo", "detect"), ("yolo12n.yaml", "demo", "detect"), ("yolov5n.yaml", "demo", "detect"),
    ("yolov8n-seg.yaml", "demo-seg", "segment"), ("yolov8n-pose.yaml", "demo-pose", "pose"),
])
def test_a_one_trial_search_and_its_export_load_in_plain_ultralytics(yaml_name, data, task, tmp_path):
    objectives = {"segment": ["map50_95", "mask_map50_95", "params"], "pose": ["map50_95", "pose_map50_95", "params"]}
    spec = {"name": "fam", "model": yaml_name, "data": data, "imgsz": 64, "trials": 1, "seed": 0,
            "objectives": objectives.get(task, ["map50_95", "params"]),
            "constraints": {"map_floor": 0.0},  # an untrained model has mAP 0: nothing to keep
            "screening": {"factor": 0}, "warm_start": {"uniform": 0, "from_fronts": False},
            "space": {"ratio": {"low": 0.2, "high": 0.3, "step": 0.05}, "iterations": 1, "epochs": 1},
            "finetune": {"batch": 16}, "latency": {"warmup": 0, "runs": 3, "rounds": 1}, "resources": {"cpus": 2}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    run = [sys.executable, "-m", "autoprune"]
    r = subprocess.run([*run, "search", "s.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Token authentication" not in r.stderr  # Ray's start-up banner stays out of the terminal without -v
    r = subprocess.run([*run, "export", "--study", "fam", "--trial", "0", "--out", "exp"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "exp" / "pruned.onnx").stat().st_size > 0
    from autoprune.search.storage.study import load_existing

    study = load_existing(f"sqlite:///{tmp_path}/studies/autoprune.db", "fam").study
    metrics = study.trials[0].user_attrs["metrics"]
    assert metrics["params"] < records.baseline(study)["params"]
    dataset = ensure_dataset(SyntheticConfig(task=task))
    image = sorted((dataset.parent / "images" / "val").iterdir())[0]
    (tmp_path / "plain.py").write_text(_PLAIN)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTOPRUNE", "YOLO", "PYTHONPATH"))}
    env.update(YOLO_OFFLINE="1", YOLO_CONFIG_DIR=str(tmp_path / "cfg"), MPLCONFIGDIR=str(tmp_path / "mpl"))
    r = subprocess.run([sys.executable, "plain.py", str(tmp_path / "exp" / "pruned.pt"), str(dataset), str(image)],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["task"] == task and got["params"] == int(metrics["params"])
    assert abs(got["map50_95"] - metrics["map50_95"]) <= 1e-3
    if task != "detect":
        assert abs(got["extra"] - metrics[f"{'mask' if task == 'segment' else 'pose'}_map50_95"]) <= 1e-3
    assert got["masks"] == (task == "segment") and got["keypoints"] == (task == "pose")


def test_the_task_of_a_model_yaml_comes_from_its_head():
    from autoprune.adapters import yolo_tasks
    from autoprune.errors import InputError

    assert [yolo_tasks.yaml_task(y) for y in ("yolov8n.yaml", "yolo11n-seg.yaml", "yolo26n-pose.yaml")] == [
        "detect", "segment", "pose"]
    assert yolo_tasks.yaml_task("rtdetr-l.yaml") == "detect"  # unnamed head: built, then refused by the arch check
    with pytest.raises(InputError, match=r"^model: yolov8n-cls.yaml is a classify model; autoprune prunes detect"):
        yolo_tasks.yaml_task("yolov8n-cls.yaml")
