"""Structural pruning through the torch-pruning adapter: real channel removal on real YOLO graphs."""

from __future__ import annotations

import pytest
import torch

from autoprune.adapters import pruning, yolo
from autoprune.errors import TrialError
from autoprune.model import criteria
from autoprune.model.sampling import target_keep

TRACE = 64


def _forward_shape(model, imgsz=64):
    model.eval()
    with torch.no_grad():
        return tuple(model(torch.zeros(1, 3, imgsz, imgsz))[0].shape)


def test_layer_names_are_stable_module_paths(yolov8n):
    layers = pruning.prunable_layers(yolov8n, TRACE)
    names = [lay.name for lay in layers]
    assert len(names) == len(set(names)) == 51
    modules = dict(yolov8n.named_modules())
    assert all(n in modules for n in names)  # every name is a real module path of the unpruned model
    assert names == [lay.name for lay in pruning.prunable_layers(yolov8n, TRACE)]  # deterministic
    assert names.index("model.0") < names.index("model.2.cv1") < names.index("model.22.cv2.0.0")  # network order


def test_detect_outputs_dfl_never_prunable(yolov8n):
    names = {lay.name for lay in pruning.prunable_layers(yolov8n, TRACE)}
    for i in range(3):
        assert f"model.22.cv2.{i}.2" not in names and f"model.22.cv3.{i}.2" not in names
    assert not any("dfl" in n for n in names)


def test_per_layer_ratios_change_channel_counts_as_asked(yolov8n):
    layers = pruning.prunable_layers(yolov8n, TRACE)
    original = {lay.name: lay.channels for lay in layers}
    ratios = {name: (0.5 if i % 3 == 0 else 0.25 if i % 3 == 1 else 0.0) for i, name in enumerate(original)}
    keep = target_keep(original, ratios, 1, 1)
    shape = _forward_shape(yolov8n)
    before = yolo.count_params(yolov8n)
    after = pruning.prune_step(yolov8n, keep, pruning.importance(criteria.get("l1")), TRACE)
    assert after == keep
    assert pruning.channel_counts(yolov8n, TRACE) == keep  # re-derived from the pruned graph
    assert yolo.count_params(yolov8n) < before
    assert _forward_shape(yolov8n) == shape
    detect = yolov8n.model[-1]
    assert [b[-1].out_channels for b in detect.cv2] == [64] * 3
    assert [b[-1].out_channels for b in detect.cv3] == [3] * 3


def test_c2f_is_merged_back_into_ultralytics_classes(yolov8n):
    from ultralytics.nn.modules import C2f

    original = {lay.name: lay.channels for lay in pruning.prunable_layers(yolov8n, TRACE)}
    keep = target_keep(original, {"model.2.cv1": 0.5}, 1, 1)
    pruning.prune_step(yolov8n, keep, pruning.importance(criteria.get("l2")), TRACE)
    assert not any(isinstance(m, pruning.C2fSplit) for m in yolov8n.modules())
    block = yolov8n.model[2]
    assert type(block) is C2f
    assert block.c == original["model.2.cv1"] // 2
    assert block.cv1.conv.out_channels == 2 * block.c
    assert _forward_shape(yolov8n)[1] == 4 + 3


def test_iterative_schedule_reaches_target():
    original = {"a": 64, "b": 10}
    ratios = {"a": 0.5, "b": 0.35}
    steps = [target_keep(original, ratios, s, 3) for s in (1, 2, 3)]
    assert [s["a"] for s in steps] == [54, 43, 32]
    assert steps[-1]["b"] == 10 - 3
    assert target_keep({"a": 2}, {"a": 0.99}, 1, 1) == {"a": 1}  # never below one channel


def test_pruning_to_zero_channels_fails(yolov8n):
    with pytest.raises(TrialError, match="model.0 would be pruned to 0 channels"):
        pruning.prune_step(yolov8n, {"model.0": 0}, pruning.importance(criteria.get("l1")), TRACE)


