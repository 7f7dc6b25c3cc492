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
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from autoprune.config.sections import FinetuneSettings
from autoprune.errors import InputError
from autoprune.model import records
from autoprune.model.document import PolicyDocument
from autoprune.search.storage.study import StudyStorage

logger = logging.getLogger(__name__)

DEFAULT_FINETUNE = FinetuneSettings()  # batch 16, SGD: the recipe's

__all__ = ["FinalizeSettings", "Raced", "finalize_trial", "final_finetune", "MAX_EPOCHS"]

MAX_EPOCHS = 10_000  # the cap of a time-budgeted fine-tune (its epochs follow from the time)


@dataclass(frozen=True)
class FinalizeSettings:
    epochs: int = MAX_EPOCHS
    seconds: float | None = None  # a wall-clock budget for the whole finalize (validations, export included)
    lr: float | None = None  # default: the trial's
    data: str | None = None  # default: the study's data set
    device: str = "cpu"
    threads: int = 2
    distill: bool = False  # knowledge distillation from the study's unpruned base (ultralytics' distill_model)
    keep_better: bool = True  # deliver the starting weights where the fine-tune lowered val mAP50-95
    warmup_epochs: float = 1.0  # 0 for a start that already trained at ``lr`` (a race's winner)


@dataclass(frozen=True)
class Raced:
    """What the final phase's race hands the final fine-tune: the winner's weights (a state dict of the trial's
    model; None: it starts from the trial's checkpoint) and the evidence that chose it (for the policy file)."""

    state: Mapping[str, Any] | None
    evidence: Mapping[str, Any]


EXPORT_RESERVE_S = 5.0  # kept from a time-budgeted finalize for writing and checking the ONNX export


def _split_metrics(model: Any, data: str, imgsz: int, s: FinalizeSettings, batch: int) -> dict[str, dict[str, float]]:
    from autoprune.adapters import yolo

    out = {}
    splits = ["val"] + (["test"] if yolo.read_dataset(data).get("test") else [])
    for split in splits:
        m = yolo.validate(model, data, imgsz, device=s.device, batch=batch, threads=s.threads, split=split)
        out[split] = {"map50_95": m.map50_95, "map50": m.map50}
    return out


def final_finetune(model: Any, data: str, imgsz: int, settings: FinalizeSettings,
                   finetune: FinetuneSettings = DEFAULT_FINETUNE, *, lr: float, seed: int, teacher: str | None = None,
                   reserve_s: float = 0.0, scratch: tuple[Path, str] | None = None) -> dict[str, Any]:
    """The final fine-tune every delivered model gets (autoprune's and a hand recipe's alike): one optimizer step a
    batch, one warm-up epoch, cosine decay to 1%, EMA; ``settings.epochs`` epochs, or with ``settings.seconds``
    as many as fit in it less ``reserve_s`` and what validating before and after costs; the study's ``finetune``
    settings give the batch, optimizer and distillation gain (with ``teacher``). Validates on val (and test,
    where the data set has it) before and after; with ``settings.keep_better`` a fine-tune that lowered val
    mAP50-95 is undone (a short, high-lr fine-tune can knock a near-converged start off its optimum; the choice
    looks at val only). Returns the record a policy file's ``finalize`` section holds: ``after`` is the delivered
    model's, ``finetuned`` the fine-tuned weights', ``kept`` which of the two was delivered, ``lr`` the learning
    rate trained with.
    The trainer's files go to a temporary folder (``scratch``: in this folder, with this name prefix; default the
    system's temporary folder), removed after."""
    from autoprune.adapters import yolo

    t0 = time.perf_counter()
    start = {k: v.detach().clone() for k, v in model.state_dict().items()} if settings.keep_better else None
    before = _split_metrics(model, data, imgsz, settings, finetune.batch)
    val_s = time.perf_counter() - t0
    if settings.epochs == 0:  # no time to train (a budgeted run's clock ran out): the start, validated, as it is
        logger.info("final fine-tune: none (no time left); val mAP50-95 %.4f", before["val"]["map50_95"])
        return {"epochs": 0, "lr": lr, "optimizer_steps": 0, "schedule": None, "warmup_epochs": 0.0, "ema": False,
                "distill": False, "data": data, "before": before, "after": before, "finetuned": None,
                "kept": "start", "train_s": 0.0, "seconds": settings.seconds}
    train_s = None
    if settings.seconds is not None:
        train_s = max(1.0, settings.seconds - reserve_s - 2 * val_s)
    cfg = yolo.FinetuneConfig(data=data, imgsz=imgsz, epochs=settings.epochs, lr=lr, ema=True, batch=finetune.batch,
                               device=settings.device, threads=settings.threads, seed=seed,
                               warmup_epochs=settings.warmup_epochs,
                               cos_lr=True, lrf=0.01, optimizer=finetune.optimizer, distill_model=teacher,
                               distill_weight=finetune.distill_weight, seconds=train_s)
    logger.info("final fine-tune: %s at lr %.4g (val mAP50-95 %.4f before)",
                f"{train_s:.0f} s of training" if train_s is not None else f"{settings.epochs} epochs", lr,
                before["val"]["map50_95"])
    where, prefix = scratch or (None, "autoprune-finalize-")
    with tempfile.TemporaryDirectory(dir=where, prefix=prefix) as tmp:
        t1 = time.perf_counter()
        stats = yolo.finetune(model, cfg, Path(tmp) / "train")
        trained_s = time.perf_counter() - t1
    tuned = _split_metrics(model, data, imgsz, settings, finetune.batch)
    kept = "fine-tuned"
    if start is not None and tuned["val"]["map50_95"] < before["val"]["map50_95"]:
        model.load_state_dict(start)
        kept = "start"
        logger.info("final fine-tune: val mAP50-95 fell to %.4f from %.4f; the starting weights are kept",
                    tuned["val"]["map50_95"], before["val"]["map50_95"])
    return {"epochs": stats.epochs, "lr": lr, "optimizer_steps": stats.optimizer_steps,
            "schedule": "cosine", "warmup_epochs": settings.warmup_epochs, "ema": True, "distill": teacher is not None,
            "data": data,
            "before": before, "after": before if kept == "start" else tuned, "finetuned": tuned, "kept": kept,
            "train_s": round(trained_s, 2), "seconds": settings.seconds}


