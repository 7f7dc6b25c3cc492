"""The ultralytics adapter: loading models, fine-tuning without a rebuild, validating.

Nothing else in autoprune imports ultralytics.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.adapters import _offline
from autoprune.errors import InputError, TrialError, UnsupportedVersionError

_offline.configure()

import ultralytics  # noqa: E402
from ultralytics.cfg import get_cfg  # noqa: E402
from ultralytics.data import build_dataloader, build_yolo_dataset  # noqa: E402
from ultralytics.data.utils import IMG_FORMATS, check_det_dataset, img2label_paths  # noqa: E402
from ultralytics.models.yolo.detect import DetectionTrainer, DetectionValidator  # noqa: E402
from ultralytics.nn.tasks import DetectionModel, load_checkpoint  # noqa: E402
from ultralytics.utils import DEFAULT_CFG_DICT, IterableSimpleNamespace  # noqa: E402
from ultralytics.utils import torch_utils as _ul_torch_utils  # noqa: E402

_offline.silence_settings()

logger = logging.getLogger(__name__)

__all__ = [
    "DetectionModel", "FinetuneConfig", "FinetuneStats", "ValMetrics", "load_model", "finetune", "validate",
    "training_batches", "compute_loss", "read_dataset", "checkpoint_param_count", "version", "count_params",
    "set_threads", "check_dataset_files", "layer_stage", "model_nc", "model_names", "check_checkpoint",
    "deploy_copy", "save_checkpoint", "export_onnx", "export_model", "backend_runner", "inference_output",
    "total_loss", "trained_imgsz",
]

_SUPPORTED_MAJOR_MINOR = ((8, 3), (8, 4))


def version() -> str:
    return ultralytics.__version__


def _check_version() -> None:
    major_minor = tuple(int(p) for p in ultralytics.__version__.split(".")[:2])
    if major_minor not in _SUPPORTED_MAJOR_MINOR:
        raise UnsupportedVersionError(
            f"ultralytics {ultralytics.__version__} is not supported (need 8.3.x or 8.4.x)")


_check_version()


def set_threads(n: int) -> None:
    """Pin torch's CPU thread count; ultralytics' select_device resets it to its NUM_THREADS."""
    _ul_torch_utils.NUM_THREADS = n
    torch.set_num_threads(n)


def read_dataset(data: str | Path) -> dict[str, Any]:
    """ultralytics' own data set check (no downloads: the offline flag is set)."""
    try:
        return check_det_dataset(str(data))
    except Exception as e:  # ultralytics raises several types with multi-line text
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"data: {data}: {first}") from e


def _images(path: str) -> list[str]:
    p = Path(path)
    if p.is_dir():
        return sorted(str(x) for x in p.rglob("*") if x.suffix[1:].lower() in IMG_FORMATS)
    if p.is_file() and p.suffix == ".txt":  # a list of image paths, relative to the list's folder
        lines = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
        return [str((p.parent / ln).resolve()) if not Path(ln).is_absolute() else ln for ln in lines]
    return []


def check_dataset_files(data: str | Path, info: dict[str, Any]) -> dict[str, int]:
    """Each of the train and val splits must have images and at least one label file.

    Returns the number of images per split.
    """
    counts = {}
    for split in ("train", "val"):
        paths = info.get(split)
        if not paths:
            raise InputError(f"data: {data}: no '{split}' split")
        images = [img for p in (paths if isinstance(paths, list) else [paths]) for img in _images(str(p))]
        if not images:
            raise InputError(f"data: {data}: no images in the {split} split ({paths})")
        unreadable = _unreadable_images(images)
        if len(unreadable) == len(images):
            raise InputError(f"data: {data}: none of the {split} split's {len(images)} images can be read "
                             f"(e.g. {unreadable[0]})")
        if unreadable:
            logger.warning("data %s: %d of %d images of the %s split cannot be read and will be dropped (e.g. %s)",
                           data, len(unreadable), len(images), split, unreadable[0])
        labels = [Path(lbl) for lbl in img2label_paths(images)]
        if not any(lbl.is_file() for lbl in labels):
            label_dir = labels[0].parent
            raise InputError(f"data: {data}: no label files for the {split} images (expected them in {label_dir})")
        good, bad = _count_labels(labels, int(info.get("nc", 0)))
        if good == 0:
            raise InputError(f"data: {data}: none of the {split} split's {bad} label line(s) is valid "
                             "(class index, then x y w h in [0, 1])")
        if bad:
            logger.warning("data %s: %d of %d label lines of the %s split are invalid and will be dropped", data,
                           bad, good + bad, split)
        counts[split] = len(images)
    return counts


