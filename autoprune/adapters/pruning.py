"""The torch-pruning adapter: dependency graphs, prunable layers and structural pruning of YOLO models.

Nothing else in autoprune imports torch_pruning.

Pruning a C2f/C3k2 block: its ``cv1`` output is ``chunk``-ed in two halves, which the
dependency graph does not prune consistently.  For the duration of one prune step the
block is swapped for :class:`C2fSplit` (two convs instead of one plus a chunk); both
halves always get the same target count, so afterwards they are concatenated back into
the block's own ``cv1`` and the model again consists only of ultralytics' classes (its
checkpoints load anywhere ultralytics is installed).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from autoprune.errors import TrialError, UnsupportedModelError, UnsupportedVersionError
from autoprune.model.criteria import Criterion

logger = logging.getLogger(__name__)

__all__ = ["PrunableLayer", "C2fSplit", "prunable_layers", "prune_step", "count_macs", "channel_counts", "version",
           "importance", "group_norm_regularize", "torch_pruning_modules", "IMPORTANCE_CLASSES",
           "kept_channels", "check_supported", "UNSUPPORTED_BLOCKS"]


def version() -> str:
    return tp.__version__


if not tp.__version__.startswith("1."):
    raise UnsupportedVersionError(f"torch-pruning {tp.__version__} is not supported (need 1.x)")


def _ultra() -> tuple[Any, Any, Any, Any, Any]:
    """ultralytics' module classes this adapter recognises, from the ultralytics adapter (the only importer)."""
    from autoprune.adapters import yolo

    return yolo.module_classes()


class C2fSplit(nn.Module):
    """A C2f (or C3k2) whose ``cv1`` is two convolutions, one per half of its output."""

    def __init__(self, src: nn.Module):
        super().__init__()
        _, Conv, _, _, _ = _ultra()
        c = src.c
        self.cv0 = _slice_conv(src.cv1, 0, c, Conv)
        self.cv1 = _slice_conv(src.cv1, c, 2 * c, Conv)
        self.m = src.m
        self.cv2 = src.cv2
        object.__setattr__(self, "_src", src)  # not a submodule: restored by merge()
        for attr in ("f", "i", "type", "np"):
            if hasattr(src, attr):
                setattr(self, attr, getattr(src, attr))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv0(x), self.cv1(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))

    def merge(self) -> nn.Module:
        """Write the (pruned) halves back into the original block and return it."""
        a, b = self.cv0, self.cv1
        if a.conv.out_channels != b.conv.out_channels:
            raise TrialError(f"C2f halves differ after pruning ({a.conv.out_channels} vs {b.conv.out_channels})")
        src = self._src
        src.cv1 = _cat_convs(a, b)
        src.c = a.conv.out_channels
        src.m = self.m
        src.cv2 = self.cv2
        return src


def _slice_conv(conv_mod: nn.Module, lo: int, hi: int, Conv: type) -> nn.Module:
    conv, bn = conv_mod.conv, conv_mod.bn
    # built on the source's device and dtype first: a CUDA gradient cannot be assigned to a CPU parameter
    new = Conv(conv.in_channels, hi - lo, conv.kernel_size[0], conv.stride[0], g=conv.groups).to(
        device=conv.weight.device, dtype=conv.weight.dtype)
    new.conv.padding, new.conv.dilation = conv.padding, conv.dilation
    new.act = conv_mod.act
    with torch.no_grad():
        new.conv.weight.copy_(conv.weight[lo:hi])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(new.bn, name).copy_(getattr(bn, name)[lo:hi])
        new.bn.eps, new.bn.momentum = bn.eps, bn.momentum
    for dst, src in ((new.conv.weight, conv.weight), (new.bn.weight, bn.weight), (new.bn.bias, bn.bias)):
        if src.grad is not None:  # gradient-based criteria read .grad of the split halves
            dst.grad = src.grad[lo:hi].clone()
    return new


