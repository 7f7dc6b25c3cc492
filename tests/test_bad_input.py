"""Bad input: a one-line error naming what is wrong, exit code 2, no traceback, nothing written.

Every case runs the real CLI in a subprocess (run concurrently, then checked one by one).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

CASES: dict[str, tuple[str, ...]] = {}  # name -> (needle in the error line,)


def _case(name: str, needle: str):
    CASES[name] = (needle,)


for _n, _needle in [
    ("malformed_yaml", "malformed YAML (line"),
    ("top_level_list", "expected a YAML mapping at the top level"),
    ("missing_spec_file", "spec file not found"),
    ("unknown_key", "colour: unknown key"),
    ("unknown_space_key", "space.width: unknown key"),
    ("wrong_type", "trials: expected an integer, got str 'ten'"),
    ("ratio_one", "space.ratio.high: 1 is outside [0, 1)"),
    ("ratio_negative", "space.ratio.low: -0.2 is outside [0, 1)"),
    ("empty_criteria", "space.criteria: empty list"),
    ("unknown_criterion", "unknown criterion 'magnitude' (choose from l1, l2"),
    ("zero_trials", "trials: must be >= 1, got 0"),
    ("negative_trials", "trials: must be >= 1, got -5"),
    ("cli_zero_trials", "argument --trials: must be >= 1"),
    ("lr_inverted", "space.lr: low (0.1) is greater than high (0.001)"),
    ("unknown_objective", "objectives: unknown objective 'fps'"),
    ("imgsz", "imgsz: 100 is not a multiple of 32"),
    ("missing_model", "model: /nope/best.pt: file not found"),
    ("corrupt_checkpoint", "not a loadable ultralytics checkpoint"),
    ("non_yolo_checkpoint", "not a loadable ultralytics checkpoint"),
    ("classifier_checkpoint", "holds a ClassificationModel, not a YOLO detection, segmentation or pose model"),
    ("missing_data", "data: /nope/data.yaml: data set YAML not found"),
    ("data_no_images", "no images in the val split"),
    ("data_no_labels", "no label files for the train images"),
    ("class_mismatch", "predicts 3 classes but data"),
    ("storage_scheme", "storage: 'redis://localhost:6379' is not a supported URL"),
    ("postgres_unreachable", "storage: cannot open postgresql+psycopg://***@127.0.0.1:9/none"),
    ("existing_study_other_objectives", "name: study 'taken' exists with objectives"),
    ("cuda_on_cpu", "device: 'cuda' requested but no CUDA device is available"),
    ("gpus_on_cpu", "resources.gpus: 0.5 GPU(s) per trial requested but no CUDA device"),
    ("path_traversal", "name: '../../etc' must be"),
]:
    _case(_n, _needle)


def _write(path: Path, obj) -> Path:
    path.write_text(obj if isinstance(obj, str) else yaml.safe_dump(obj))
    return path


def _copy_data(src_yaml: Path, dst: Path, drop: str | None = None, names: int | None = None) -> Path:
    shutil.copytree(src_yaml.parent, dst)
    info = yaml.safe_load((dst / "data.yaml").read_text())
    info["path"] = str(dst)
    if names:
        info["names"] = {i: f"c{i}" for i in range(names)}
    if drop:
        for p in (dst / drop).iterdir():
            p.unlink() if p.is_file() else shutil.rmtree(p)
    return _write(dst / "data.yaml", info)


def _build(name: str, tmp: Path, good: dict, data: Path, model: Path, pg_url: str | None) -> list[str]:
    spec = dict(good)
    args: list[str] = []
    path = tmp / f"{name}.yaml"
    if name == "malformed_yaml":
        return ["search", str(_write(path, "name: x\nspace: {ratio: [0.1, 0.2\n"))]
    if name == "top_level_list":
        return ["search", str(_write(path, "- a\n- b\n"))]
    if name == "missing_spec_file":
        return ["search", str(tmp / "absent.yaml")]
    edits = {
        "unknown_key": {"colour": "red"},
        "unknown_space_key": {"space": {"width": 3}},
        "wrong_type": {"trials": "ten"},
        "ratio_one": {"space": {"ratio": {"low": 0.1, "high": 1.0}}},
        "ratio_negative": {"space": {"ratio": {"low": -0.2, "high": 0.5}}},
        "empty_criteria": {"space": {"criteria": []}},
        "unknown_criterion": {"space": {"criteria": ["l1", "magnitude"]}},
        "zero_trials": {"trials": 0},
        "negative_trials": {"trials": -5},
        "lr_inverted": {"space": {"lr": {"low": 0.1, "high": 0.001}}},
        "unknown_objective": {"objectives": ["map50_95", "fps"]},
        "imgsz": {"imgsz": 100},
        "missing_model": {"model": "/nope/best.pt"},
        "missing_data": {"data": "/nope/data.yaml"},
        "storage_scheme": {"storage": "redis://localhost:6379"},
        "postgres_unreachable": {"storage": "postgresql+psycopg://autoprune:secret@127.0.0.1:9/none"},
        "cuda_on_cpu": {"device": "cuda"},
        "path_traversal": {"name": "../../etc"},
    }
    if name in edits:
        spec.update(edits[name])
    elif name == "cli_zero_trials":
        args = ["--trials", "0"]
    elif name == "gpus_on_cpu":
        args = ["--gpus-per-trial", "0.5"]
    elif name == "corrupt_checkpoint":
        bad = tmp / "corrupt.pt"
        bad.write_bytes(b"\x80\x04not really a checkpoint" * 50)
        spec["model"] = str(bad)
    elif name == "non_yolo_checkpoint":
        import torch

        torch.save({"weights": torch.zeros(3)}, tmp / "plain.pt")
        spec["model"] = str(tmp / "plain.pt")
    elif name == "classifier_checkpoint":
        from ultralytics.nn.tasks import ClassificationModel

        from autoprune.adapters import yolo

        cls = ClassificationModel("yolov8n-cls.yaml", nc=3, verbose=False)
        cls.args = {}
        spec["model"] = str(yolo.save_checkpoint(cls, tmp / "cls.pt"))
    elif name == "data_no_images":
        spec["data"] = str(_copy_data(data, tmp / "noimg", drop="images/val"))
    elif name == "data_no_labels":
        spec["data"] = str(_copy_data(data, tmp / "nolab", drop="labels/train"))
    elif name == "class_mismatch":
        spec["data"] = str(_copy_data(data, tmp / "five", names=5))
    elif name == "existing_study_other_objectives":
        spec["name"] = "taken"
        spec["objectives"] = ["map50", "macs"]
    return ["search", str(_write(path, spec)), *args]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, tiny_data, tiny_model_pt):
    from autoprune.config.spec import parse_spec
    from autoprune.search.storage.study import get_storage, open_study_for

    tmp = tmp_path_factory.mktemp("bad")
    good = {"name": "ok", "model": str(tiny_model_pt), "data": str(tiny_data), "imgsz": 64, "trials": 1}
    studies = tmp / "studies"
    taken = parse_spec({**good, "name": "taken"}, "s.yaml", studies_dir=studies)
    pre = open_study_for(taken, get_storage(taken.storage_url))  # an existing study with the default objectives
    pre.set_user_attr("marker", 1)
    created = dict(pre.user_attrs)  # before any of the bad commands runs
    jobs = {}
    for name in CASES:
        case_dir = tmp / name
        case_dir.mkdir()
        argv = _build(name, case_dir, good, tiny_data, tiny_model_pt, None)
        sd = studies if name == "existing_study_other_objectives" else case_dir / "studies"
        jobs[name] = ([sys.executable, "-m", "autoprune", *argv, "--studies-dir", str(sd)]
                      if argv[0] == "search" and len(argv) > 1 else argv, case_dir, sd)

    def run(item):
        name, (cmd, cwd, sd) = item
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=300)
        return name, (r, sd)

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(pool.map(run, jobs.items()))
    results["_taken_url"] = taken.storage_url
    results["_taken_attrs"] = created  # what creation wrote (objectives, role, this driver, marker)
    return results


def test_at_least_twenty_bad_inputs_are_covered():
    assert len(CASES) >= 20


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, outcomes):
    (needle,) = CASES[name]
    r, studies = outcomes[name]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("autoprune: error: ") and needle in lines[0], lines[0]
    assert "Traceback" not in r.stderr + r.stdout
    if name == "existing_study_other_objectives":
        import optuna

        study = optuna.load_study(study_name="taken", storage=outcomes["_taken_url"])
        assert study.user_attrs == outcomes["_taken_attrs"]  # what creation wrote: the refused search wrote nothing
        assert {"objectives", "marker", "autoprune_role"} <= set(study.user_attrs)
        assert study.trials == []
    else:
        assert not (studies / "autoprune.db").exists()
        assert not any(studies.glob("*")) if studies.exists() else True
