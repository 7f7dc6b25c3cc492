"""Sparse training of the base model (network slimming), once per L1 strength and cached.

A policy with ``sparsity`` > 0 prunes not the base itself but the base trained for
``finetune.sparse_epochs`` with an L1 penalty on its BatchNorm scales (so unimportant channels go
towards 0 and ``bn_scale`` ranks them cleanly). That base is trained once per (base file, data set,
imgsz, L1 strength, epochs, lr, batch, seed) and kept under ``$AUTOPRUNE_HOME/cache/sparse`` with a
JSON summary of the BN-scale distribution before and after; concurrent trials wait for one training.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.config.spec import TrialSettings
from autoprune.engine.identity import file_sha256
from autoprune.paths import home

logger = logging.getLogger(__name__)

__all__ = ["sparse_base", "bn_scale_summary", "BINS"]

BINS = (0.0, 1e-3, 1e-2, 0.1, 0.5, 1.0, float("inf"))  # |BN scale| histogram edges


def bn_scale_summary(model: nn.Module) -> dict[str, Any]:
    """Histogram of |BN scale| over ``BINS``, its mean, and the share below 1e-2."""
    scales = torch.cat([m.weight.detach().abs().flatten().float().cpu() for m in model.modules()
                        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None])
    counts = [int(((scales >= lo) & (scales < hi)).sum()) for lo, hi in zip(BINS, BINS[1:])]
    return {"bins": [str(b) for b in BINS], "counts": counts, "mean": float(scales.mean()),
            "below_0.01": float((scales < 1e-2).float().mean()), "n": int(scales.numel())}


def sparse_base(settings: TrialSettings, l1: float) -> tuple[Path, dict[str, Any]]:
    """The sparse-trained base for ``l1`` (trained now if not cached) and its BN-scale summary."""
    from autoprune.adapters import yolo

    s, ft = settings, settings.finetune
    key = json.dumps([file_sha256(s.model), str(s.data), s.imgsz, l1, ft.sparse_epochs, ft.sparse_lr, ft.batch,
                      ft.optimizer, s.seed])
    folder = home() / "cache" / "sparse"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
    summary_path = path.with_suffix(".json")
    with open(path.with_suffix(".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one training per key, however many trials ask at once
        try:
            if path.is_file() and summary_path.is_file():
                return path, json.loads(summary_path.read_text())
            logger.info("sparse training of the base (BN-scale L1 %g, %d epochs)", l1, ft.sparse_epochs)
            torch.manual_seed(s.seed)
            model = yolo.load_model(s.model).to(s.device)
            before = bn_scale_summary(model)
            cfg = yolo.FinetuneConfig(data=s.data, imgsz=s.imgsz, epochs=ft.sparse_epochs, lr=ft.sparse_lr, ema=False,
                                       batch=ft.batch, device=s.device, workers=ft.workers, threads=s.threads,
                                       optimizer=ft.optimizer, seed=s.seed, warmup_epochs=0.0, lrf=1.0, bn_l1=l1)
            with tempfile.TemporaryDirectory(prefix="autoprune-sparse-") as tmp:
                yolo.finetune(model, cfg, Path(tmp) / "train")
            after = bn_scale_summary(model)
            summary = {"l1": l1, "epochs": ft.sparse_epochs, "lr": ft.sparse_lr, "before": before, "after": after}
            staged = yolo.save_checkpoint(model.cpu(), path.with_suffix(".part.pt"))
            os.replace(staged, path)  # atomic: a half-written base is never used
            summary_path.write_text(json.dumps(summary))
            logger.info("sparse base: mean |BN scale| %.3f -> %.3f, share below 0.01 %.1f%% -> %.1f%%",
                        before["mean"], after["mean"], 100 * before["below_0.01"], 100 * after["below_0.01"])
            return path, summary
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
