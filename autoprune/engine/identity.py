"""A base model's identity (weights fingerprint, architecture) and the library versions a result came from."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

__all__ = ["fingerprint", "file_sha256", "architecture", "versions"]


def fingerprint(model: nn.Module) -> str:
    """sha256 over the model's state (names, shapes, dtypes, values in float32): same weights, same print."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        if t.is_floating_point():
            t = t.detach().float()
        h.update(t.detach().cpu().contiguous().numpy().tobytes() if t.numel() else b"")
    return "sha256:" + h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes: compared before a checkpoint is unpickled."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def architecture(model: nn.Module) -> str:
    yml = getattr(model, "yaml", None) or {}
    return str(yml.get("yaml_file") or type(model).__name__)


def versions() -> dict[str, str]:
    import autoprune
    from autoprune.adapters import pruning, yolo

    return {"torch": str(torch.__version__), "ultralytics": str(yolo.version()),
            "torch_pruning": str(pruning.version()),
            "autoprune": str(autoprune.__version__)}
