"""Fine-tuning a given (pruned) model with ultralytics' own trainer, never rebuilt from YAML; the EMA-trap
checks; sparse training. Part of the ultralytics adapter (re-exported by :mod:`autoprune.adapters.yolo`)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.adapters import _offline
from autoprune.errors import TrialError

_offline.configure()

from ultralytics.nn.tasks import DetectionModel, load_checkpoint  # noqa: E402
from ultralytics.utils import torch_utils as _ul_torch_utils  # noqa: E402

from autoprune.adapters.yolo_tasks import model_task, trainer_base  # noqa: E402

__all__ = ["FinetuneConfig", "FinetuneStats", "finetune", "set_threads", "count_params", "checkpoint_param_count",
           "check_checkpoint"]


def set_threads(n: int) -> None:
    """Pin torch's CPU thread count; ultralytics' select_device resets it to its NUM_THREADS."""
    _ul_torch_utils.NUM_THREADS = n
    torch.set_num_threads(n)


@dataclass(frozen=True)
class FinetuneConfig:
    data: str
    imgsz: int
    epochs: int
    lr: float
    ema: bool
    batch: int = 16
    device: str = "cpu"
    workers: int = 0
    threads: int = 2
    optimizer: str = "SGD"
    warmup_epochs: float = 0.0  # the trainer caps it to epochs - 1 (the last epoch is never warm-up)
    mosaic: float = 0.0
    seed: int = 0
    cos_lr: bool = False
    lrf: float = 0.01  # final learning rate as a fraction of lr (the spec's default; every caller passes its own)
    nbs: int | None = None  # nominal batch: gradients accumulate over nbs / batch batches (None: batch, one step each)
    warmup_bias_lr: float | None = None  # bias lr at the start of warm-up (None: lr; the trainer's 0.1 hurts recovery)
    distill_model: str | None = None  # teacher checkpoint: ultralytics' own knowledge distillation (``distill_model``)
    distill_weight: float = 6.0  # its loss gain (``dis``)
    bn_l1: float = 0.0  # sparse training: after each optimizer step BN scales shrink by lr * bn_l1 (L1 proximal step)
    # train for this many seconds instead (ultralytics' ``time``: after each epoch it re-fits the epoch count and the
    # lr schedule to the time left, and stops at the first optimizer step past it); ``epochs`` is then only a cap
    seconds: float | None = None


class _GivenModel:
    """Mixed into the task's ultralytics trainer: train the module it is handed instead of building one from YAML.

    The stock trainer rebuilds from the model's YAML and copies the weights that fit,
    which silently undoes structural pruning.
    """

    model: Any
    ema: Any
    optimizer: Any

    def __init__(self, model: nn.Module, overrides: dict[str, Any]):
        self._given = model
        super().__init__(overrides=overrides)  # type: ignore[call-arg]  # the trainer's, next in the MRO
        self.model = model  # setup_model() returns early for an nn.Module

    def get_model(self, cfg: Any = None, weights: Any = None, verbose: bool = True) -> nn.Module:
        return self._given


class _Sparse(_GivenModel):
    """Network slimming's sparse training: an L1 penalty on every BatchNorm scale, applied as its proximal step
    (soft thresholding by lr * bn_l1) after each optimizer step and before the EMA sees the weights."""

    bn_l1: float = 0.0

    def optimizer_step(self) -> None:
        ema, self.ema = self.ema, None
        try:
            super().optimizer_step()  # type: ignore[misc]  # the trainer's, next in the MRO
        finally:
            self.ema = ema
        lr_of = {id(p): group["lr"] for group in self.optimizer.param_groups for p in group["params"]}
        with torch.no_grad():
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None:
                    t = self.bn_l1 * lr_of.get(id(m.weight), 0.0)
                    m.weight.copy_(torch.sign(m.weight) * torch.clamp(m.weight.abs() - t, min=0.0))
        if self.ema:
            self.ema.update(self.model)


@functools.cache
def _trainer_class(task: str, sparse: bool) -> type:
    """The task's ultralytics trainer (detection, segmentation, pose) with the given-model (and sparse) behaviour."""
    base = trainer_base(task)
    mixin = _Sparse if sparse else _GivenModel
    return type(f"{mixin.__name__.strip('_')}{base.__name__}", (mixin, base), {})


