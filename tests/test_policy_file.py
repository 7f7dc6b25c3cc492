"""Policy files (safe, versioned), trial selection for export, and the per-trial checkpoint round trip."""

from __future__ import annotations

import pytest
import yaml

from autoprune.deploy.export import (
    knee_trial,
    parse_condition,
    select_trial,
    tp_ratio_mapping,
)
from autoprune.engine.identity import fingerprint
from autoprune.errors import InputError, TrialError
from autoprune.model import Policy, criteria
from autoprune.model.document import PolicyDocument, dump_policy_file, load_policy_file
from conftest import make_study  # noqa: E402

POLICY = Policy(ratios=(("model.0", 0.25), ("model.2.cv1", 0.5)), criterion="l1", iterations=2, lr=0.01, ema=False,
                epochs=1)


def _doc() -> PolicyDocument:
    return PolicyDocument(fingerprint="sha256:00", architecture="yolov8n.yaml", imgsz=160, policy=POLICY,
                          channels={"model.0": 12, "model.2.cv1": 16}, metrics={"map50_95": 0.5},
                          baseline={"map50_95": 0.6}, source={"study": "s", "trial": 3},
                          versions={"torch": "2"}, seed=4, finetune={"batch": 8})


def test_policy_file_round_trips(tmp_path):
    path = dump_policy_file(_doc(), tmp_path / "policy.yaml")
    assert load_policy_file(path) == _doc()


def test_a_policy_file_has_no_yaml_anchors(tmp_path):
    """A value written twice (a delivery never fine-tuned: its finalize 'after' is its 'before') is written out
    twice, not as &id001 / *id001 (issue 39)."""
    split = {"val": {"map50_95": 0.7}}
    doc = PolicyDocument(**{**_doc().__dict__, "finalize": {"before": split, "after": split}})
    text = dump_policy_file(doc, tmp_path / "policy.yaml").read_text()
    assert "&id" not in text and "*id" not in text
    assert load_policy_file(tmp_path / "policy.yaml").finalize == {"before": split, "after": split}


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.update(schema="other"), "not an autoprune policy file"),
    (lambda d: d.update(version=2), "version 2 is not supported"),
    (lambda d: d.pop("channels"), "missing 'channels'"),
    (lambda d: d["ratios"].update({"model.0": 1.5}), "ratios.model.0"),
    (lambda d: d["channels"].update({"model.0": 0}), "channels.model.0"),
    (lambda d: d["policy"].update(ema="yes"), "'ema' has the wrong type"),
    (lambda d: d["base_model"].pop("fingerprint"), "missing 'fingerprint'"),
    # hand edits that used to crash under apply --finetune or pass silently (issue 22)
    (lambda d: d["policy"].update(lr=-1), r"policy.lr: -1.0 is outside \(0, 1\]"),
    (lambda d: d["policy"].update(lrf=5.0), r"policy.lrf: 5.0 is outside"),
    (lambda d: d["policy"].update(lr_step=100), "policy.lr_step"),
    (lambda d: d["policy"].update(epochs=1_000_000_000), "policy.epochs: 1000000000 is outside"),
    (lambda d: d["policy"].update(iterations=0), r"policy.iterations: 0 is outside \[1, 20\]"),
    (lambda d: d["policy"].update(iterations=1_000_000), "policy.iterations"),
    (lambda d: d["policy"].update(depth=1.5), "policy.depth"),
    (lambda d: d["policy"].update(sparsity=1e9), "policy.sparsity"),
    (lambda d: d["policy"].update(criterion="magic"), "policy.criterion: unknown criterion 'magic'"),
    (lambda d: d["policy"].update(schedule="step"), "policy.schedule: 'step' is not one of cosine, linear"),
    (lambda d: d["policy"].update(distill="no"), "'distill' has the wrong type"),
    (lambda d: d.update(imgsz=100), "imgsz: 100 is not a multiple of 32"),
    (lambda d: d.update(seed=-3), "seed: must be 0 to 2147483647"),
    (lambda d: d.update(seed=2**40), "seed: must be 0 to 2147483647"),  # numpy refuses it (issue 40)
    (lambda d: d.update(channels={}), r"channels: empty, but ratios prune 2 layer\(s\)"),  # issue 40
    (lambda d: d["finetune"].update(batch=0), "finetune.batch: '0' is not an integer"),
    (lambda d: d["finetune"].update(optimizer="Lion"), "finetune.optimizer: 'Lion' is not one of"),
])
def test_bad_policy_files_are_refused(tmp_path, edit, message):
    raw = _doc().to_dict()
    edit(raw)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError, match=message):
        load_policy_file(path)


def test_loading_a_policy_never_executes_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"!!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(InputError, match="not a valid policy file"):
        load_policy_file(path)
    assert not marker.exists()


def test_fingerprint_follows_the_weights(yolov8n):
    import torch

    a = fingerprint(yolov8n)
    assert a == fingerprint(yolov8n) and a.startswith("sha256:")
    with torch.no_grad():
        yolov8n.model[0].conv.weight[0, 0, 0, 0] += 1e-3
    assert fingerprint(yolov8n) != a