def _cat_convs(a: nn.Module, b: nn.Module) -> nn.Module:
    """One Conv whose output is ``cat(a(x), b(x))``."""
    merged = copy.deepcopy(a)
    where = {"device": a.conv.weight.device, "dtype": a.conv.weight.dtype}
    conv = nn.Conv2d(a.conv.in_channels, a.conv.out_channels + b.conv.out_channels, a.conv.kernel_size,
                     a.conv.stride, a.conv.padding, a.conv.dilation, a.conv.groups, bias=False, **where)
    bn = nn.BatchNorm2d(conv.out_channels, eps=a.bn.eps, momentum=a.bn.momentum, **where)
    with torch.no_grad():
        conv.weight.copy_(torch.cat([a.conv.weight, b.conv.weight]))
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn, name).copy_(torch.cat([getattr(a.bn, name), getattr(b.bn, name)]))
    for dst, pa, pb in ((conv.weight, a.conv.weight, b.conv.weight), (bn.weight, a.bn.weight, b.bn.weight),
                        (bn.bias, a.bn.bias, b.bn.bias)):
        if pa.grad is not None and pb.grad is not None:
            dst.grad = torch.cat([pa.grad, pb.grad])
    merged.conv, merged.bn = conv, bn
    return merged


def _replace(model: nn.Module, pred: Callable[[nn.Module], bool], make: Callable[[nn.Module], nn.Module]) -> list[str]:
    names = []
    for name, mod in list(model.named_modules()):
        if name and pred(mod):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, make(mod))
            names.append(name)
    return names


def split_c2f(model: nn.Module) -> list[str]:
    C2f, *_ = _ultra()
    return _replace(model, lambda m: isinstance(m, C2f), C2fSplit)


def merge_c2f(model: nn.Module) -> None:
    _replace(model, lambda m: isinstance(m, C2fSplit), lambda m: m.merge())


_OUTPUT_BRANCHES = ("cv2", "cv3", "cv4", "cv5", "one2one_cv2", "one2one_cv3", "one2one_cv4",
                    "cv4_kpts", "cv4_sigma", "one2one_cv4_kpts", "one2one_cv4_sigma")


def _ignored_layers(model: nn.Module) -> list[nn.Module]:
    """Modules whose output channels are the model's outputs and must keep their count: each head branch's last
    conv (boxes, classes, mask coefficients, keypoints), a segmentation head's prototype output (``proto.cv3``,
    and YOLO26's semantic branch), DFL and attention."""
    _, _, Detect, DFL, Attention = _ultra()
    ignored: list[nn.Module] = []
    for mod in model.modules():
        if isinstance(mod, Detect):
            for attr in _OUTPUT_BRANCHES:
                branches = getattr(mod, attr, None)
                if isinstance(branches, nn.ModuleList):
                    for b in branches:  # a Conv wrapper's own Conv2d too: the graph's roots are Conv2d
                        ignored.extend((b[-1] if isinstance(b, nn.Sequential) else b).modules())
            proto = getattr(mod, "proto", None)
            if proto is not None:
                ignored.extend(proto.cv3.modules())
                semseg = getattr(proto, "semseg", None)
                if isinstance(semseg, nn.Sequential):
                    ignored.extend(semseg[-1].modules())
        elif isinstance(mod, (DFL, Attention)) or "attn" in type(mod).__name__.lower():
            ignored.extend(mod.modules())
    return ignored


@dataclass(frozen=True)
class PrunableLayer:
    """One searchable unit: the name policies use and its channel count in the unpruned model."""

    name: str
    channels: int


class _Graph:
    """A dependency graph over a model in its split form, with stable names for each prunable group."""

    def __init__(self, model: nn.Module, imgsz: int):
        self.model = model
        self.split_names = split_c2f(model)
        device = next(model.parameters()).device
        was_training = model.training
        model.train()
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for bn in bns:  # trace in train mode (raw head outputs) without touching BN statistics
            bn.eval()
        for p in model.parameters():
            p.requires_grad_(True)
        try:
            self.dg = tp.DependencyGraph().build_dependency(
                model, example_inputs=torch.zeros(1, 3, imgsz, imgsz, device=device))
        except Exception:
            merge_c2f(model)
            raise
        finally:
            model.train(was_training)
        self.names = {m: n for n, m in model.named_modules()}
        self.ignored = _ignored_layers(model)

    def groups(self) -> Iterable[tuple[str, object]]:
        """The prunable groups by name. A split block's ``cv1`` is offered only when both halves are prunable: in
        YOLO26 one half feeds an attention block (never pruned), and pruning the other alone would break the block."""
        halves = {f"{split}.cv1" for split in self.split_names}
        count: dict[str, int] = {}
        for group in self.dg.get_all_groups(ignored_layers=self.ignored, root_module_types=[nn.Conv2d]):
            name = self._name(group)
            count[name] = count.get(name, 0) + 1
        # groups are made afresh while the caller prunes (a group made before another was pruned is stale)
        for group in self.dg.get_all_groups(ignored_layers=self.ignored, root_module_types=[nn.Conv2d]):
            name = self._name(group)
            if name not in halves or count[name] == 2:
                yield name, group

    def _name(self, group: Any) -> str:  # torch-pruning's Group
        root = group[0].dep.target.module
        for dep, _ in group:
            mod = dep.target.module
            name = self.names.get(mod, "")
            for split in self.split_names:  # both halves of a split C2f share the block's cv1 name
                halves = (f"{split}.cv0.conv", f"{split}.cv1.conv")
                if name in halves and self.dg.is_out_channel_pruning_fn(dep.handler):
                    return f"{split}.cv1"
        name = self.names[root]
        return name[: -len(".conv")] if name.endswith(".conv") else name

    def close(self) -> None:
        merge_c2f(self.model)


