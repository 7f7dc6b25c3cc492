"""``autoprune finalize``: give a chosen front member the full fine-tune the search could not afford.

What users deploy is this model, not the search's proxy: the trial's pruned checkpoint is
fine-tuned for ``epochs`` with the recovery recipe (one optimizer step per batch, one warm-up
epoch, cosine decay, EMA), then validated on the val split and, where the data set has one, on
its test split (never used by the search to select). The result is exported like ``autoprune
export``, with a ``finalize`` section in policy.yaml.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from autoprune.errors import InputError
from autoprune.model import records
from autoprune.model.document import PolicyDocument
from autoprune.search.study import StudyStorage

logger = logging.getLogger(__name__)

__all__ = ["FinalizeSettings", "finalize_trial"]


@dataclass(frozen=True)
class FinalizeSettings:
    epochs: int
    lr: float | None = None  # default: the trial's
    data: str | None = None  # default: the study's data set
    device: str = "cpu"
    threads: int = 2
    distill: bool = False  # knowledge distillation from the study's unpruned base (ultralytics' distill_model)


def _split_metrics(model: Any, data: str, imgsz: int, s: FinalizeSettings, batch: int) -> dict[str, dict[str, float]]:
    from autoprune.adapters import ultra

    out = {}
    splits = ["val"] + (["test"] if ultra.read_dataset(data).get("test") else [])
    for split in splits:
        m = ultra.validate(model, data, imgsz, device=s.device, batch=batch, threads=s.threads, split=split)
        out[split] = {"map50_95": m.map50_95, "map50": m.map50}
    return out


def _teacher(study: optuna.Study) -> str:
    """The study's unpruned base checkpoint, the teacher of ``--distill``."""
    model = str(records.baseline(study).get("model") or "")
    if not model or not Path(model).is_file():
        raise InputError(f"--distill: the study's base model {model or '(none recorded)'} is not there to teach")
    return model


def finalize_trial(study: optuna.Study, store: StudyStorage, t: FrozenTrial, out_dir: str | Path,
                   settings: FinalizeSettings, onnx: bool = True, artifact_dir: str | Path | None = None,
                   force: bool = False) -> Any:
    """Fine-tune trial ``t``'s pruned model with the full budget and export it (see module doc)."""
    from autoprune.adapters import ultra
    from autoprune.deploy.export import export_trial

    data = settings.data or str(records.baseline(study).get("data") or "")
    if not data or not Path(data).is_file():
        raise InputError(f"--data: the study's data set {data or '(none recorded)'} is not there; pass --data")
    finetune = records.trial_settings(study).get("finetune") or {}
    batch = int(finetune.get("batch", 16))

    def prepare(checkpoint: Path, doc: PolicyDocument) -> dict[str, Any]:
        model = ultra.load_model(checkpoint).to(settings.device)
        before = _split_metrics(model, data, doc.imgsz, settings, batch)
        lr = settings.lr if settings.lr is not None else doc.policy.lr
        cfg = ultra.FinetuneConfig(data=data, imgsz=doc.imgsz, epochs=settings.epochs, lr=lr, ema=True, batch=batch,
                                   device=settings.device, threads=settings.threads, seed=doc.seed, warmup_epochs=1.0,
                                   cos_lr=True, lrf=0.01, optimizer=str(finetune.get("optimizer", "SGD")),
                                   distill_model=_teacher(study) if settings.distill else None,
                                   distill_weight=float(finetune.get("distill_weight", 6.0)))
        logger.info("finalizing trial %d: %d epochs at lr %.4g (val mAP50-95 %.4f before)", t.number,
                    settings.epochs, lr, before["val"]["map50_95"])
        with tempfile.TemporaryDirectory(prefix="autoprune-finalize-") as tmp:
            stats = ultra.finetune(model, cfg, Path(tmp) / "train")
        after = _split_metrics(model, data, doc.imgsz, settings, batch)
        ultra.save_checkpoint(model.cpu(), checkpoint)
        logger.info("finalized trial %d: val mAP50-95 %.4f -> %.4f%s", t.number, before["val"]["map50_95"],
                    after["val"]["map50_95"],
                    f", test {after['test']['map50_95']:.4f}" if "test" in after else " (no test split)")
        return {"epochs": settings.epochs, "lr": lr, "optimizer_steps": stats.optimizer_steps, "schedule": "cosine",
                "warmup_epochs": 1.0, "ema": True, "distill": settings.distill, "data": data, "before": before,
                "after": after, "baseline_map50_95": records.baseline(study).get("map50_95")}

    return export_trial(study, store, t, out_dir, onnx=onnx, artifact_dir=artifact_dir, prepare=prepare, force=force)
