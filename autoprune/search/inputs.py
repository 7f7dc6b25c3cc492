"""The inputs of a search, checked before anything is written: devices, runtime, the model and the data set, the
task, whether the targets are reachable; and the one-off materialisation of a model YAML into the study's base
checkpoint."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoprune.config.spec import AUTO_IMGSZ, AUTO_ROUND_TO, DEFAULT_IMGSZ, SearchSpec
from autoprune.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["PreparedInputs", "prepare_inputs", "materialise_yaml_model", "check_data", "check_folder",
           "resolve_round_to"]


@dataclass(frozen=True)
class PreparedInputs:
    spec: SearchSpec  # model and data resolved to absolute paths, device checked and canonical
    nc: int


def _is_file(p: Path) -> bool:
    """``p.is_file()``, False for a path the OS refuses to look at (too long, a NUL byte)."""
    try:
        return p.is_file()
    except (OSError, ValueError):
        return False


def _resolve_data(data: str) -> Path:
    from autoprune.demo.synthetic import SyntheticConfig, demo_task, ensure_dataset

    task = demo_task(data)
    if task is not None:  # demo, demo-seg, demo-pose: the packaged synthetic shapes
        return ensure_dataset(SyntheticConfig(task=task))
    p = Path(data).expanduser()
    if not _is_file(p):
        raise InputError(f"data: {data[:200]}: data set YAML not found")
    return p.resolve()


def _resolve_model(model: str) -> str:
    if model == "demo":
        from autoprune.demo.baseline import resolve_demo_model

        return str(resolve_demo_model())
    p = Path(model).expanduser()
    if _is_file(p):
        return str(p.resolve())
    if model.endswith((".yaml", ".yml")) and "/" not in model and len(model) < 256:  # an ultralytics config
        return model
    raise InputError(f"model: {model[:200]}: file not found")


def prepare_inputs(spec: SearchSpec) -> PreparedInputs:
    """Check the devices, the model and the data set without writing to the study (demo files may be generated)."""
    from autoprune.adapters import pruning, yolo
    from autoprune.engine.devices import check_device, check_gpus

    check_folder(spec.studies_dir, "--studies-dir")
    spec = spec.replace(device=check_device(spec.device))
    check_gpus(spec.resources.gpus)
    from autoprune.engine.runtimes import check_runtime

    for precision in sorted({spec.latency.precision, *(spec.space.precision or ())}):  # the searched ones too
        check_runtime(spec.latency.runtime, spec.device, precision)
    data = _resolve_data(spec.data)
    info = yolo.read_dataset(str(data))
    yolo.check_dataset_files(spec.data, info)
    nc = int(info["nc"])
    model_path = _resolve_model(spec.model)
    imgsz = spec.imgsz or DEFAULT_IMGSZ
    if not model_path.endswith((".yaml", ".yml")):
        model = yolo.load_model(model_path)
        pruning.check_supported(model, f"model: {spec.model}")
        if yolo.model_nc(model) != nc:
            raise InputError(f"model: {spec.model} predicts {yolo.model_nc(model)} classes but data {spec.data} "
                             f"has {nc}")
        trained = yolo.trained_imgsz(model)
        if spec.imgsz == AUTO_IMGSZ and trained and trained % 32 == 0:
            imgsz = trained
            logger.info("imgsz %d: the size %s was trained at (set imgsz in the spec to override)", imgsz, spec.model)
        names = {int(k): str(v) for k, v in yolo.model_names(model).items()}
        raw_names = info.get("names") or {}
        data_names = {int(k): str(v) for k, v in (enumerate(raw_names) if isinstance(raw_names, list)
                                                 else raw_names.items())}
        named = any(v != str(k) for k, v in names.items())  # a model built from a YAML is named 0, 1, 2...
        if named and names != data_names:
            logger.warning("the model's class names %s differ from the data set's %s (same count: going on)",
                           list(names.values())[:5], list(data_names.values())[:5])
    else:
        try:
            built = yolo.load_model(model_path, nc=nc, kpt_shape=yolo.kpt_shape(info))
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"model: {model_path}: not a buildable ultralytics model config "
                             f"({type(e).__name__})") from None
        pruning.check_supported(built, f"model: {model_path}")
        model = built
    _check_task(spec, yolo.model_task(model), info)
    spec = spec.replace(model=model_path, data=str(data), imgsz=imgsz)
    _check_targets(spec, model)
    return PreparedInputs(spec=spec, nc=nc)


def check_folder(path: str | Path, flag: str) -> Path:
    """``path`` as a folder autoprune may create or write into: neither it nor a folder above it may be a file
    (one-line InputError naming ``flag``)."""
    p = Path(path)
    for q in (p, *p.parents):
        if q.exists() and not q.is_dir():
            raise InputError(f"{flag}: {str(p)[:200]} exists and is not a folder" if q == p else
                             f"{flag}: {str(p)[:200]} lies under a file ({str(q)[:200]})")
    return p


def check_data(data: str, flag: str, model_nc: int | None = None) -> dict[str, Any]:
    """The data set YAML ``data`` read and its images and labels checked as ``autoprune search`` checks them (one
    line naming ``flag``); with ``model_nc``, its class count must match the model's."""
    from autoprune.adapters import yolo

    if not Path(data).is_file():
        raise InputError(f"{flag}: {str(data)[:200]}: data set YAML not found")
    info = yolo.read_dataset(data)
    yolo.check_dataset_files(data, info)
    if model_nc is not None and int(info["nc"]) != model_nc:
        raise InputError(f"{flag}: {str(data)[:200]} has {info['nc']} classes but the model predicts {model_nc}")
    return info


