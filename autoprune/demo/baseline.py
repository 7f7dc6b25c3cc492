"""The demo baseline: YOLOv8n trained from scratch on the synthetic shapes data set.

Reproduce the committed checkpoint with ``autoprune demo-baseline --epochs 80``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from autoprune.demo.synthetic import SyntheticConfig, ensure_dataset
from autoprune.paths import home

logger = logging.getLogger(__name__)

__all__ = ["PACKAGED_BASELINE", "DEMO_IMGSZ", "resolve_demo_model", "train_baseline"]

PACKAGED_BASELINE = Path(__file__).with_name("yolov8n_shapes.pt")
DEMO_IMGSZ = 160


def train_baseline(out: Path, epochs: int = 80, threads: int = 2, seed: int = 0, model_yaml: str = "yolov8n.yaml",
                   data_cfg: SyntheticConfig | None = None, data_root: Path | None = None,
                   imgsz: int = DEMO_IMGSZ) -> Path:
    """Train ``model_yaml`` from scratch on a synthetic data set (the demo's by default) and write an ultralytics
    checkpoint to ``out``."""
    from autoprune.adapters import yolo

    data = ensure_dataset(data_cfg or SyntheticConfig(), data_root)
    model = yolo.load_model(model_yaml, nc=3)
    cfg = yolo.FinetuneConfig(data=str(data), imgsz=imgsz, epochs=epochs, lr=0.01, ema=True,
                               warmup_epochs=1.0, threads=threads, seed=seed, batch=16,
                               nbs=64, lrf=0.1)  # the settings the packaged checkpoint was trained with
    logger.info("training a baseline (%s, %d epochs) - minutes on 2 CPU cores", model_yaml, epochs)
    with tempfile.TemporaryDirectory(prefix="autoprune-baseline-") as tmp:
        workdir = Path(tmp) / "train"
        def progress(trainer: Any) -> None:  # ultralytics' trainer
            logger.info("baseline epoch %d/%d: train loss %.3f", trainer.epoch + 1, trainer.epochs,
                        yolo.total_loss(trainer))

        yolo.finetune(model, cfg, workdir, callbacks={"on_train_epoch_end": progress})
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(workdir / "weights" / "last.pt", out)
    metrics = yolo.validate(yolo.load_model(out), str(data), imgsz, threads=threads)
    logger.info("demo baseline written to %s: mAP50 %.3f, mAP50-95 %.3f", out, metrics.map50, metrics.map50_95)
    return out


def resolve_demo_model() -> Path:
    """The packaged baseline, or one trained once and cached under autoprune's home."""
    if PACKAGED_BASELINE.exists():
        return PACKAGED_BASELINE
    cached = home() / "demo" / PACKAGED_BASELINE.name
    if not cached.exists():
        train_baseline(cached)
    return cached
