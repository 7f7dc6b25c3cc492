"""Every registered criterion prunes a real model; the forward pass still works."""

from __future__ import annotations

import pytest
import torch

from autoprune.adapters import pruning, yolo
from autoprune.model import criteria
from autoprune.model.sampling import target_keep
from autoprune.registry import UnknownName

TINY_IMGSZ = 64


@pytest.mark.parametrize("name", criteria.names())
def test_every_criterion_prunes_and_model_still_runs(name, tiny_data):
    torch.manual_seed(0)
    model = yolo.load_model("yolov8n.yaml", nc=3)
    crit = criteria.get(name)
    original = {lay.name: lay.channels for lay in pruning.prunable_layers(model, TINY_IMGSZ)}
    keep = target_keep(original, dict.fromkeys(original, 0.3), 1, 1)
    if "gradients" in crit.prepare:
        for batch in yolo.training_batches(str(tiny_data), TINY_IMGSZ, 4, 1):
            yolo.compute_loss(model, batch).backward()
        assert model.model[0].conv.weight.grad is not None
    if "regularize" in crit.prepare:
        batches = yolo.training_batches(str(tiny_data), TINY_IMGSZ, 4, 2)
        steps = pruning.group_norm_regularize(model, TINY_IMGSZ, batches, yolo.compute_loss, lr=1e-3, reg=1e-3)
        assert steps == 2
    before = yolo.count_params(model)
    after = pruning.prune_step(model, keep, pruning.importance(crit), TINY_IMGSZ)
    assert after == keep
    assert yolo.count_params(model) < 0.75 * before
    model.eval()
    with torch.no_grad():
        y = model(torch.rand(1, 3, TINY_IMGSZ, TINY_IMGSZ))[0]
    assert y.shape[1] == 4 + 3 and torch.isfinite(y).all()


def test_registry_lists_the_documented_criteria():
    assert criteria.names() == ["l1", "l2", "bn_scale", "taylor", "fpgm", "random", "group_norm"]
    assert criteria.DEFAULT == ("l1", "l2", "bn_scale", "taylor", "fpgm")  # distinct selections only
    assert criteria.get("taylor").prepare == ("gradients",) and criteria.get("group_norm").prepare == ("regularize",)


@pytest.mark.parametrize("name", criteria.names())
def test_every_criterion_is_an_object_with_registered_preparations(name):
    from autoprune.engine import criteria as runners

    runner = runners.get(name)
    assert [p.name for p in runner.preparations] == list(criteria.get(name).prepare)
    assert runner.needs_data == (name == "taylor")  # gradients need data; a training phase is skipped in apply
    assert type(runner.importance()).__name__ == criteria.get(name).importance


def test_a_new_criterion_is_a_registration_the_pipeline_calls(yolov8n):
    """A toy criterion with a toy preparation (it only records that it ran and whether it may train): the
    pipeline runs it, times it as a phase, and prunes with the criterion's importance; nothing branches on it."""
    from autoprune.config.spec import parse_spec
    from autoprune.engine import criteria as runners
    from autoprune.engine.measure import Phases
    from autoprune.engine.pipeline import prune_once

    calls = []
    prep = runners.Preparation("toy_prep", "records its call", lambda model, ctx: calls.append((ctx.step, ctx.train)),
                               needs_data=False)
    toy = criteria.Criterion("toy", "a toy: l1 after a toy preparation", "GroupMagnitudeImportance", (("p", 1),),
                             prepare=("toy_prep",))
    settings = parse_spec({"name": "t", "model": "m.pt", "data": "d.yaml"}, "s.yaml").trial_settings
    phases = Phases()
    with runners.PREPARATIONS.temporarily(prep), criteria.REGISTRY.temporarily(toy):
        channels = prune_once(yolov8n, settings, "toy", {"model.0": 8}, step=2, regularize=False, phases=phases)
        assert not runners.get("toy").needs_data
    assert calls == [(2, False)] and "toy_prep" in phases.seconds and channels["model.0"] == 8
    assert "toy" not in criteria.names()


def test_unknown_criterion_lists_choices():
    """The registry raises a KeyError (UnknownName); the spec reader maps it to a SpecError naming the field."""
    with pytest.raises(UnknownName, match="unknown criterion 'nope' \\(choose from l1, l2, bn_scale"):
        criteria.get("nope")


def test_criteria_choose_different_channels(yolov8n):
    """l1 keeps the largest-norm channels: the kept filters of model.0 are the top-k by L1."""
    w = yolov8n.model[0].conv.weight.detach().clone()
    norms = w.abs().flatten(1).sum(1)
    pruning.prune_step(yolov8n, {"model.0": 8}, pruning.importance(criteria.get("l1")), TINY_IMGSZ)
    kept = yolov8n.model[0].conv.weight.detach()
    assert kept.shape[0] == 8
    # group importance also counts the next layer's input weights; the kept set must still be mostly the top-8
    kept_norms = sorted(kept.abs().flatten(1).sum(1).tolist())
    top = sorted(norms.topk(8).values.tolist())
    assert sum(1 for v in kept_norms if any(abs(v - t) < 1e-6 for t in top)) >= 5