def _teacher(study: optuna.Study) -> str:
    """The study's unpruned base checkpoint, the teacher of ``--distill``, loaded once through autoprune's checked
    load before ultralytics loads it (a damaged or foreign file is refused in one line, unloaded)."""
    from autoprune.adapters import yolo

    model = str(records.baseline(study).get("model") or "")
    if not model or not Path(model).is_file():
        raise InputError(f"--distill: the study's base model {model or '(none recorded)'} is not there to teach")
    try:
        yolo.load_model(model)
    except InputError as e:
        raise InputError(f"--distill: the teacher (the study's base model) is refused: {e}") from None
    return model


def finalize_trial(study: optuna.Study, store: StudyStorage, t: FrozenTrial, out_dir: str | Path,
                   settings: FinalizeSettings, onnx: bool = True, artifact_dir: str | Path | None = None,
                   force: bool = False, fmt: str = "onnx", raced: Raced | None = None) -> Any:
    """Fine-tune trial ``t``'s pruned model with the full budget and export it (see module doc); with ``raced``, from
    the race winner's weights, and with the race's evidence in the policy file's ``finalize`` section."""
    from autoprune.adapters import yolo
    from autoprune.deploy.export import STAGING_PREFIX, export_trial

    t0 = time.perf_counter()
    data = settings.data or str(records.baseline(study).get("data") or "")
    if not data or not Path(data).is_file():
        raise InputError(f"--data: the study's data set {data or '(none recorded)'} is not there; pass --data")
    from autoprune.search.inputs import check_data

    check_data(data, "--data")
    teacher = _teacher(study) if settings.distill else None  # checked before anything is written
    finetune = FinetuneSettings.from_record(records.trial_settings(study).get("finetune"))

    def prepare(checkpoint: Path, doc: PolicyDocument) -> dict[str, Any]:
        model = yolo.load_model(checkpoint)
        if raced is not None and raced.state is not None:
            model.load_state_dict(dict(raced.state))
        model = model.to(settings.device)
        if yolo.model_nc(model) != int(yolo.read_dataset(data)["nc"]):
            raise InputError(f"--data: {data} has {yolo.read_dataset(data)['nc']} classes but the model predicts "
                             f"{yolo.model_nc(model)}")
        lr = settings.lr if settings.lr is not None else doc.policy.lr
        spent = time.perf_counter() - t0
        record = final_finetune(model, data, doc.imgsz, settings, finetune, lr=lr, seed=doc.seed,
                                teacher=teacher,
                                reserve_s=spent + (EXPORT_RESERVE_S if onnx else 1.0),
                                # beside the export's staging folder: an export killed mid-way has both removed
                                scratch=(checkpoint.parent.parent, f"{STAGING_PREFIX}{Path(out_dir).name}.train-"))
        yolo.save_checkpoint(model.cpu(), checkpoint)
        after = record["after"]
        logger.info("finalized trial %d: val mAP50-95 %.4f -> %.4f%s", t.number, record["before"]["val"]["map50_95"],
                    after["val"]["map50_95"],
                    f", test {after['test']['map50_95']:.4f}" if "test" in after else " (no test split)")
        return {**record, **dict(raced.evidence if raced else {}),
                "baseline_map50_95": records.baseline(study).get("map50_95")}

    return export_trial(study, store, t, out_dir, onnx=onnx, artifact_dir=artifact_dir, prepare=prepare, force=force,
                        fmt=fmt)
