"""Fine-tuning with the ultralytics trainer keeps pruned shapes; the EMA trap is caught."""

from __future__ import annotations

import pytest
import torch

from autoprune.adapters import pruning, yolo
from autoprune.errors import TrialError
from autoprune.model import criteria
from autoprune.model.sampling import target_keep

TINY = 64


def _pruned(ratio=0.4):
    torch.manual_seed(0)
    model = yolo.load_model("yolov8n.yaml", nc=3)
    original = {lay.name: lay.channels for lay in pruning.prunable_layers(model, TINY)}
    keep = target_keep(original, dict.fromkeys(original, ratio), 1, 1)
    pruning.prune_step(model, keep, pruning.importance(criteria.get("l2")), TINY)
    return model


def _cfg(data, ema=True, epochs=1):
    return yolo.FinetuneConfig(data=str(data), imgsz=TINY, epochs=epochs, lr=0.01, ema=ema, batch=8)


@pytest.mark.parametrize("ema", [True, False])
def test_finetune_keeps_pruned_shapes_and_checkpoints(tiny_data, tmp_path, ema):
    model = _pruned()
    channels = pruning.channel_counts(model, TINY)
    n = yolo.count_params(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    yolo.finetune(model, _cfg(tiny_data, ema=ema), tmp_path / "ft")
    assert yolo.count_params(model) == n
    assert pruning.channel_counts(model, TINY) == channels
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items() if v.is_floating_point())
    for name in ("last.pt", "best.pt"):
        assert yolo.checkpoint_param_count(tmp_path / "ft" / "weights" / name) == n  # never the unpruned model


def test_ema_flag_off_takes_raw_weights(tiny_data, tmp_path):
    """With ema=False the trainer's EMA is forced to track the raw model exactly."""
    model = _pruned()
    captured = {}

    def grab(trainer):
        captured["raw"] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    yolo.finetune(model, _cfg(tiny_data, ema=False), tmp_path / "ft", callbacks={"on_train_end": grab})
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, captured["raw"][k].float(), rtol=0, atol=1e-6)


def test_pruning_inside_a_running_trainer_is_caught(tiny_data, tmp_path):
    """The EMA trap: pruning inside the trainer (after its EMA cached its tensors) leaves a stale unpruned EMA,
    which the trainer then validates and saves."""
    model = yolo.load_model("yolov8n.yaml", nc=3)
    original = {lay.name: lay.channels for lay in pruning.prunable_layers(model, TINY)}

    def prune_mid_training(trainer):
        pruning.prune_step(trainer.model, target_keep(original, dict.fromkeys(original, 0.5), 1, 1),
                      pruning.importance(criteria.get("l1")), TINY)

    with pytest.raises(TrialError, match="EMA trap"):
        yolo.finetune(model, _cfg(tiny_data), tmp_path / "ft", callbacks={"on_train_epoch_end": prune_mid_training})


def test_checkpoint_check_rejects_unpruned_reload(tmp_path):
    full = yolo.load_model("yolov8n.yaml", nc=3)
    path = yolo.save_checkpoint(full, tmp_path / "full.pt")
    with pytest.raises(TrialError, match=r"EMA trap: full.pt reloads with 3011\d+ parameters"):
        yolo.check_checkpoint(path, yolo.count_params(_pruned()))


def test_each_batch_is_an_optimizer_step_unless_a_nominal_batch_is_set(tiny_data, tmp_path):
    """ultralytics accumulates gradients over nbs / batch batches (nbs 64 by default); autoprune's fine-tune takes
    one optimizer step per batch, and counts the steps."""
    one = yolo.finetune(_pruned(), _cfg(tiny_data, epochs=2), tmp_path / "a")
    assert one.epochs == 2 and one.batches == 4 and one.optimizer_steps == 4  # 16 images, batch 8: 2 a epoch
    stock = yolo.finetune(_pruned(), yolo.FinetuneConfig(data=str(tiny_data), imgsz=TINY, epochs=2, lr=0.01,
                                                           ema=True, batch=8, nbs=64), tmp_path / "b")
    assert stock.batches == 4 and stock.optimizer_steps < stock.batches