def _unreadable_images(images: list[str]) -> list[str]:
    """Images that PIL cannot open and verify (truncated, corrupt, not an image)."""
    from PIL import Image

    bad = []
    for path in images:
        try:
            with Image.open(path) as im:
                im.verify()
        except Exception:
            bad.append(path)
    return bad


def _count_labels(labels: list[Path], nc: int) -> tuple[int, int]:
    """(valid, invalid) detection label lines: ``class x y w h`` (more numbers for polygons), class in [0, nc)."""
    good = bad = 0
    for path in labels:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split()
            if not parts:
                continue
            try:
                cls, *xy = (float(p) for p in parts)
            except ValueError:
                bad += 1
                continue
            ok = len(xy) >= 4 and cls.is_integer() and 0 <= cls < max(nc, 1) and all(0.0 <= v <= 1.0 for v in xy)
            good, bad = (good + 1, bad) if ok else (good, bad + 1)
    return good, bad


def load_model(source: str | Path, nc: int | None = None) -> DetectionModel:
    """A trainable fp32 DetectionModel from a checkpoint (.pt) or a model YAML."""
    source = str(source)
    if source.endswith((".yaml", ".yml")):
        model = DetectionModel(source, nc=nc, verbose=False)
        model.args = IterableSimpleNamespace(**DEFAULT_CFG_DICT)
    else:
        try:
            with warnings.catch_warnings():  # torch's weights_only unpickler warns about pickle protocols
                warnings.simplefilter("ignore", UserWarning)
                model, _ = load_checkpoint(source)
        except Exception as e:
            if "outside the supported Ultralytics checkpoint format" in str(e):
                raise InputError(f"model: {source}: not a loadable ultralytics checkpoint: damaged, or holds objects "
                                 "outside ultralytics' own classes; refused unloaded (pass --trust-checkpoint only "
                                 "for a file you trust: loading runs its code)") from None
            raise InputError(f"model: {source}: not a loadable ultralytics checkpoint ({type(e).__name__})") from e
        if not isinstance(model, DetectionModel):
            raise InputError(f"model: {source}: holds a {type(model).__name__}, not a YOLO detection model")
        args = model.args if isinstance(model.args, dict) else vars(model.args)
        model.args = IterableSimpleNamespace(**{**DEFAULT_CFG_DICT, **args})
    model = model.float().train()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def layer_stage(model: nn.Module, name: str) -> str:
    """``backbone``, ``neck`` or ``head`` for a module path ``model.N...`` of a YOLO model.

    The backbone is the model YAML's ``backbone`` section; the head is the final (Detect) module;
    everything between is the neck.
    """
    parts = name.split(".")
    if len(parts) < 2 or parts[0] != "model" or not parts[1].isdigit():
        return "neck"
    index = int(parts[1])
    n_backbone = len((getattr(model, "yaml", None) or {}).get("backbone", []))
    if index == len(model.model) - 1:
        return "head"
    return "backbone" if index < n_backbone else "neck"


def model_nc(model: nn.Module) -> int:
    return int(model.model[-1].nc)


