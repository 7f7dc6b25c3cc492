"""The ultralytics adapter: loading models, fine-tuning without a rebuild, validating.

Nothing else in autoprune imports ultralytics.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import random
import warnings
from collections.abc import Iterator
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
from ultralytics.nn.tasks import DetectionModel, load_checkpoint  # noqa: E402
from ultralytics.utils import DEFAULT_CFG_DICT, IterableSimpleNamespace  # noqa: E402

_offline.silence_settings()

from autoprune.adapters.yolo_export import (  # noqa: E402
    backend_runner,
    export_model,
    export_onnx,
    train_image_count,
    validate_exported,
)
from autoprune.adapters.yolo_layers import remove_blocks  # noqa: E402
from autoprune.adapters.yolo_tasks import TASK_METRICS, TASKS, build_model, model_task, validator_class  # noqa: E402
from autoprune.adapters.yolo_train import (  # noqa: E402
    FinetuneConfig,
    FinetuneStats,
    check_checkpoint,
    checkpoint_param_count,
    count_params,
    finetune,
    set_threads,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DetectionModel", "FinetuneConfig", "FinetuneStats", "ValMetrics", "load_model", "finetune", "validate",
    "training_batches", "compute_loss", "read_dataset", "checkpoint_param_count", "version", "count_params",
    "set_threads", "check_dataset_files", "layer_stage", "model_nc", "model_names", "check_checkpoint",
    "deploy_copy", "save_checkpoint", "export_onnx", "export_model", "backend_runner", "inference_output",
    "total_loss", "trained_imgsz", "remove_blocks", "TASKS", "TASK_METRICS", "model_task", "kpt_shape",
    "has_polygons", "module_classes", "validate_exported", "train_image_count",
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


def read_dataset(data: str | Path) -> dict[str, Any]:
    """ultralytics' own data set check (no downloads: the offline flag is set), after the YAML itself is read as a
    spec is (safe types, bounded aliases: a 'billion laughs' in ``names`` would otherwise land in every
    checkpoint)."""
    import yaml

    from autoprune import yamlsafe

    if Path(data).is_file():
        try:
            yamlsafe.load(Path(data).read_text(errors="replace"))
        except yaml.YAMLError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            problem = getattr(e, "problem", None) or first
            raise InputError(f"data: {str(data)[:200]}: {problem}") from None
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
        good, bad = _count_labels(labels, int(info.get("nc", 0)), kpt_shape(info))
        if good == 0:
            raise InputError(f"data: {data}: none of the {split} split's {bad} label line(s) is valid "
                             "(class index, then x y w h in [0, 1])")
        if bad:
            logger.warning("data %s: %d of %d label lines of the %s split are invalid and will be dropped", data,
                           bad, good + bad, split)
        counts[split] = len(images)
    return counts


def module_classes() -> tuple[type, type, type, type, type]:
    """(C2f, Conv, Detect, DFL, Attention): the ultralytics modules the torch-pruning adapter handles specially."""
    from ultralytics.nn.modules import C2f, Conv, Detect
    from ultralytics.nn.modules.block import DFL, Attention

    return C2f, Conv, Detect, DFL, Attention


def has_polygons(info: dict[str, Any]) -> bool:
    """Whether any train label line is a polygon (``class x1 y1 x2 y2 x3 y3 ...``), as a segmentation model needs."""
    paths = info.get("train") or []
    images = [img for p in (paths if isinstance(paths, list) else [paths]) for img in _images(str(p))]
    for lbl in img2label_paths(images):
        path = Path(lbl)
        if path.is_file() and any(len(line.split()) >= 7 for line in path.read_text(errors="replace").splitlines()):
            return True
    return False


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


def _count_labels(labels: list[Path], nc: int, kpts: tuple[int, int] | None = None) -> tuple[int, int]:
    """(valid, invalid) label lines: ``class x y w h`` (more numbers for polygons; for a pose data set of
    ``kpts`` = (n, d), n keypoints of d values after the box, a third value being the visibility 0-2), class in
    [0, nc), coordinates in [0, 1]."""
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
            coords, shape_ok = xy, len(xy) >= 4
            if kpts:
                points, (n, d) = xy[4:], kpts
                visibility = points[2::3] if d == 3 else []
                coords = xy[:4] + (points[0::3] + points[1::3] if d == 3 else points)
                shape_ok = len(points) == n * d and all(0.0 <= v <= 2.0 for v in visibility)
            ok = shape_ok and cls.is_integer() and 0 <= cls < max(nc, 1) and all(0.0 <= v <= 1.0 for v in coords)
            good, bad = (good + 1, bad) if ok else (good, bad + 1)
    return good, bad


def load_model(source: str | Path, nc: int | None = None, kpt_shape: tuple[int, int] | None = None
               ) -> DetectionModel:
    """A trainable fp32 detection, segmentation or pose model from a checkpoint (.pt) or a model YAML (a pose
    YAML takes the data set's ``kpt_shape``)."""
    source = str(source)
    if source.endswith((".yaml", ".yml")):
        model = build_model(source, nc=nc, kpt_shape=kpt_shape)
        model.args = IterableSimpleNamespace(**{**DEFAULT_CFG_DICT, "task": model_task(model)})
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
            raise InputError(f"model: {source}: holds a {type(model).__name__}, not a YOLO detection, segmentation "
                             "or pose model")
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


def kpt_shape(info: dict[str, Any]) -> tuple[int, int] | None:
    """A data set's keypoint shape (pose data sets), from its parsed YAML."""
    k = info.get("kpt_shape")
    return (int(k[0]), int(k[1])) if isinstance(k, (list, tuple)) and len(k) == 2 else None


@dataclass(frozen=True)
class ValMetrics:
    map50: float  # box mAP, whatever the task
    map50_95: float
    extra: tuple[tuple[str, float], ...] = ()  # the task's own: (mask_map50, ...), (mask_map50_95, ...) or pose_*


def validate(model: nn.Module, data: str, imgsz: int, device: str = "cpu", batch: int = 16,
             threads: int = 2, split: str = "val") -> ValMetrics:
    """Box mAP50 and mAP50-95 (and the mask or pose ones) from the task's ultralytics validator on ``split``, on a
    copy of ``model``."""
    set_threads(threads)
    task = model_task(model)
    args = dict(data=str(data), imgsz=imgsz, batch=batch, device=device, plots=False, verbose=False,
                half=False, workers=0, split=split, save_json=False, rect=True, task=task)
    validator = validator_class(task)(args=args)
    m = copy.deepcopy(model).float().eval()
    stats = validator(model=m)
    set_threads(threads)
    values = {"map50": "mAP50(B)", "map50_95": "mAP50-95(B)"}
    extra = TASK_METRICS[task]
    if extra:
        values.update({f"{extra[0]}_map50": f"mAP50({extra[1]})", f"{extra[0]}_map50_95": f"mAP50-95({extra[1]})"})
    got = {k: float(stats.get(f"metrics/{v}", float("nan"))) for k, v in values.items()}
    bad = {k: v for k, v in got.items() if not math.isfinite(v)}
    if bad:
        raise TrialError(f"validation returned a non-finite mAP ({bad})")
    return ValMetrics(map50=got.pop("map50"), map50_95=got.pop("map50_95"), extra=tuple(got.items()))


def training_batches(data: str, imgsz: int, batch: int, n_batches: int, device: str = "cpu",
                     seed: int = 0, task: str = "detect") -> Iterator[dict[str, Any]]:
    """Up to ``n_batches`` preprocessed training batches (images in [0, 1]; with masks or keypoints for those
    tasks) for gradient-based criteria and BN recalibration.

    The same arguments give the same batches in every process (no shuffling, the augmentation seeded), and a process
    keeps the last set it loaded (uint8): a Ray worker screening one candidate after another loads them once."""
    for b in _loaded_batches(str(data), imgsz, batch, n_batches, seed, task):
        b = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in b.items()}  # a fresh dict each time
        b["img"] = b["img"].float() / 255
        yield b


