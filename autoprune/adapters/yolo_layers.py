"""Layer pruning: removing whole repeated blocks (the ``n`` of a C2f/C3k2/C3 stage) from an ultralytics model.

Part of the ultralytics adapter (re-exported by :mod:`autoprune.adapters.yolo`): the result stays made of
ultralytics' own classes.
"""

from __future__ import annotations

import torch
from torch import nn

from autoprune.adapters import _offline

_offline.configure()  # before ultralytics is first imported

__all__ = ["remove_blocks"]


def remove_blocks(model: nn.Module, depth: float) -> dict[str, int]:
    """Layer pruning: drop the last ``floor(n * depth)`` of the ``n`` repeated blocks of every top-level C2f/C3k2
    (and C3) block, keeping at least one; ``cv2`` of a C2f loses the input channels the dropped blocks fed it. The
    model stays made of ultralytics' classes (a checkpoint loads in plain ultralytics). Returns the blocks' new
    ``n`` by block name (only blocks that changed)."""
    from ultralytics.nn.modules.block import C3, C2f

    out: dict[str, int] = {}
    for i, block in enumerate(getattr(model, "model", [])):
        m = getattr(block, "m", None)
        if not isinstance(block, (C2f, C3)) or not isinstance(m, (nn.ModuleList, nn.Sequential)) or len(m) < 2:
            continue
        n = len(m)
        k = min(n - 1, int(n * depth + 1e-9))
        if k <= 0:
            continue
        if isinstance(block, C2f):
            cv2 = block.cv2.conv
            keep_in = (2 + n - k) * block.c
            conv = nn.Conv2d(keep_in, cv2.out_channels, cv2.kernel_size, cv2.stride, cv2.padding, cv2.dilation,
                             cv2.groups, bias=cv2.bias is not None, device=cv2.weight.device, dtype=cv2.weight.dtype)
            with torch.no_grad():
                conv.weight.copy_(cv2.weight[:, :keep_in])
                if cv2.bias is not None:
                    conv.bias.copy_(cv2.bias)
            block.cv2.conv = conv
            block.m = nn.ModuleList(list(m)[: n - k])
        else:
            block.m = nn.Sequential(*list(m)[: n - k])
        out[f"model.{i}"] = n - k
    return out