def trained_imgsz(model: nn.Module) -> int | None:
    """The image size a checkpoint was trained at (its ``train_args.imgsz``), if it records one."""
    args = getattr(model, "args", None)
    v = args.get("imgsz") if isinstance(args, dict) else getattr(args, "imgsz", None)
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def model_names(model: nn.Module) -> dict[int, str]:
    return dict(getattr(model, "names", {}) or {})


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
    lrf: float = 0.1  # final learning rate as a fraction of lr
    nbs: int | None = None  # nominal batch: gradients accumulate over nbs / batch batches (None: batch, one step each)
    warmup_bias_lr: float | None = None  # bias lr at the start of warm-up (None: lr; the trainer's 0.1 hurts recovery)
    distill_model: str | None = None  # teacher checkpoint: ultralytics' own knowledge distillation (``distill_model``)
    distill_weight: float = 6.0  # its loss gain (``dis``)
    bn_l1: float = 0.0  # sparse training: after each optimizer step BN scales shrink by lr * bn_l1 (L1 proximal step)


class _GivenModelTrainer(DetectionTrainer):
    """A DetectionTrainer that trains the module it is handed instead of building one from YAML.

    The stock trainer rebuilds from the model's YAML and copies the weights that fit,
    which silently undoes structural pruning.
    """

    def __init__(self, model: nn.Module, overrides: dict[str, Any]):
        self._given = model
        super().__init__(overrides=overrides)
        self.model = model  # setup_model() returns early for an nn.Module

    def get_model(self, cfg: Any = None, weights: Any = None, verbose: bool = True) -> nn.Module:
        return self._given


class _SparseTrainer(_GivenModelTrainer):
    """Network slimming's sparse training: an L1 penalty on every BatchNorm scale, applied as its proximal step
    (soft thresholding by lr * bn_l1) after each optimizer step and before the EMA sees the weights."""

    bn_l1: float = 0.0

    def optimizer_step(self) -> None:
        ema, self.ema = self.ema, None
        try:
            super().optimizer_step()
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
    )
    set_threads(cfg.threads)
    trainer = (_SparseTrainer if cfg.bn_l1 > 0 else _GivenModelTrainer)(model, overrides)
    if isinstance(trainer, _SparseTrainer):
        trainer.bn_l1 = cfg.bn_l1

    def _pin(tr: DetectionTrainer) -> None:
        set_threads(cfg.threads)
        if not cfg.ema:
            tr.ema.decay = lambda _x: 0.0

    trainer.add_callback("on_train_start", _pin)
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
    return FinetuneStats(epochs=cfg.epochs, batches=nb * cfg.epochs,
                         optimizer_steps=math.ceil(nb / accumulate) * cfg.epochs)


@dataclass(frozen=True)
class ValMetrics:
    map50: float
    map50_95: float


def validate(model: nn.Module, data: str, imgsz: int, device: str = "cpu", batch: int = 16,
             threads: int = 2, split: str = "val") -> ValMetrics:
    """mAP50 and mAP50-95 from ultralytics' DetectionValidator on ``split``, on a copy of ``model``."""
    set_threads(threads)
    args = dict(data=str(data), imgsz=imgsz, batch=batch, device=device, plots=False, verbose=False,
                half=False, workers=0, split=split, save_json=False, rect=True)
    validator = DetectionValidator(args=args)
    m = copy.deepcopy(model).float().eval()
    stats = validator(model=m)
    set_threads(threads)
    map50 = float(stats.get("metrics/mAP50(B)", float("nan")))
    map5095 = float(stats.get("metrics/mAP50-95(B)", float("nan")))
    if not (math.isfinite(map50) and math.isfinite(map5095)):
        raise TrialError(f"validation returned a non-finite mAP ({map50}, {map5095})")
    return ValMetrics(map50=map50, map50_95=map5095)


def training_batches(data: str, imgsz: int, batch: int, n_batches: int, device: str = "cpu",
                     seed: int = 0) -> Iterator[dict[str, Any]]:
    """Up to ``n_batches`` preprocessed training batches (images in [0, 1]) for gradient-based criteria."""
    info = read_dataset(data)
    cfg = get_cfg(overrides=dict(imgsz=imgsz, mosaic=0.0, mixup=0.0, seed=seed, data=str(data)))
    dataset = build_yolo_dataset(cfg, info["train"], batch, info, mode="train", stride=32)
    loader = build_dataloader(dataset, batch, workers=0, shuffle=False, pin_memory=False)
    for i, b in enumerate(loader):
        if i >= n_batches:
            break
        b = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in b.items()}
        b["img"] = b["img"].float() / 255
        yield b


