"""Whether the devices a command asks for exist (checked by the commands that use them, not by parsing)."""

from __future__ import annotations

import re

from autoprune.errors import SpecError

__all__ = ["check_device", "check_gpus"]


def check_device(device: str) -> str:
    """The canonical torch device for ``device`` ('cpu' or 'cuda:N'); SpecError if it does not exist."""
    d = device.strip().lower()
    if d == "cpu":
        return "cpu"
    m = re.fullmatch(r"(?:cuda:?)?(\d+)?", d)
    if d in {"cuda", "gpu"} or m:
        import torch

        index = int(m.group(1)) if m and m.group(1) else 0
        if not torch.cuda.is_available():
            raise SpecError(f"device: {device!r} requested but no CUDA device is available")
        if index >= torch.cuda.device_count():
            raise SpecError(f"device: {device!r} does not exist ({torch.cuda.device_count()} CUDA device(s))")
        return f"cuda:{index}"
    raise SpecError(f"device: {device!r} is not 'cpu', 'cuda' or 'cuda:N'")


def check_gpus(gpus: float) -> None:
    """GPUs per trial need a CUDA device on this machine."""
    if gpus > 0:
        import torch

        if not torch.cuda.is_available():
            raise SpecError(f"resources.gpus: {gpus:g} GPU(s) per trial requested but no CUDA device is available")