def test_yolo11_prunes_with_attention_untouched():
    from ultralytics.nn.modules.block import C2PSA, C3k2

    model = yolo.load_model("yolo11n.yaml", nc=3)
    attn_before = {n: p.shape for n, p in model.named_parameters() if ".attn." in n}
    layers = pruning.prunable_layers(model, TRACE)
    assert not any(".attn." in lay.name for lay in layers)
    original = {lay.name: lay.channels for lay in layers}
    keep = target_keep(original, dict.fromkeys(original, 0.3), 1, 1)
    shape = _forward_shape(model)
    before = yolo.count_params(model)
    assert pruning.prune_step(model, keep, pruning.importance(criteria.get("l2")), TRACE) == keep
    assert yolo.count_params(model) < 0.7 * before
    assert _forward_shape(model) == shape
    assert {n: p.shape for n, p in model.named_parameters() if ".attn." in n} == attn_before
    assert any(isinstance(m, C3k2) for m in model.modules()) and any(isinstance(m, C2PSA) for m in model.modules())


def test_pruned_model_checkpoint_reloads_with_plain_ultralytics(yolov8n, tmp_path):
    original = {lay.name: lay.channels for lay in pruning.prunable_layers(yolov8n, TRACE)}
    keep = target_keep(original, dict.fromkeys(original, 0.4), 1, 1)
    pruning.prune_step(yolov8n, keep, pruning.importance(criteria.get("l1")), TRACE)
    path = yolo.save_checkpoint(yolov8n, tmp_path / "p.pt")
    assert yolo.checkpoint_param_count(path) == yolo.count_params(yolov8n)


def test_undefined_criterion_scores_fall_back_to_magnitude(yolov8n):
    """Taylor scores of a group with all-zero gradients are 0/0; the group is still pruned (by L2)."""
    for p in yolov8n.parameters():
        p.grad = torch.zeros_like(p)
    original = {lay.name: lay.channels for lay in pruning.prunable_layers(yolov8n, TRACE)}
    keep = target_keep(original, {"model.22.cv2.2.1": 0.5}, 1, 1)
    counts = pruning.prune_step(yolov8n, keep, pruning.importance(criteria.get("taylor")), TRACE)
    assert counts["model.22.cv2.2.1"] == 32


def test_c2f_split_and_merge_stay_on_the_blocks_device_and_dtype_with_its_gradients():
    """The CUDA failure of iterative trials (a gradient on cuda assigned to a half-conv built on the CPU) has the
    same root as a dtype mismatch, which a CPU can show: the halves must be built where the block lives."""
    C2f = pruning._ultra()[0]
    torch.manual_seed(0)
    block = C2f(16, 32, n=1).double().eval()
    for p in block.parameters():
        p.grad = torch.full_like(p, 0.5)
    x = torch.randn(2, 16, 8, 8, dtype=torch.float64)
    want = block(x)
    split = pruning.C2fSplit(block).eval()
    for name, p in split.named_parameters():
        assert p.dtype == torch.float64 and p.device == x.device, name
        assert p.grad is None or (p.grad.dtype == torch.float64 and p.grad.shape == p.shape), name
    assert torch.allclose(split(x), want)
    merged = split.merge().eval()
    assert merged.cv1.conv.weight.dtype == torch.float64 and merged.cv1.conv.weight.grad.dtype == torch.float64
    assert torch.allclose(merged(x), want)


@pytest.mark.parametrize("yaml_name", ["yolo26n.yaml", "yolo12n.yaml", "yolov5nu.yaml", "yolov10n.yaml"])
def test_model_families_prune_and_reload(yaml_name, tmp_path):
    """YOLO26's C3k2 feeds one half of its split cv1 into an attention block: that block's cv1 is left whole
    (pruning one half alone used to fail with 'C2f halves differ')."""
    torch.manual_seed(0)
    model = yolo.load_model(yaml_name, nc=3)
    layers = pruning.prunable_layers(model, TRACE)
    original = {lay.name: lay.channels for lay in layers}
    keep = target_keep(original, dict.fromkeys(original, 0.3), 1, 1)
    channels = pruning.prune_step(model, keep, pruning.importance(criteria.get("l2")), TRACE)
    assert all(channels[n] == keep[n] for n in keep)
    model.eval()
    model(torch.rand(1, 3, TRACE, TRACE))
    path = yolo.save_checkpoint(model, tmp_path / "p.pt")
    assert yolo.count_params(yolo.load_model(path)) == yolo.count_params(model) < yolo.count_params(
        yolo.load_model(yaml_name, nc=3))