def total_loss(trainer: Any) -> float:
    """The trainer's mean training loss of the epoch (``tloss`` is a tensor in 8.3, a dict of items in 8.4)."""
    tloss = getattr(trainer, "tloss", None)
    if tloss is None:
        return float("nan")
    if isinstance(tloss, dict):
        return float(sum(float(v) for v in tloss.values()))
    return float(tloss.sum())


def compute_loss(model: DetectionModel, batch: dict[str, Any]) -> torch.Tensor:
    """The detection training loss of ``model`` on ``batch`` (fresh criterion: shapes may have changed)."""
    model.criterion = None
    loss, _ = model.loss(batch)
    return loss.sum()


def deploy_copy(model: nn.Module) -> nn.Module:
    """An inference copy of ``model`` as it would be deployed: eval mode, Conv+BN fused."""
    m = copy.deepcopy(model).float().eval()
    if hasattr(m, "fuse"):
        m = m.fuse(verbose=False) if "verbose" in m.fuse.__code__.co_varnames else m.fuse()
    return m


def save_checkpoint(model: nn.Module, path: str | Path, half: bool = False) -> Path:
    """Save ``model`` in ultralytics' checkpoint layout, loadable by plain ``ultralytics.YOLO``.

    fp32 by default, so that the reloaded model validates to exactly the same numbers.
    """
    path = Path(path)
    m = copy.deepcopy(model).cpu()
    m.criterion = None  # a loss object holds tensors of the old shapes and is rebuilt on demand
    args = m.args if isinstance(m.args, dict) else dict(vars(m.args))
    m.args = args
    torch.save({"model": m.half() if half else m.float(), "ema": None, "train_args": args, "date": None,
                "version": ultralytics.__version__}, path)
    return path


def export_model(checkpoint: str | Path, fmt: str, imgsz: int, batch: int = 1, half: bool = False,
                 device: str = "cpu") -> Path:
    """``checkpoint`` exported by ultralytics' exporter (``onnx`` or ``engine``) for a fixed batch and size;
    returns the produced file (beside the checkpoint)."""
    from ultralytics import YOLO

    return Path(YOLO(str(checkpoint)).export(format=fmt, imgsz=imgsz, batch=batch, half=half, simplify=False,
                                             dynamic=False, device=device if fmt == "engine" else "cpu",
                                             verbose=False))


def backend_runner(weights: str | Path, device: str, batch: int, imgsz: int, half: bool) -> Callable[[], None]:
    """One synchronous forward pass of an exported model (e.g. a TensorRT engine) through ultralytics' AutoBackend."""
    from ultralytics.nn.autobackend import AutoBackend

    dev = torch.device(device)
    backend = AutoBackend(str(weights), device=dev, fp16=half, verbose=False)
    x = torch.rand(batch, 3, imgsz, imgsz, device=dev, dtype=torch.float16 if half else torch.float32)

    def run() -> None:
        with torch.inference_mode():
            backend(x)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    return run


def export_onnx(checkpoint: str | Path, imgsz: int, out: str | Path) -> Path:
    """ONNX export through ultralytics' exporter (no onnxslim: it would try to pip-install)."""
    from ultralytics import YOLO

    produced = Path(YOLO(str(checkpoint)).export(format="onnx", imgsz=imgsz, simplify=False, dynamic=False,
                                                 device="cpu", verbose=False))
    out = Path(out)
    if produced.resolve() != out.resolve():
        out.parent.mkdir(parents=True, exist_ok=True)
        produced.replace(out)
    return out


def inference_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The decoded detection output (what ONNX export returns) of a deployable model."""
    with torch.inference_mode():
        y = model(x)
    return y[0] if isinstance(y, (tuple, list)) else y