UNSUPPORTED_BLOCKS = {  # top-level block types torch-pruning's graph cannot prune consistently here
    "RepNCSPELAN4": "YOLOv9's GELAN", "ELAN1": "YOLOv9's GELAN", "SPPELAN": "YOLOv9's GELAN",
    "RTDETRDecoder": "RT-DETR", "AIFI": "RT-DETR", "HGBlock": "RT-DETR's HGNet",
}
SUPPORTED = "YOLOv5u, YOLOv8, YOLOv10, YOLO11, YOLO12, YOLO26"


def check_supported(model: nn.Module, where: str) -> None:
    """A one-line :class:`UnsupportedModelError` for an architecture autoprune cannot prune (before any work)."""
    kinds = {type(m).__name__ for m in getattr(model, "model", [])}
    bad = sorted(kinds & set(UNSUPPORTED_BLOCKS))
    if bad:
        raise UnsupportedModelError(f"{where}: {UNSUPPORTED_BLOCKS[bad[0]]} ({bad[0]} blocks) cannot be pruned by "
                                    f"autoprune; supported: {SUPPORTED}")
    try:
        prunable_layers(model, 64)
    except Exception as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise UnsupportedModelError(f"{where}: torch-pruning cannot trace this architecture ({type(e).__name__}: "
                                    f"{first}); supported: {SUPPORTED}") from None


def prunable_layers(model: nn.Module, imgsz: int = 64) -> list[PrunableLayer]:
    """The prunable units of ``model`` (not modified), in network order."""
    m = copy.deepcopy(model).cpu()
    g = _Graph(m, imgsz)
    try:
        seen: dict[str, int] = {}
        for name, group in g.groups():
            seen.setdefault(name, g.dg.get_out_channels(group[0].dep.target.module))
        order = {name: i for i, (name, _) in enumerate(model.named_modules())}
        ranked = sorted(seen.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))
        return [PrunableLayer(n, c) for n, c in ranked]
    finally:
        g.close()


IMPORTANCE_CLASSES = ("GroupMagnitudeImportance", "BNScaleImportance", "GroupTaylorImportance", "FPGMImportance",
                      "RandomImportance")


def importance(crit: Criterion) -> tp.importance.Importance:
    """torch-pruning's importance object for a criterion (its class name and constructor arguments)."""
    if crit.importance not in IMPORTANCE_CLASSES:
        raise UnsupportedVersionError(f"criterion {crit.name}: unknown torch-pruning importance {crit.importance}")
    return getattr(tp.importance, crit.importance)(**dict(crit.options))


def group_norm_regularize(model: nn.Module, imgsz: int, batches: Iterable[dict[str, Any]],
                          loss_fn: Callable[..., Any],
                          lr: float, reg: float) -> int:
    """A short group-norm-regularised training phase (torch-pruning's GroupNormPruner.regularize).

    Returns the number of optimisation steps taken.
    """
    g = _Graph(model, imgsz)
    try:
        pruner = tp.pruner.GroupNormPruner(
            model, torch.zeros(1, 3, imgsz, imgsz, device=next(model.parameters()).device),
            importance=tp.importance.GroupMagnitudeImportance(p=2), reg=reg, pruning_ratio=0.0,
            ignored_layers=g.ignored, root_module_types=[nn.Conv2d])
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9)
        steps = 0
        model.train()
        for batch in batches:
            opt.zero_grad()
            loss_fn(model, batch).backward()
            pruner.regularize(model)
            opt.step()
            steps += 1
        opt.zero_grad(set_to_none=True)
        return steps
    finally:
        g.close()