def test_selection_by_trial_best_where_and_knee(tmp_path):
    study, _ = make_study(tmp_path, n=30)
    failed = next(t for t in study.trials if t.state.name == "FAIL")
    with pytest.raises(InputError, match="FAIL, not COMPLETE"):
        select_trial(study, trial=failed.number)
    with pytest.raises(InputError, match="choose one of"):
        select_trial(study, trial=0, knee=True)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    best = select_trial(study, best="map50_95")
    assert best.user_attrs["metrics"]["map50_95"] == max(t.user_attrs["metrics"]["map50_95"] for t in complete)
    limit = sorted(t.user_attrs["metrics"]["params"] for t in complete)[len(complete) // 2]
    chosen = select_trial(study, best="map50_95", where=[f"params<={limit}", "map50 >= 0"])
    assert chosen.user_attrs["metrics"]["params"] <= limit
    assert chosen.user_attrs["metrics"]["map50_95"] == max(
        t.user_attrs["metrics"]["map50_95"] for t in complete if t.user_attrs["metrics"]["params"] <= limit)
    smallest = select_trial(study, best="params")
    assert smallest.user_attrs["metrics"]["params"] == min(t.user_attrs["metrics"]["params"] for t in complete)
    knee = knee_trial(study)
    assert knee.number in {t.number for t in study.best_trials}


@pytest.mark.parametrize("text", ["params", "params<=x", "unknown<=1", "params=<1"])
def test_bad_conditions(text):
    with pytest.raises(Exception, match="params|unknown|METRIC OP NUMBER|not a number"):
        parse_condition(text)


def test_tp_mapping_rounds_to_the_exact_channels():
    original = {"a": 16, "b.cv1": 64, "c": 3}
    keep = {"a": 13, "b.cv1": 40, "c": 3}
    modules = {"a": ["a.conv"], "b.cv1": ["b.cv0.conv", "b.cv1.conv"], "c": ["c.conv"]}
    mapping = tp_ratio_mapping(modules, original, keep)
    assert set(mapping) == {"a.conv", "b.cv0.conv", "b.cv1.conv", "c.conv"}
    half = {"a": 16, "b.cv1": 32, "c": 3}  # each half of a split C2f cv1 is half the unit
    for unit, names in modules.items():
        for name in names:  # torch-pruning keeps int(c * (1 - ratio)) channels
            c = half[unit] if name.startswith("b.") else original[unit]
            want = keep[unit] // 2 if name.startswith("b.") else keep[unit]
            assert int(c * (1 - mapping[name])) == want
    assert mapping["c.conv"] == 0.0


def test_roundtrip_check_catches_a_checkpoint_that_is_not_the_pruned_model(tmp_path, tiny_data, tiny_model_pt,
                                                                             monkeypatch):
    """Fakes the classic bug: the saver writes the unpruned base instead of the pruned model."""
    from autoprune.adapters import pruning, yolo
    from autoprune.config.spec import parse_spec
    from autoprune.engine.measure import measure_model
    from autoprune.engine.pipeline import TRACE_IMGSZ
    from autoprune.engine.trial import verify_roundtrip

    spec = parse_spec({"name": "t", "model": str(tiny_model_pt), "data": str(tiny_data), "imgsz": 64,
                       "latency": {"warmup": 1, "runs": 3}, "finetune": {"batch": 8}}, "s.yaml")
    model = yolo.load_model(tiny_model_pt)
    keep = {layer.name: max(1, layer.channels // 2) for layer in pruning.prunable_layers(model, TRACE_IMGSZ)}
    pruning.prune_step(model, keep, pruning.importance(criteria.get("l2")), TRACE_IMGSZ)
    measured = measure_model(model, spec.trial_settings)
    ok = verify_roundtrip(model, tmp_path / "ok.pt", spec.trial_settings, measured)
    assert ok["params"] == measured.params and abs(ok["map50_95"] - measured.map50_95) <= 1e-3

    real_save = yolo.save_checkpoint
    monkeypatch.setattr(yolo, "save_checkpoint",
                        lambda m, path, **kw: real_save(yolo.load_model(tiny_model_pt), path))
    with pytest.raises(TrialError, match="round trip: bad.pt reloads with"):
        verify_roundtrip(model, tmp_path / "bad.pt", spec.trial_settings, measured)

    from autoprune.engine.trial import run_trial_safely
    from autoprune.model import Layer

    layers = [Layer(n, c) for n, c in pruning.channel_counts(yolo.load_model(tiny_model_pt)).items()]
    policy = Policy(ratios=tuple((layer.name, 0.25) for layer in layers), criterion="l1", iterations=1, lr=0.001,
                    ema=False, epochs=1)
    result = run_trial_safely(spec.trial_settings, policy, layers, tmp_path / "trial")
    assert not result.ok and "round trip" in result.reason


def test_a_trial_that_ran_no_fine_tune_says_so_in_its_policy_section(tmp_path):
    """Issue 39: a direct delivery's policy section listed fine-tune epochs, lr and iterations that never ran; they
    now stand apart under not_run, and the file still loads to the same policy."""
    doc = PolicyDocument(**{**_doc().__dict__, "source": {"study": "s", "trial": 3, "finetuned": False}})
    raw = yaml.safe_load(dump_policy_file(doc, tmp_path / "policy.yaml").read_text())
    assert {"epochs", "lr", "iterations", "ema"}.isdisjoint(raw["policy"]) and "criterion" in raw["policy"]
    assert raw["policy"]["not_run"]["epochs"] == 1 and raw["policy"]["not_run"]["lr"] == 0.01
    assert load_policy_file(tmp_path / "policy.yaml") == doc
    assert "not_run" not in yaml.safe_load(dump_policy_file(_doc(), tmp_path / "p2.yaml").read_text())["policy"]