def test_distillation_reaches_ultralytics_trainer_and_leaves_a_plain_pruned_model(tiny_data, tiny_model_pt, tmp_path):
    """The distill knob is ultralytics' own distill_model (teacher: the unpruned base); afterwards the pruned model
    carries no distillation hooks, copies, and its checkpoints hold the student (the EMA-trap check passes)."""
    import copy
    import dataclasses

    seen = {}

    def capture(tr):
        seen["wrapper"] = type(tr.model).__name__
        seen["distill_model"], seen["dis"] = tr.args.distill_model, tr.args.dis

    model = _pruned()
    params = yolo.count_params(model)
    cfg = dataclasses.replace(_cfg(tiny_data), distill_model=str(tiny_model_pt), distill_weight=3.0)
    yolo.finetune(model, cfg, tmp_path / "kd", callbacks={"on_train_start": capture})
    assert seen == {"wrapper": "DistillationModel", "distill_model": str(tiny_model_pt), "dis": 3.0}
    assert yolo.count_params(model) == params  # the student, pruned shapes kept
    assert not any(type(h).__name__ == "FeatureHook" for m in model.modules() for h in m._forward_hooks.values())
    copy.deepcopy(model)  # a hook holding graph tensors made this fail
    assert yolo.checkpoint_param_count(tmp_path / "kd" / "weights" / "last.pt") == params


def test_distill_is_a_fine_tune_knob_the_screen_does_not_see():
    from autoprune.config.spec import parse_spec
    from autoprune.model.policy import Policy
    from autoprune.model.sampling import finetune_knobs, recipe_params, screen_space

    spec = parse_spec({"name": "k", "model": "m.pt", "data": "d.yaml", "space": {"distill": [False, True]}}, "s.yaml")
    assert spec.space.distill == (False, True) and "distill" in finetune_knobs()
    assert screen_space(spec.space).distill == (False,) and recipe_params(spec.space)["distill"] is False
    p = Policy(ratios=(("a", 0.1),), criterion="l2", iterations=1, lr=0.01, ema=True, epochs=1, distill=True)
    assert Policy.from_dict(p.to_dict()) == p and Policy.from_dict({**p.to_dict(), "distill": None}).distill is False
    assert parse_spec({"name": "k", "model": "m.pt", "data": "d.yaml"}, "s.yaml").space.distill == (False,)


def test_sparse_training_shrinks_bn_scales(tiny_data, tmp_path):
    import dataclasses

    from autoprune.engine.sparse import bn_scale_summary

    def trained(l1):
        torch.manual_seed(0)
        model = yolo.load_model("yolov8n.yaml", nc=3)
        cfg = dataclasses.replace(_cfg(tiny_data, ema=False, epochs=2), lr=0.05, bn_l1=l1)
        yolo.finetune(model, cfg, tmp_path / f"l1-{l1}")
        return bn_scale_summary(model)

    dense, sparse = trained(0.0), trained(5.0)
    assert sparse["mean"] < dense["mean"] - 0.1  # 4 steps of lr 0.05 x 5 shrink every scale by up to 1
    below_half = [sum(s["counts"][:4]) for s in (dense, sparse)]  # |scale| < 0.5 (bins 0, 1e-3, 1e-2, 0.1, 0.5)
    assert below_half[1] > below_half[0] and sum(sparse["counts"]) == sparse["n"]


def test_the_sparse_base_is_trained_once_per_strength_and_cached(tiny_data, tiny_model_pt):
    from autoprune.config.spec import parse_spec
    from autoprune.engine.sparse import sparse_base

    spec = parse_spec({"name": "s", "model": str(tiny_model_pt), "data": str(tiny_data), "imgsz": TINY,
                       "finetune": {"batch": 8, "sparse_epochs": 1, "sparse_lr": 0.05}}, "s.yaml")
    path, summary = sparse_base(spec.trial_settings, 4.0)
    mtime = path.stat().st_mtime_ns
    assert summary["after"]["mean"] < summary["before"]["mean"] and summary["l1"] == 4.0
    again, same = sparse_base(spec.trial_settings, 4.0)
    assert again == path and path.stat().st_mtime_ns == mtime and same == summary  # cached, not retrained
    other, _ = sparse_base(spec.trial_settings, 1.0)
    assert other != path
    assert yolo.count_params(yolo.load_model(path)) == yolo.count_params(yolo.load_model(tiny_model_pt))


def test_sparsity_is_a_screen_visible_knob():
    from autoprune.config.spec import parse_spec
    from autoprune.errors import SpecError
    from autoprune.model.sampling import screen_space, screen_visible

    spec = parse_spec({"name": "k", "model": "m.pt", "data": "d.yaml", "space": {"sparsity": [0, 2.0]}}, "s.yaml")
    assert spec.space.sparsity == (0.0, 2.0) and screen_space(spec.space).sparsity == (0.0, 2.0)
    assert screen_visible({"sparsity": 2.0, "lr": 0.1}) == {"sparsity": 2.0}
    with pytest.raises(SpecError, match="space.sparsity: must be >= 0"):
        parse_spec({"name": "k", "model": "m.pt", "data": "d.yaml", "space": {"sparsity": [-1]}}, "s.yaml")