def _check_task(spec: SearchSpec, task: str, info: dict[str, Any]) -> None:
    """A mask or pose objective needs a model of that task, and a pose model a data set with keypoints."""
    from autoprune.adapters import yolo

    needs_task = {f"{m[0]}_": t for t, m in yolo.TASK_METRICS.items() if m}  # "mask_" -> segment, "pose_" -> pose
    for name in spec.objectives:
        for prefix, needs in needs_task.items():
            if name.startswith(prefix) and task != needs:
                raise InputError(f"objectives: {name} needs a {needs} model; {spec.model} is a {task} model")
    if task == "pose" and "kpt_shape" not in info:
        raise InputError(f"data: {spec.data} has no kpt_shape, which a pose model needs")
    if task == "segment" and not yolo.has_polygons(info):
        raise InputError(f"data: {spec.data} has box labels only; a segmentation model ({spec.model}) needs polygon "
                         "labels (class x1 y1 x2 y2 x3 y3 ...)")


def _check_targets(spec: SearchSpec, model: Any) -> None:
    """Refuse a target the space cannot reach (every layer at the highest ratio), before anything is written."""
    if not spec.targets:
        return
    from autoprune.engine.uniform import check_reachable

    check_reachable(model, spec.trial_settings, spec.targets, spec.space.ratio.high, round_to=1)


def materialise_yaml_model(spec: SearchSpec, nc: int) -> SearchSpec:
    """A model YAML is built once with a fixed seed and saved, so every trial prunes the same weights."""
    if not spec.model.endswith((".yaml", ".yml")):
        return spec
    import torch

    from autoprune.adapters import yolo

    path = spec.study_dir / "base.pt"
    if not path.exists():
        torch.manual_seed(spec.seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        kpts = yolo.kpt_shape(yolo.read_dataset(spec.data))
        yolo.save_checkpoint(yolo.load_model(spec.model, nc=nc, kpt_shape=kpts), path)
    return spec.replace(model=str(path))


def resolve_round_to(spec: SearchSpec) -> SearchSpec:
    """``space.round_to: auto``: 8 or 1 from a measurement on the device (cached), said once in the log."""
    if spec.space.round_to != AUTO_ROUND_TO:
        return spec
    from autoprune.engine.rounding import choose_round_to

    k, m = choose_round_to(spec.device, spec.latency.runtime, spec.latency.threads, spec.latency.precision)
    logger.info("round_to %d (auto): on %s, channel counts off a multiple of 8 ran %.2fx the time of the multiple "
                "above (measured once, cached)", k, spec.device, m["ratio"])
    return spec.replace(space=spec.space.replace(round_to=(k,)))