@functools.lru_cache(maxsize=1)
def _loaded_batches(data: str, imgsz: int, batch: int, n_batches: int, seed: int,
                    task: str) -> tuple[dict[str, Any], ...]:
    info = read_dataset(data)
    cfg = get_cfg(overrides=dict(imgsz=imgsz, mosaic=0.0, mixup=0.0, seed=seed, data=data, task=task))
    out = []
    with _seeded(seed):  # the augmentation draws from the global generators: unseeded, each process's batches differ
        dataset = build_yolo_dataset(cfg, info["train"], batch, info, mode="train", stride=32)
        loader = build_dataloader(dataset, batch, workers=0, shuffle=False, pin_memory=False)
        for i, b in enumerate(loader):
            if i >= n_batches:
                break
            out.append(b)
    return tuple(out)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Python's, NumPy's and torch's global generators seeded with ``seed`` inside, restored after."""
    import numpy as np
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


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
    if isinstance(m, DetectionModel):  # (and segmentation, pose) what YOLO(path) reads to pick predictor, validator
        args["task"] = model_task(m)
    m.args = args
    torch.save({"model": m.half() if half else m.float(), "ema": None, "train_args": args, "date": None,
                "version": ultralytics.__version__}, path)
    return path


def inference_output(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The deployed outputs of a model, in the order ONNX export writes them: the decoded detections (with mask
    coefficients or keypoints), then a segmentation model's mask prototypes."""
    with torch.inference_mode():
        y = model(x)
    first = y[0] if isinstance(y, (tuple, list)) else y
    return list(first) if isinstance(first, (tuple, list)) else [first]
