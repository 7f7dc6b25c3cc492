"""Export and re-apply, on a real 2-trial study of the packaged demo baseline (nonzero mAP).

Nothing is faked here: the study runs through the CLI (Ray Tune, Optuna, SQLite), the
exported checkpoint is loaded by plain ultralytics in a fresh interpreter where autoprune
cannot be imported, ONNX runs in onnxruntime, and apply prunes with torch-pruning.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import optuna
import pytest
import yaml
from optuna.trial import TrialState

pytestmark = pytest.mark.slow

DEMO_IMGSZ = 160


def _cli(args, cwd, ok=True):
    r = subprocess.run([sys.executable, "-m", "autoprune", *map(str, args)], capture_output=True, text=True,
                       cwd=cwd, timeout=900)
    if ok:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def demo_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    spec = {"name": "exp", "model": "demo", "data": "demo", "imgsz": DEMO_IMGSZ, "trials": 2, "seed": 0,
            "space": {"ratio": {"low": 0.1, "high": 0.3}, "criteria": ["l1"], "iterations": 1, "epochs": 1},
            "finetune": {"batch": 16}, "latency": {"warmup": 1, "runs": 5}, "resources": {"cpus": 2}}
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    r = _cli(["search", "spec.yaml"], root)
    # the scan's probes leave blocks whole (ratio 0, outside 0.1-0.3) on purpose: no Optuna warning per parameter
    assert "out of range" not in r.stderr
    study = optuna.load_study(study_name="exp", storage=f"sqlite:///{root}/studies/autoprune.db")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    return root, study


@pytest.fixture(scope="module")
def exported(demo_study):
    root, study = demo_study
    limit = max(t.user_attrs["metrics"]["params"] for t in study.trials) + 1
    r = _cli(["export", "spec.yaml", "--best", "map50_95", "--where", f"params<={limit}", "--out", "out"], root)
    best = max(study.trials, key=lambda t: t.user_attrs["metrics"]["map50_95"])
    return root / "out", best, r.stdout


def test_export_writes_policy_checkpoint_onnx_and_mapping(demo_study, exported):
    from autoprune.adapters import yolo
    from autoprune.demo.baseline import PACKAGED_BASELINE
    from autoprune.deploy.export import onnx_max_abs_diff
    from autoprune.engine.identity import fingerprint
    from autoprune.model.document import load_policy_file

    root, study = demo_study
    out, best, stdout = exported
    assert f"exported trial {best.number}" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["policy.yaml", "pruned.onnx", "pruned.pt", "tp_ratios.yaml"]
    raw = yaml.safe_load((out / "policy.yaml").read_text())
    assert raw["schema"] == "autoprune.policy" and raw["version"] == 1
    assert set(raw["versions"]) == {"torch", "ultralytics", "torch_pruning", "autoprune"}
    doc = load_policy_file(out / "policy.yaml")
    assert doc.fingerprint == fingerprint(yolo.load_model(PACKAGED_BASELINE))
    assert doc.architecture == "yolov8n.yaml" and doc.imgsz == DEMO_IMGSZ
    assert doc.policy.to_dict() == best.user_attrs["policy"]
    assert dict(doc.channels) == best.user_attrs["channels"]
    assert doc.metrics == pytest.approx(best.user_attrs["metrics"])
    assert doc.baseline["params"] == study.user_attrs["baseline"]["params"]
    assert doc.finetune["batch"] == 16 and doc.source["trial"] == best.number
    assert yolo.checkpoint_param_count(out / "pruned.pt") == int(best.user_attrs["metrics"]["params"])
    line = next(ln for ln in stdout.splitlines() if "max abs difference" in ln)
    assert float(line.rsplit(" ", 1)[1]) < 1e-3
    assert onnx_max_abs_diff(out / "pruned.pt", out / "pruned.onnx", DEMO_IMGSZ) < 1e-3


def test_checkpoint_loads_in_plain_ultralytics_without_autoprune(tmp_path, demo_study, exported):
    """YOLO('pruned.pt').val/.predict in a fresh interpreter where `import autoprune` fails."""
    from autoprune.demo import ensure_dataset

    out, best, _ = exported
    data = ensure_dataset()
    image = sorted((data.parent / "images" / "val").iterdir())[0]
    script = tmp_path / "check.py"
    script.write_text(textwrap.dedent("""
        import json, sys
        sys.modules["autoprune"] = None  # an installed autoprune must not be needed
        try:
            import autoprune  # noqa: F401
            raise SystemExit("autoprune is importable")
        except ImportError:
            pass
        from ultralytics import YOLO
        ckpt, data, imgsz, image = sys.argv[1:5]
        model = YOLO(ckpt)
        params = sum(p.numel() for p in model.model.parameters())
        r = model.val(data=data, imgsz=int(imgsz), batch=16, plots=False, device="cpu", workers=0, verbose=False)
        pred = model.predict(image, imgsz=int(imgsz), device="cpu", save=False, verbose=False)[0]
        print(json.dumps({"params": params, "map50_95": float(r.box.map), "map50": float(r.box.map50),
                          "boxes": len(pred.boxes), "classes": sorted({int(c) for c in pred.boxes.cls})}))
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTOPRUNE", "YOLO", "PYTHONPATH"))}
    env.update(YOLO_OFFLINE="1", YOLO_CONFIG_DIR=str(tmp_path / "cfg"), MPLCONFIGDIR=str(tmp_path / "mpl"))
    r = subprocess.run([sys.executable, str(script), str(out / "pruned.pt"), str(data), str(DEMO_IMGSZ), str(image)],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    want = best.user_attrs["metrics"]
    assert got["params"] == int(want["params"])
    assert abs(got["map50_95"] - want["map50_95"]) <= 1e-3 and abs(got["map50"] - want["map50"]) <= 1e-3
    assert got["boxes"] >= 1 and all(0 <= c < 3 for c in got["classes"])


def test_tp_ratios_reproduce_the_channels_with_torch_pruning(exported):
    """The README's example: tp_ratios.yaml as torch-pruning's pruning_ratio_dict on the C2f_v2 form."""
    import torch
    import torch_pruning as tp

    from autoprune.adapters import pruning as atp
    from autoprune.adapters import yolo
    from autoprune.demo.baseline import PACKAGED_BASELINE
    from autoprune.model.document import load_policy_file

    out, best, _ = exported
    model = yolo.load_model(PACKAGED_BASELINE)
    atp.split_c2f(model)  # the same layout as torch-pruning's YOLOv8 example's C2f_v2
    mapping = yaml.safe_load((out / "tp_ratios.yaml").read_text())
    ratio_dict = {model.get_submodule(name): r for name, r in mapping.items()}
    assert all(isinstance(m, torch.nn.Conv2d) for m in ratio_dict)
    detect = model.model[-1]
    ignored = [detect.dfl] + [branch[-1] for branch in (*detect.cv2, *detect.cv3)]
    pruner = tp.pruner.MetaPruner(model, torch.zeros(1, 3, DEMO_IMGSZ, DEMO_IMGSZ),
                                  importance=tp.importance.GroupMagnitudeImportance(p=1), pruning_ratio=0.0,
                                  pruning_ratio_dict=ratio_dict, ignored_layers=ignored)
    pruner.step()
    atp.merge_c2f(model)
    assert atp.channel_counts(model) == dict(load_policy_file(out / "policy.yaml").channels)
    assert yolo.count_params(model) == int(best.user_attrs["metrics"]["params"])


def test_apply_reproduces_channels_and_checks_the_base(tmp_path, demo_study, exported, tiny_model_pt):
    from autoprune.adapters import pruning, yolo
    from autoprune.demo.baseline import PACKAGED_BASELINE

    out, best, _ = exported
    r = _cli(["apply", out / "policy.yaml", "--model", PACKAGED_BASELINE, "--out", "re/pruned.pt"], tmp_path)
    assert "at the policy's channels" in r.stdout
    model = yolo.load_model(tmp_path / "re" / "pruned.pt")
    assert pruning.channel_counts(model) == best.user_attrs["channels"]
    assert yolo.count_params(model) == int(best.user_attrs["metrics"]["params"])

    other = _cli(["apply", out / "policy.yaml", "--model", tiny_model_pt, "--out", "x/other.pt"], tmp_path, ok=False)
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert other.stderr.count("\n") == 1 and "fingerprint differs" in other.stderr
    assert not (tmp_path / "x" / "other.pt").exists()

    _cli(["apply", out / "policy.yaml", "--model", tiny_model_pt, "--out", "x/forced.pt", "--force"],
                  tmp_path)
    assert pruning.channel_counts(yolo.load_model(tmp_path / "x" / "forced.pt")) == best.user_attrs["channels"]

    _cli(["apply", out / "policy.yaml", "--model", out / "pruned.pt", "--out", "again.pt", "--force"],
                 tmp_path)  # re-applying to the pruned model changes nothing
    assert yolo.count_params(yolo.load_model(tmp_path / "again.pt")) == int(best.user_attrs["metrics"]["params"])

    raw = yaml.safe_load((out / "policy.yaml").read_text())
    raw["channels"]["model.0"] = 999
    (tmp_path / "wide.yaml").write_text(yaml.safe_dump(raw))
    wide = _cli(["apply", "wide.yaml", "--model", PACKAGED_BASELINE, "--out", "y.pt"], tmp_path, ok=False)
    assert wide.returncode == 2 and "channels.model.0 = 999 exceeds the base model's 16" in wide.stderr
    assert not (tmp_path / "y.pt").exists()


@pytest.mark.parametrize("edit,words", [
    ("empty", "channels: empty, but ratios prune"),  # issue 40: applied as the unpruned model before
    ("one_layer_less", "parameters, but it records"),
])
def test_a_policy_whose_channels_do_not_give_its_parameters_is_refused(tmp_path, exported, edit, words):
    """Applying a policy produces the parameter count it records, or refuses in one line with nothing written."""
    from autoprune.demo.baseline import PACKAGED_BASELINE

    out, best, _ = exported
    raw = yaml.safe_load((out / "policy.yaml").read_text())
    pruned = [n for n, c in raw["channels"].items() if c < 999 and raw["ratios"].get(n)]
    assert pruned  # the exported trial pruned something
    raw["channels"] = {} if edit == "empty" else {n: c for n, c in raw["channels"].items() if n != pruned[-1]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    r = _cli(["apply", "p.yaml", "--model", PACKAGED_BASELINE, "--out", "z/p.pt"], tmp_path, ok=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert words in r.stderr and not (tmp_path / "z" / "p.pt").exists()


def test_apply_finetune_repeats_the_trial(tmp_path, exported):
    from autoprune.demo import ensure_dataset
    from autoprune.demo.baseline import PACKAGED_BASELINE

    out, best, _ = exported
    r = _cli(["apply", out / "policy.yaml", "--model", PACKAGED_BASELINE, "--data", ensure_dataset(), "--finetune",
              "--out", "ft.pt"], tmp_path)
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("mAP50-95"))
    got = float(line.split()[1].rstrip(","))
    assert abs(got - best.user_attrs["metrics"]["map50_95"]) <= 0.02  # same policy, seed and settings on CPU
    assert (tmp_path / "ft.pt").is_file()


def test_apply_finetune_of_a_trial_without_fine_tune_repeats_adaptive_bn(tmp_path, exported, monkeypatch):
    """A policy file whose trial had adaptive BN in place of its fine-tune (``budget.direct``: ``source.finetuned:
    false``): ``apply --finetune`` repeats that, so ultralytics' fine-tune is replaced by one that fails the test if
    it is called; the applied model validates."""
    from autoprune.adapters import yolo
    from autoprune.demo import ensure_dataset
    from autoprune.demo.baseline import PACKAGED_BASELINE
    from autoprune.deploy.apply import apply_policy

    out, _, _ = exported
    raw = yaml.safe_load((out / "policy.yaml").read_text())
    raw["source"]["finetuned"] = False
    (tmp_path / "direct.yaml").write_text(yaml.safe_dump(raw))

    def never(*a, **kw):
        raise AssertionError("a trial without fine-tune was re-applied with one")

    monkeypatch.setattr(yolo, "finetune", never)
    res = apply_policy(tmp_path / "direct.yaml", PACKAGED_BASELINE, tmp_path / "d.pt", data=str(ensure_dataset()),
                       finetune=True)
    assert (tmp_path / "d.pt").is_file() and res.channels == raw["channels"] and res.metrics["map50_95"] > 0


@pytest.mark.parametrize("args,message", [
    (["--trial", "99"], "has no trial 99"),
    (["--best", "map50_95", "--where", "params<=1"], "no completed trial matches"),
    (["--best", "map50_95", "--where", "params<<1"], "is not METRIC OP NUMBER"),
    (["--best", "nope"], "nope"),
    (["--knee", "--where", "params<=1"], "--where needs --best"),
    (["--trial", "0", "--knee"], "not allowed with"),
])
def test_export_selection_errors(demo_study, args, message):
    root, _ = demo_study
    r = _cli(["export", "spec.yaml", *args, "--out", "bad"], root, ok=False)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1
    assert not (root / "bad").exists()


def test_front_report_export_work_on_a_cuda_spec_without_cuda(demo_study):
    """A spec that names a GPU: browsing and exporting its study needs none; only search and apply check devices."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    root, _ = demo_study
    spec = yaml.safe_load((root / "spec.yaml").read_text())
    spec.update(device="cuda", resources={"cpus": 2, "gpus": 1})
    (root / "cuda.yaml").write_text(yaml.safe_dump(spec))
    assert "Pareto front of exp" in _cli(["front", "cuda.yaml"], root).stdout
    _cli(["report", "cuda.yaml", "--out", "cuda.html"], root)
    assert (root / "cuda.html").stat().st_size > 10_000
    _cli(["export", "cuda.yaml", "--knee", "--no-onnx", "--out", "cuda-export"], root)
    assert (root / "cuda-export" / "pruned.pt").is_file() and (root / "cuda-export" / "policy.yaml").is_file()
    r = _cli(["search", "cuda.yaml"], root, ok=False)
    assert r.returncode == 2 and "device: 'cuda' requested but no CUDA device is available" in r.stderr


def test_finalize_fine_tunes_a_front_member_and_reports_val_and_test(demo_study):
    """The full-budget fine-tune of a chosen member, measured on the val split and on a test split the search
    never selected on (the demo data set's test images come from their own random stream)."""
    from autoprune.adapters import yolo

    root, study = demo_study
    r = _cli(["finalize", "spec.yaml", "--knee", "--epochs", "2", "--no-onnx", "--out", "fin"], root)
    fin = yaml.safe_load((root / "fin" / "policy.yaml").read_text())["finalize"]
    assert fin["epochs"] == 2 and fin["optimizer_steps"] == 2 * 13  # 200 images, batch 16: one step a batch
    assert set(fin["before"]) == set(fin["after"]) == {"val", "test"}
    assert "  val: mAP50-95" in r.stdout and "  test: mAP50-95" in r.stdout
    knee = next(t for t in study.trials if t.number == fin_trial(root))
    final = yolo.load_model(root / "fin" / "pruned.pt")
    assert yolo.count_params(final) == int(knee.user_attrs["metrics"]["params"])  # same structure, new weights
    assert abs(fin["before"]["val"]["map50_95"] - knee.user_attrs["metrics"]["map50_95"]) < 1e-3
    assert fin["finetuned"]["val"]["map50_95"] != fin["before"]["val"]["map50_95"]  # the fine-tune moved the weights
    assert fin["after"] == (fin["before"] if fin["kept"] == "start" else fin["finetuned"])  # what was delivered
    assert fin["after"]["val"]["map50_95"] >= fin["before"]["val"]["map50_95"]  # keep_better: never worse on val


def test_finalize_with_distillation_from_the_base(demo_study):
    from autoprune.adapters import yolo

    root, study = demo_study
    r = _cli(["finalize", "spec.yaml", "--knee", "--epochs", "1", "--distill", "--no-onnx", "--out", "fin-kd"], root)
    doc = yaml.safe_load((root / "fin-kd" / "policy.yaml").read_text())
    assert doc["finalize"]["distill"] is True and "  val: mAP50-95" in r.stdout
    knee = next(t for t in study.trials if t.number == doc["source"]["trial"])
    final = yolo.load_model(root / "fin-kd" / "pruned.pt")
    assert yolo.count_params(final) == int(knee.user_attrs["metrics"]["params"])


class _Pwn:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_finalize_distill_refuses_a_teacher_replaced_by_a_malicious_pickle(demo_study, tmp_path):
    """Issue 40: --distill loaded the study's base as the teacher without autoprune's checked load (ultralytics'
    safe loader refused it, with two chained tracebacks, exit 1). On a copy of the study whose recorded base is a
    pickle that runs code when loaded: one line, exit 2, no code ran, nothing written to --out."""
    import shutil

    import torch

    root, _ = demo_study
    (tmp_path / "studies").mkdir()
    shutil.copy(root / "studies" / "autoprune.db", tmp_path / "studies" / "autoprune.db")
    shutil.copy(root / "spec.yaml", tmp_path / "spec.yaml")
    torch.save({"model": _Pwn()}, tmp_path / "base.pt")
    copy = optuna.load_study(study_name="exp", storage=f"sqlite:///{tmp_path}/studies/autoprune.db")
    copy.set_user_attr("baseline", {**copy.user_attrs["baseline"], "model": str(tmp_path / "base.pt")})
    r = _cli(["finalize", "spec.yaml", "--knee", "--epochs", "1", "--distill", "--no-onnx", "--out", "kd"], tmp_path,
             ok=False)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert lines[0].startswith("autoprune: error: --distill: the teacher (the study's base model) is refused")
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "kd").exists()


def fin_trial(root):
    return yaml.safe_load((root / "fin" / "policy.yaml").read_text())["source"]["trial"]


def test_export_falls_back_to_the_artifact_store_when_the_trial_file_was_overwritten(demo_study):
    """Another study of the same name (other storage) overwrote the trial's pruned.pt: export checks the
    parameter count and takes the intact copy from the artifact store instead of failing."""
    import shutil

    from autoprune.adapters import yolo
    from autoprune.demo.baseline import PACKAGED_BASELINE

    root, study = demo_study
    t = study.trials[0]
    path = t.user_attrs["checkpoint"]
    keep = root / "kept.pt"
    shutil.copyfile(path, keep)
    shutil.copyfile(PACKAGED_BASELINE, path)  # the unpruned model now sits where the trial's file was
    try:
        _cli(["export", "spec.yaml", "--trial", str(t.number), "--no-onnx", "--out", "fallback"], root)
        got = yolo.count_params(yolo.load_model(root / "fallback" / "pruned.pt"))
        assert got == int(t.user_attrs["metrics"]["params"])
    finally:
        shutil.copyfile(keep, path)


def test_remeasure_re_times_the_front_and_keeps_the_old_values(demo_study, tmp_path):
    """``autoprune remeasure`` on a copy of the study: the front's latency objectives, metrics and front rows are
    replaced by a new interleaved timing against the base; the old values stay in the trial's record; a spread
    limit no timing meets re-times twice and flags the member on the front."""
    import shutil

    import sqlalchemy as sa

    root, _ = demo_study
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("out", "fin*", "fallback", "*.onnx"))
    url = f"sqlite:///{copy}/studies/autoprune.db"
    before = optuna.load_study(study_name="exp", storage=url)
    front = sorted(t.number for t in before.best_trials)
    idx = before.user_attrs["objectives"].index("latency_ms")
    r = _cli(["remeasure", "spec.yaml", "--rounds", "4", "--max-spread", "1e-9", "--retries", "2"], copy)
    after = optuna.load_study(study_name="exp", storage=url)
    for n in front:
        old, new = before.trials[n], after.trials[n]
        assert f"trial {n}: latency_ms {old.values[idx]:.4g} -> " in r.stdout
        assert new.values[idx] == pytest.approx(new.user_attrs["metrics"]["latency_ms"])
        assert new.values[idx] == pytest.approx(new.user_attrs["latency"]["median_ms"])
        assert [v for i, v in enumerate(new.values) if i != idx] == [v for i, v in enumerate(old.values) if i != idx]
        hist = new.user_attrs["remeasured"]
        assert len(hist) == 1 and hist[0]["latency_ms"] == old.values[idx]
        assert hist[0]["latency"] == old.user_attrs["latency"]
        lat = new.user_attrs["latency"]
        assert lat["attempts"] == 3 and lat["rounds"] == 12 and lat["unreliable"] and lat["estimator"] == "min"
    assert "latency check" in r.stdout and "noisy" in r.stdout
    with sa.create_engine(url).connect() as c:
        rows: dict[int, float] = dict(c.execute(sa.text("SELECT trial_number, latency_ms FROM autoprune_front "
                                                        "WHERE study_name = 'exp'")).all())
    assert rows == {n: pytest.approx(after.trials[n].values[idx]) for n in front}
    # a second pass appends to the history; a trial that is not there is refused in one line
    _cli(["remeasure", "spec.yaml", "--trial", str(front[0]), "--rounds", "2"], copy)
    again = optuna.load_study(study_name="exp", storage=url).trials[front[0]]
    assert len(again.user_attrs["remeasured"]) == 2 and again.user_attrs["remeasured"][1]["latency"]["attempts"] == 3
    bad = _cli(["remeasure", "spec.yaml", "--trial", "99"], copy, ok=False)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "--trial 99" in bad.stderr


def test_export_onnx_int8_writes_a_quantized_file_that_validates_to_its_recorded_map(demo_study, tmp_path):
    """--format onnx-int8: pruned_int8.onnx beside pruned.onnx, loaded by ONNX Runtime alone and by ultralytics;
    validating it again gives the mAP policy.yaml records; its latency was timed against the base's INT8."""
    import onnxruntime
    from ultralytics import YOLO

    root, study = demo_study
    knee = max(study.best_trials, key=lambda t: t.number)
    r = _cli(["export", "spec.yaml", "--trial", str(knee.number), "--format", "onnx-int8", "--out", tmp_path / "q"],
             root)
    out = tmp_path / "q"
    doc = yaml.safe_load((out / "policy.yaml").read_text())
    d = doc["deployed"]
    assert d["file"] == "pruned_int8.onnx" and d["precision"] == "int8" and d["split"] == "val"
    assert (out / "pruned_int8.onnx").is_file() and (out / "pruned.onnx").is_file()
    assert d["latency_ms"] > 0 and d["latency_ratio_vs_base"] > 0 and "pruned_int8.onnx (int8" in r.stdout
    sess = onnxruntime.InferenceSession(str(out / "pruned_int8.onnx"), providers=["CPUExecutionProvider"])
    assert "QuantizeLinear" in {n.op_type for n in __import__("onnx").load(str(out / "pruned_int8.onnx")).graph.node}
    assert sess.get_inputs()[0].shape == [1, 3, d["imgsz"], d["imgsz"]]
    again = YOLO(str(out / "pruned_int8.onnx"), task="detect").val(data=study.user_attrs["baseline"]["data"],
                                                                   imgsz=d["imgsz"], plots=False, verbose=False)
    assert again.box.map == pytest.approx(d["map50_95"], abs=1e-6)
    bad = _cli(["export", "spec.yaml", "--trial", str(knee.number), "--format", "onnx-int8", "--no-onnx", "--out",
                tmp_path / "x"], root, ok=False)
    assert bad.returncode == 2 and "--format onnx-int8 needs the ONNX export" in bad.stderr


@pytest.mark.parametrize("fmt", ["openvino", "openvino-int8"])
def test_export_openvino_writes_a_folder_that_validates_to_its_recorded_map(demo_study, tmp_path, fmt):
    """--format openvino[-int8]: the folder ultralytics' exporter writes (INT8 by NNCF), loaded by OpenVINO alone and
    by ultralytics; validating it again gives the mAP policy.yaml records; timed against the base exported alike."""
    openvino = pytest.importorskip("openvino")
    from ultralytics import YOLO

    root, study = demo_study
    knee = max(study.best_trials, key=lambda t: t.number)
    r = _cli(["export", "spec.yaml", "--trial", str(knee.number), "--format", fmt, "--out", tmp_path / "v"], root)
    out = tmp_path / "v"
    d = yaml.safe_load((out / "policy.yaml").read_text())["deployed"]
    folder = out / d["file"]
    assert d["runtime"] == "openvino" and d["precision"] == ("int8" if fmt.endswith("int8") else "fp32")
    assert folder.is_dir() and folder.name.endswith("_openvino_model") and (out / "pruned.onnx").is_file()
    assert ("calibration" in d) == fmt.endswith("int8") and "train images" in d.get("calibration", "train images")
    assert d["latency_ms"] > 0 and d["latency_ratio_vs_base"] > 0 and f"{d['file']} ({d['precision']} on" in r.stdout
    ops = openvino.Core().read_model(str(next(folder.glob("*.xml")))).get_ordered_ops()
    assert any(op.get_type_name() == "FakeQuantize" for op in ops) == fmt.endswith("int8")
    again = YOLO(str(folder), task="detect").val(data=study.user_attrs["baseline"]["data"], imgsz=d["imgsz"],
                                                 plots=False, verbose=False)
    assert again.box.map == pytest.approx(d["map50_95"], abs=1e-6)


def test_export_engine_without_tensorrt_is_refused_in_one_line_before_anything_is_written(demo_study, tmp_path):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    root, study = demo_study
    r = _cli(["export", "spec.yaml", "--trial", str(study.best_trials[0].number), "--format", "engine", "--out",
              tmp_path / "e"], root, ok=False)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "--format engine: tensorrt needs the tensorrt package" in r.stderr and not (tmp_path / "e").exists()