@pytest.mark.parametrize("yaml_name,what", [("yolov9t.yaml", "YOLOv9's GELAN"), ("rtdetr-l.yaml", "RT-DETR")])
def test_unsupported_architectures_are_refused_in_one_line(yaml_name, what, tmp_path, tiny_data):
    import subprocess
    import sys

    (tmp_path / "s.yaml").write_text(f"name: u\nmodel: {yaml_name}\ndata: {tiny_data}\nimgsz: 64\n")
    r = subprocess.run([sys.executable, "-m", "autoprune", "search", "s.yaml"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr[-2000:]
    assert f"model: {yaml_name}: {what}" in r.stderr and "cannot be pruned" in r.stderr
    assert not (tmp_path / "studies" / "autoprune.db").exists()  # nothing written


@pytest.mark.parametrize("yaml_name", ["yolov8s.yaml", "yolov5su.yaml"])  # YOLO11 n-m: every C3k2 has n = 1
def test_layer_pruning_drops_repeated_blocks_and_reloads_in_plain_ultralytics(yaml_name, tmp_path):
    import subprocess
    import sys

    torch.manual_seed(0)
    model = yolo.load_model(yaml_name, nc=3)
    before = {i: len(b.m) for i, b in enumerate(model.model) if hasattr(b, "m") and hasattr(b.m, "__len__")}
    params = yolo.count_params(model)
    changed = yolo.remove_blocks(model, 0.5)
    assert changed and all(n == before[int(k.split(".")[1])] - before[int(k.split(".")[1])] // 2
                           for k, n in changed.items())
    assert yolo.count_params(model) < params
    original = {lay.name: lay.channels for lay in pruning.prunable_layers(model, TRACE)}
    keep = target_keep(original, dict.fromkeys(original, 0.3), 1, 1)
    pruning.prune_step(model, keep, pruning.importance(criteria.get("l2")), TRACE)  # channels, on the shallower model
    path = yolo.save_checkpoint(model, tmp_path / "p.pt")
    code = ("import sys, torch; from ultralytics import YOLO; m = YOLO(sys.argv[1]).model.eval(); "
            "m(torch.rand(1, 3, 64, 64)); print(sum(p.numel() for p in m.parameters()))")
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTOPRUNE", "YOLO", "PYTHONPATH"))}
    env.update(YOLO_OFFLINE="1", YOLO_CONFIG_DIR=str(tmp_path / "cfg"), MPLCONFIGDIR=str(tmp_path / "mpl"))
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300,
                       env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout.strip().splitlines()[-1]) == yolo.count_params(model)


def test_training_batches_are_loaded_once_per_process_and_handed_out_fresh(tiny_data, monkeypatch):
    """Screens in one Ray worker recalibrate BN on the same batches: loaded once (the loader is counted, not
    faked), the same values each time, and a caller that changes its batch does not change the next caller's."""
    from autoprune.adapters import yolo

    yolo._loaded_batches.cache_clear()
    built = []
    real = yolo.build_dataloader

    def counted(*a, **k):
        built.append(1)
        return real(*a, **k)

    monkeypatch.setattr(yolo, "build_dataloader", counted)
    first = list(yolo.training_batches(str(tiny_data), 64, 4, 2))
    assert len(first) == 2 and first[0]["img"].dtype == torch.float32 and float(first[0]["img"].max()) <= 1.0
    first[0]["img"].mul_(0)
    first[0]["cls"] = None
    again = list(yolo.training_batches(str(tiny_data), 64, 4, 2))
    assert built == [1]  # loaded once
    assert again[0]["cls"] is not None and float(again[0]["img"].max()) > 0
    assert torch.equal(again[1]["img"], first[1]["img"])
    list(yolo.training_batches(str(tiny_data), 64, 4, 3))  # other arguments: loaded again
    assert built == [1, 1]


def test_training_batches_are_the_same_whatever_the_processs_random_state_and_leave_it_as_it_was(tiny_data):
    """Ray workers screen on the batches each loads itself: the augmentation's draws must not depend on what the
    process drew before (a worker's earlier trials), and loading must not move the caller's generators."""
    import random

    import numpy as np

    from autoprune.adapters import yolo

    def load(seed_before):
        yolo._loaded_batches.cache_clear()
        random.seed(seed_before)
        np.random.seed(seed_before)
        torch.manual_seed(seed_before)
        batches = [b["img"].clone() for b in yolo.training_batches(str(tiny_data), 64, 4, 2)]
        return batches, (random.random(), float(np.random.rand()), float(torch.rand(1)))

    a, after_a = load(1)
    b, after_b = load(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and len(a) == 2
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    assert after_a == (random.random(), float(np.random.rand()), float(torch.rand(1)))  # the caller's draws, untouched
    assert after_a != after_b
