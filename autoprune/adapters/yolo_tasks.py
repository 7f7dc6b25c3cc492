"""The YOLO tasks autoprune prunes (detection, segmentation, pose): which ultralytics model, trainer and
validator each uses, and the metrics each reports. Part of the ultralytics adapter (re-exported by
:mod:`autoprune.adapters.yolo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from autoprune.adapters import _offline
from autoprune.errors import InputError

_offline.configure()

from ultralytics.models.yolo.detect import DetectionTrainer, DetectionValidator  # noqa: E402
from ultralytics.models.yolo.pose import PoseTrainer, PoseValidator  # noqa: E402
from ultralytics.models.yolo.segment import SegmentationTrainer, SegmentationValidator  # noqa: E402
from ultralytics.nn.tasks import (  # noqa: E402
    DetectionModel,
    PoseModel,
    SegmentationModel,
    guess_model_task,
    yaml_model_load,
)

__all__ = ["TASKS", "TASK_METRICS", "model_task", "yaml_task", "build_model", "validator_class", "trainer_base"]

TASKS = ("detect", "segment", "pose")
# The extra metric each task reports beside box mAP: (objective name prefix, ultralytics' metric suffix).
TASK_METRICS: dict[str, tuple[str, str] | None] = {"detect": None, "segment": ("mask", "M"), "pose": ("pose", "P")}
# Per task: ultralytics' model, trainer and validator classes.
_CLASSES: dict[str, tuple[type[DetectionModel], Any, Any]] = {
    "detect": (DetectionModel, DetectionTrainer, DetectionValidator),
    "segment": (SegmentationModel, SegmentationTrainer, SegmentationValidator),
    "pose": (PoseModel, PoseTrainer, PoseValidator),
}


def model_task(model: nn.Module) -> str:
    """``detect``, ``segment`` or ``pose`` for an ultralytics model (pose and segment models are detectors too)."""
    if isinstance(model, PoseModel):
        return "pose"
    if isinstance(model, SegmentationModel):
        return "segment"
    if isinstance(model, DetectionModel):
        return "detect"
    raise InputError(f"model: a {type(model).__name__} is not a YOLO detection, segmentation or pose model")


def yaml_task(source: str | Path) -> str:
    """The task of a model YAML (from its output module), refused unless autoprune prunes it."""
    guessed = guess_model_task(yaml_model_load(str(source)))  # from the head module, not the file name
    if guessed is None:  # a head ultralytics does not name (RT-DETR's decoder): built as a detector, then checked
        return "detect"
    task = str(guessed)
    if task not in TASKS:
        raise InputError(f"model: {source} is a {task} model; autoprune prunes {', '.join(TASKS)} models")
    return task


def build_model(source: str | Path, nc: int | None = None, kpt_shape: tuple[int, int] | None = None) -> DetectionModel:
    """A freshly initialised model of the YAML's task (a pose model takes the data set's keypoint shape)."""
    task = yaml_task(source)
    extra = {"data_kpt_shape": tuple(kpt_shape) if kpt_shape else (None, None)} if task == "pose" else {}
    return _CLASSES[task][0](str(source), nc=nc, verbose=False, **extra)


def trainer_base(task: str) -> Any:
    return _CLASSES[task][1]


def validator_class(task: str) -> Any:
    return _CLASSES[task][2]