def _student(model: nn.Module) -> nn.Module:
    """The trained model inside ultralytics' DistillationModel wrapper (the model itself without distillation)."""
    return getattr(model, "student_model", model)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def checkpoint_param_count(path: str | Path) -> int:
    """Parameter count of what ultralytics would load from ``path`` (it prefers ``ema``)."""
    model, _ = load_checkpoint(str(path))
    return count_params(_student(model))


def check_checkpoint(path: str | Path, expected_params: int) -> None:
    """Raise :class:`TrialError` if ``path`` reloads with another parameter count (the EMA trap)."""
    n = checkpoint_param_count(path)
    if n != expected_params:
        raise TrialError(f"EMA trap: {Path(path).name} reloads with {n} parameters, the pruned model has "
                         f"{expected_params}")


@dataclass(frozen=True)
class FinetuneStats:
    epochs: int
    batches: int  # training batches seen
    optimizer_steps: int  # gradient steps taken (batches / accumulation)


def finetune(model: DetectionModel, cfg: FinetuneConfig, workdir: Path, verbose: bool = False,
             callbacks: dict[str, Any] | None = None) -> FinetuneStats:
    """Fine-tune ``model`` in place with the ultralytics trainer and return it.

    With ``cfg.ema`` the trained weights are the EMA's; without it the EMA decay is
    forced to 0 so the trainer's EMA (which it uses for validation and checkpoints) is
    the raw model.  The trainer's EMA and the checkpoints it wrote are compared with the
    trained model's parameter count: a mismatch (the EMA trap) raises :class:`TrialError`.
    """
    workdir = Path(workdir)
    overrides = dict(
        model="autoprune-pruned.yaml", data=str(cfg.data), imgsz=cfg.imgsz, epochs=cfg.epochs, batch=cfg.batch,
        device=cfg.device, workers=cfg.workers, lr0=cfg.lr, lrf=cfg.lrf, nbs=cfg.nbs or cfg.batch,
        optimizer=cfg.optimizer, warmup_epochs=cfg.warmup_epochs,
        warmup_bias_lr=cfg.lr if cfg.warmup_bias_lr is None else cfg.warmup_bias_lr,
        **({"distill_model": cfg.distill_model, "dis": cfg.distill_weight} if cfg.distill_model else {}),
        mosaic=cfg.mosaic, close_mosaic=0,
        amp=False, plots=False, val=False, seed=cfg.seed, deterministic=False, cos_lr=cfg.cos_lr,
        project=str(workdir.parent), name=workdir.name, exist_ok=True, verbose=verbose, patience=0,
        pretrained=False,
        **({"time": cfg.seconds / 3600.0} if cfg.seconds else {}),
    )
    set_threads(cfg.threads)
    trainer = _trainer_class(model_task(model), cfg.bn_l1 > 0)(model, overrides)
    if isinstance(trainer, _Sparse):
        trainer.bn_l1 = cfg.bn_l1

    def _pin(tr: Any) -> None:
        set_threads(cfg.threads)
        if not cfg.ema:
            tr.ema.decay = lambda _x: 0.0

    seen = {"batches": 0}

    def _count(tr: Any) -> None:
        seen["batches"] += 1

    trainer.add_callback("on_train_start", _pin)
    trainer.add_callback("on_train_batch_end", _count)
    for event, fn in (callbacks or {}).items():
        trainer.add_callback(event, fn)
    trainer.train()
    if hasattr(trainer.model, "_remove_feature_hooks"):  # distillation hooked our model's layers; they hold tensors
        trainer.model._remove_feature_hooks()
    trained, ema = _student(trainer.model), _student(trainer.ema.ema)  # with distillation: the wrapped student
    expected = count_params(trained)
    got = count_params(ema)
    if got != expected:
        raise TrialError(f"EMA trap: the trainer's EMA has {got} parameters, the trained model {expected}")
    for ckpt in (trainer.last, trainer.best):
        if Path(ckpt).exists():
            check_checkpoint(ckpt, expected)
    model.load_state_dict(ema.float().state_dict())
    set_threads(cfg.threads)
    nb = len(trainer.train_loader)
    accumulate = max(1, int(trainer.accumulate))
    batches = seen["batches"]
    epochs = min(cfg.epochs, int(trainer.epoch) + 1)  # fewer in time mode
    steps = math.ceil(nb / accumulate) * (batches // nb) + math.ceil(batches % nb / accumulate)
    return FinetuneStats(epochs=epochs, batches=batches, optimizer_steps=steps)
