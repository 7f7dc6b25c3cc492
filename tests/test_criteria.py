"""Every registered criterion prunes a real model; the forward pass still works."""

from __future__ import annotations

import pytest
import torch

from autoprune.adapters import tp, ultra
from autoprune.model import criteria
from autoprune.model.shapes import target_keep
from autoprune.registry import UnknownName

TINY_IMGSZ = 64


@pytest.mark.parametrize("name", criteria.names())
def test_every_criterion_prunes_and_model_still_runs(name, tiny_data):
    torch.manual_seed(0)
    model = ultra.load_model("yolov8n.yaml", nc=3)
    crit = criteria.get(name)
    original = {lay.name: lay.channels for lay in tp.prunable_layers(model, TINY_IMGSZ)}
    keep = target_keep(original, dict.fromkeys(original, 0.3), 1, 1)
    if crit.needs_gradients:
        for batch in ultra.training_batches(str(tiny_data), TINY_IMGSZ, 4, 1):
            ultra.compute_loss(model, batch).backward()
        assert model.model[0].conv.weight.grad is not None
    if crit.regularize:
        batches = ultra.training_batches(str(tiny_data), TINY_IMGSZ, 4, 2)
        steps = tp.group_norm_regularize(model, TINY_IMGSZ, batches, ultra.compute_loss, lr=1e-3, reg=1e-3)
        assert steps == 2
    before = ultra.count_params(model)
    after = tp.prune_step(model, keep, tp.importance(crit), TINY_IMGSZ)
    assert after == keep
    assert ultra.count_params(model) < 0.75 * before
    model.eval()
    with torch.no_grad():
        y = model(torch.rand(1, 3, TINY_IMGSZ, TINY_IMGSZ))[0]
    assert y.shape[1] == 4 + 3 and torch.isfinite(y).all()


def test_registry_lists_the_documented_criteria():
    assert criteria.names() == ["l1", "l2", "bn_scale", "taylor", "fpgm", "random", "group_norm"]
    assert criteria.DEFAULT == ("l1", "l2", "bn_scale", "taylor", "fpgm")  # distinct selections only
    assert criteria.get("taylor").needs_gradients and criteria.get("group_norm").regularize


def test_unknown_criterion_lists_choices():
    """The registry raises a KeyError (UnknownName); the spec reader maps it to a SpecError naming the field."""
    with pytest.raises(UnknownName, match="unknown criterion 'nope' \\(choose from l1, l2, bn_scale"):
        criteria.get("nope")


def test_criteria_choose_different_channels(yolov8n):
    """l1 keeps the largest-norm channels: the kept filters of model.0 are the top-k by L1."""
    w = yolov8n.model[0].conv.weight.detach().clone()
    norms = w.abs().flatten(1).sum(1)
    tp.prune_step(yolov8n, {"model.0": 8}, tp.importance(criteria.get("l1")), TINY_IMGSZ)
    kept = yolov8n.model[0].conv.weight.detach()
    assert kept.shape[0] == 8
    # group importance also counts the next layer's input weights; the kept set must still be mostly the top-8
    kept_norms = sorted(kept.abs().flatten(1).sum(1).tolist())
    top = sorted(norms.topk(8).values.tolist())
    assert sum(1 for v in kept_norms if any(abs(v - t) < 1e-6 for t in top)) >= 5