def prune_step(model: nn.Module, keep: Mapping[str, int], imp: object, imgsz: int) -> dict[str, int]:
    """Prune ``model`` in place so each named unit keeps ``keep[name]`` channels.

    Units absent from ``keep`` are left alone.  Returns the channel count of every unit after pruning.
    Gradient-based importances need ``.grad`` filled before the call.
    """
    g = _Graph(model, imgsz)
    after: dict[str, int] = {}
    try:
        for name, group in g.groups():
            root = group[0].dep.target.module
            current = g.dg.get_out_channels(root)
            target = keep.get(name, current)
            if target < 1:
                raise TrialError(f"layer {name} would be pruned to {target} channels")
            n_prune = current - target
            if n_prune > 0:
                scores = _scores(imp, group, name)
                idxs = torch.argsort(scores)[:n_prune].tolist()
                pg = g.dg.get_pruning_group(root, group[0].dep.handler, idxs)
                if not g.dg.check_pruning_group(pg):
                    raise TrialError(f"layer {name}: torch-pruning refused to prune {n_prune} of {current} channels")
                pg.prune()
            after[name] = g.dg.get_out_channels(root)
    finally:
        g.close()
    return after


def kept_channels(model: nn.Module, keep: Mapping[str, int], imp: object, imgsz: int) -> dict[str, list[int]]:
    """The channel indices of each unit in ``keep`` that ``imp`` would keep; ``model`` is not pruned."""
    g = _Graph(model, imgsz)
    out: dict[str, list[int]] = {}
    try:
        for name, group in g.groups():
            current = g.dg.get_out_channels(group[0].dep.target.module)
            target = keep.get(name, current)
            if name in keep and name not in out:
                scores = _scores(imp, group, name)
                out[name] = sorted(torch.argsort(scores, descending=True)[:target].tolist())
    finally:
        g.close()
    return out


def _scores(imp: object, group: object, name: str) -> torch.Tensor:
    """Channel scores of ``group``; where a criterion is undefined (e.g. all-zero gradients normalised by
    their mean) the group falls back to its L2 magnitude."""
    scores = imp(group)
    if scores is not None and torch.isfinite(scores).all():
        return scores
    logger.debug("%s: %s gave non-finite scores; using L2 magnitude", name, type(imp).__name__)
    scores = tp.importance.GroupMagnitudeImportance(p=2)(group)
    if scores is None or not torch.isfinite(scores).all():
        raise TrialError(f"criterion gave non-finite importance for layer {name}")
    return scores


def count_macs(model: nn.Module, imgsz: int) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (torch-pruning's counter, eval mode)."""
    m = copy.deepcopy(model).eval()
    device = next(m.parameters()).device
    macs, _ = tp.utils.count_ops_and_params(m, torch.zeros(1, 3, imgsz, imgsz, device=device))
    return int(macs)


def channel_counts(model: nn.Module, imgsz: int = 64) -> dict[str, int]:
    """Current channel count of each prunable unit."""
    return {layer.name: layer.channels for layer in prunable_layers(model, imgsz)}


def torch_pruning_modules(model: nn.Module, units: Iterable[str]) -> dict[str, list[str]]:
    """For each unit, the conv module name(s) it is rooted at in torch-pruning's C2f_v2 form.

    A C2f's ``cv1`` unit is two convolutions there (``cv0`` and ``cv1``, one per half, as in the
    torch-pruning YOLOv8 example and autoprune's own split form); every other unit is ``NAME.conv``.
    """
    C2f, *_ = _ultra()
    c2f = {n for n, m in model.named_modules() if isinstance(m, C2f)}
    out: dict[str, list[str]] = {}
    for name in units:
        parent, _, child = name.rpartition(".")
        if parent in c2f and child == "cv1":
            out[name] = [f"{parent}.cv0.conv", f"{parent}.cv1.conv"]
        else:
            out[name] = [name if isinstance(model.get_submodule(name), nn.Conv2d) else f"{name}.conv"]
    return out
