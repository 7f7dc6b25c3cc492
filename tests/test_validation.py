"""Issue 13's validation cases through the real CLI (in process): each is one line naming the field or file,
exit code 2, nothing written."""

from __future__ import annotations

import resource
import shutil

import pytest
import yaml

from autoprune import cli


def _run(capsys, args):
    rc = cli.main([str(a) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


@pytest.mark.parametrize("edit,needle", [
    ({"resources": {"cpus": float("nan")}}, "resources.cpus: expected a number, got nan"),
    ({"resources": {"cpus": float("inf")}}, "resources.cpus: expected a finite number"),
    ({"space": {"lr": {"low": 1e-4, "high": float("inf")}}}, "space.lr.high: expected a finite number"),
    ({"imgsz": 65536}, "imgsz: must be <= 4096"),
    ({"finetune": {"batch": 10**9}}, "finetune.batch: must be <= 4096"),
    ({"latency": {"runs": 10**12}}, "latency.runs: must be <= 100000"),
    ({"space": {"epochs": {"low": 1, "high": 10**6}}}, "space.epochs.high: must be <= 1000"),
    ({"screening": {"factor": 10**6}}, "screening.factor: must be <= 100"),
    ({"trials": "x" * 10_000}, "trials: expected an integer, got str 'xxxxxxxx"),
])
def test_bad_values_are_refused_before_anything_is_written(tmp_path, capsys, edit, needle):
    spec = {"name": "v", "model": "m.pt", "data": "d.yaml", **edit}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    rc, err = _run(capsys, ["search", path, "--studies-dir", tmp_path / "studies"])
    assert rc == 2 and len(err) == 1 and needle in err[0] and len(err[0]) < 300
    assert not (tmp_path / "studies").exists()


def test_a_yaml_alias_bomb_is_refused_cheaply(tmp_path, capsys):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    lines += ["name: bomb", "model: m.pt", "data: d.yaml", "trials: *a9"]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rc, err = _run(capsys, ["search", path, "--studies-dir", tmp_path / "studies"])
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert rc == 2 and len(err) == 1 and "malformed YAML" in err[0] and "aliases" in err[0] and len(err[0]) < 300
    assert grown_mb < 200


def test_a_data_set_whose_labels_are_all_invalid_is_refused(tmp_path, capsys, tiny_data, tiny_model_pt):
    root = tmp_path / "bad"
    shutil.copytree(tiny_data.parent, root)
    info = yaml.safe_load((root / "data.yaml").read_text())
    info["path"] = str(root)
    (root / "data.yaml").write_text(yaml.safe_dump(info))
    for p in (root / "labels" / "train").iterdir():
        p.write_text("7 0.5 0.5 2.0 0.1\nnot a label\n")  # class out of range, box outside the image
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: lab\nmodel: {tiny_model_pt}\ndata: {root / 'data.yaml'}\nimgsz: 64\n")
    rc, err = _run(capsys, ["search", spec, "--studies-dir", tmp_path / "studies"])
    assert rc == 2 and "none of the train split's 32 label line(s) is valid" in err[-1]
    assert not (tmp_path / "studies").exists()


def test_studies_dir_that_is_a_file(tmp_path, capsys, tiny_data, tiny_model_pt):
    f = tmp_path / "studies"
    f.write_text("not a folder")
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: f\nmodel: {tiny_model_pt}\ndata: {tiny_data}\nimgsz: 64\n")
    rc, err = _run(capsys, ["search", spec, "--studies-dir", f])
    assert rc == 2 and "--studies-dir:" in err[-1] and "is not a folder" in err[-1] and f.read_text() == "not a folder"


def test_output_paths_that_are_folders_or_lie_under_files_or_are_not_empty(tmp_path, capsys):
    from conftest import make_study

    _, url = make_study(tmp_path, n=6)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    (tmp_path / "afile").write_text("x")
    cases = [
        (["export", "--storage", url, "--knee", "--out", tmp_path / "full"], "is not empty (--force"),
        (["export", "--storage", url, "--knee", "--out", tmp_path / "afile" / "x"], "lies under a file"),
        (["report", "--storage", url, "--out", tmp_path / "full"], "is a folder"),
        (["report", "--storage", url, "--out", tmp_path / "afile" / "r.html"], "lies under a file"),
    ]
    for args, needle in cases:
        rc, err = _run(capsys, args)
        assert rc == 2 and len(err) == 1 and needle in err[0]
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_a_data_set_yaml_as_spec_takes_the_checkpoints_training_size(tmp_path, tiny_data, caplog):
    """`autoprune search data.yaml --model best.pt`: the image size comes from the checkpoint (it was trained at
    96 here), not the generic 640, and the run says what it inferred."""
    import logging

    import torch

    from autoprune.adapters import yolo
    from autoprune.config.spec import Overrides, load_spec
    from autoprune.search.inputs import prepare_inputs

    torch.manual_seed(0)
    model = yolo.load_model("yolov8n.yaml", nc=3)
    model.args = {**vars(model.args), "imgsz": 96}
    best = yolo.save_checkpoint(model, tmp_path / "best.pt")
    spec = load_spec(tiny_data, Overrides(model=str(best)), studies_dir=tmp_path / "studies")
    with caplog.at_level(logging.INFO, logger="autoprune"):
        prepared = prepare_inputs(spec)
    assert prepared.spec.imgsz == 96 and "imgsz 96: the size" in caplog.text
    explicit = load_spec(tiny_data, Overrides(model=str(best)), studies_dir=tmp_path / "studies").replace(imgsz=64)
    assert prepare_inputs(explicit).spec.imgsz == 64  # a size the spec sets wins


def _copy_data(tiny_data, root):
    shutil.copytree(tiny_data.parent, root)
    info = yaml.safe_load((root / "data.yaml").read_text())
    info["path"] = str(root)
    (root / "data.yaml").write_text(yaml.safe_dump(info))
    return root / "data.yaml"


def test_partly_corrupt_images_are_counted_and_all_corrupt_refused(tmp_path, capsys, caplog, tiny_data):
    data = _copy_data(tiny_data, tmp_path / "d")
    images = sorted((tmp_path / "d" / "images" / "train").iterdir())
    for p in images[:3]:
        p.write_bytes(b"\\xff\\xd8 not a jpeg at all")
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: img\nmodel: {tmp_path / 'missing.pt'}\ndata: {data}\nimgsz: 64\n")
    rc, err = _run(capsys, ["search", spec, "--studies-dir", tmp_path / "studies"])  # stops at the model, after data
    assert rc == 2 and "missing.pt: file not found" in err[-1]
    assert f"3 of {len(images)} images of the train split cannot be read" in caplog.text
    for p in images:
        p.write_bytes(b"garbage")
    rc, err = _run(capsys, ["search", spec, "--studies-dir", tmp_path / "studies"])
    assert rc == 2 and f"none of the train split's {len(images)} images can be read" in err[-1]
    assert not (tmp_path / "studies").exists()
